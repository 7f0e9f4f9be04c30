"""jopt's optimizers against real ``torch.optim``, step for step.

Each configuration runs 100 steps in torch and in jopt (one jitted step, compiled once) on the
same gradients: torch's autograd of the shared loss at torch's current parameters. After every
step the parameters must agree within ``RTOL[dtype]``, in float32 and in float64.
"""

from __future__ import annotations

import inspect

import jax
import pytest
from conftest import (
    RTOL,
    TORCH_CLASS,
    make_params,
    run_against_torch,
    to_torch,
    torch_optimizer,
)

import jopt

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch.optim")

STEPS = 100

# (jopt factory, keyword arguments given to both jopt and torch), as torch's OptimizerInfo.
CONFIGS = [
    ("sgd", {}),
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "weight_decay": 0.1}),
    ("sgd", {"lr": 0.05, "maximize": True}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1, "maximize": True}),
    ("momentum", {}),
    ("momentum", {"lr": 0.02, "nesterov": True}),
    ("momentum", {"lr": 0.02, "dampening": 0.5, "weight_decay": 0.05}),
    ("adam", {}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "maximize": True}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adam", {"lr": 0.01, "betas": (0.3, 0.9999)}),
    ("adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "amsgrad": True, "maximize": True}),
    ("adamw", {}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.0}),
    ("adamw", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("adamw", {"lr": 0.01, "maximize": True}),
    ("rmsprop", {}),
    ("rmsprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6}),
    ("rmsprop", {"weight_decay": 0.1}),
    ("rmsprop", {"maximize": True}),
    ("rmsprop", {"lr": 1e-3, "momentum": 0.9}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"lr": 1e-3, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
    ("adagrad", {}),
    ("adagrad", {"lr": 0.1}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.05}),
    ("adagrad", {"initial_accumulator_value": 0.5}),
    ("adagrad", {"weight_decay": 0.1, "maximize": True}),
    (
        "adagrad",
        {
            "lr": 0.1,
            "lr_decay": 0.01,
            "weight_decay": 0.1,
            "initial_accumulator_value": 0.1,
            "eps": 1e-6,
        },
    ),
]


def _id(config: tuple[str, dict]) -> str:
    name, kwargs = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items()) if kwargs else name + "-defaults"


@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_matches_torch_every_step(config: tuple[str, dict], dtype: str) -> None:
    name, kwargs = config
    tparams = to_torch(make_params(dtype))
    reference = torch_optimizer(name, list(tparams.values()), **kwargs)
    run = run_against_torch(
        getattr(jopt, name)(**kwargs), reference, tparams, STEPS, rtol=RTOL[dtype]
    )
    assert run.traces == 1, "the jitted step was traced again: the state changed its types"
    for leaf in jax.tree.leaves(run.params):
        assert leaf.dtype == dtype


@pytest.mark.parametrize("name", sorted(TORCH_CLASS))
def test_defaults_are_torchs(name: str) -> None:
    """Every argument jopt shares with torch has torch's default (momentum's 0.9 aside)."""
    cls, implied = TORCH_CLASS[name]
    ours = inspect.signature(getattr(jopt, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, cls).__init__).parameters
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    for arg, p in ours.items():
        assert p.default == implied.get(arg, theirs[arg].default), arg
