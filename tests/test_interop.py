"""jopt inside optax, flax.nnx and flax's TrainState, and optax inside jopt, against torch.

Each combination trains the shared loss for a few steps; torch, with the same clipping and
optimizer, is the oracle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import (
    SHAPES,
    from_torch,
    jax_grads,
    loss,
    make_params,
    run_against_torch,
    to_torch,
    torch_grads,
)
from flax import nnx
from flax.training import train_state

import jopt

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch.optim")

STEPS = 20


def _clip_value(tparams):
    torch.nn.utils.clip_grad_value_(list(tparams.values()), 0.5)


def _clip_norm(tparams):
    torch.nn.utils.clip_grad_norm_(list(tparams.values()), 1.0)


# (id, the composed transformation, torch's clipping, torch's optimizer and arguments)
CHAINS = [
    (
        "jopt.adam in optax.chain",
        lambda: optax.chain(optax.clip(0.5), jopt.adam(lr=0.01, weight_decay=0.1)),
        _clip_value,
        ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ),
    (
        "jopt.sgd after jopt clipping in optax.chain",
        lambda: optax.chain(
            jopt.clip_by_global_norm(1.0), jopt.sgd(lr=0.05, momentum=0.9, nesterov=True)
        ),
        _clip_norm,
        ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ),
    (
        "optax.clip in jopt.chain",
        lambda: jopt.chain(
            optax.clip(0.5), jopt.rmsprop(lr=1e-3, centered=True, momentum=0.9, weight_decay=0.1)
        ),
        _clip_value,
        ("RMSprop", {"lr": 1e-3, "centered": True, "momentum": 0.9, "weight_decay": 0.1}),
    ),
    (
        "injected jopt.adamw in optax.chain",
        lambda: optax.chain(
            optax.clip(0.5), jopt.inject_hyperparams(jopt.adamw)(lr=0.01, amsgrad=True)
        ),
        _clip_value,
        ("AdamW", {"lr": 0.01, "amsgrad": True}),
    ),
]


@pytest.mark.parametrize(
    ("make", "clip", "reference"), [c[1:] for c in CHAINS], ids=[c[0] for c in CHAINS]
)
def test_chains_match_torch(make, clip, reference) -> None:
    tparams = to_torch(make_params())
    cls, kwargs = reference
    theirs = getattr(torch.optim, cls)(list(tparams.values()), **kwargs)

    def grads(i, tparams):
        grads = torch_grads(tparams)
        clip(tparams)  # torch clips its own gradients; the chain clips jopt's
        return grads

    run_against_torch(
        make(), theirs, tparams, STEPS, grads=grads, apply_updates=optax.apply_updates
    )


class Model(nnx.Module):
    """The shared parameter tree as an nnx module."""

    def __init__(self, params):
        for key, value in params.items():
            setattr(self, key, nnx.Param(jnp.asarray(value)))

    def as_dict(self):
        return {key: getattr(self, key)[...] for key in SHAPES}


def test_nnx_optimizer_matches_torch_and_lr_changes_without_recompiling() -> None:
    """``nnx.Optimizer(model, jopt..., wrt=nnx.Param)``: the same trajectory as torch, each
    framework on its own gradients; the injected lr is set through ``opt_state``."""
    params = make_params()
    tparams = to_torch(params)
    theirs = torch.optim.AdamW(list(tparams.values()), lr=0.01, weight_decay=0.1)
    model = Model(params)
    optimizer = nnx.Optimizer(
        model, jopt.inject_hyperparams(jopt.adamw)(lr=0.01, weight_decay=0.1), wrt=nnx.Param
    )
    traces = []

    @nnx.jit
    def update(model, optimizer):
        traces.append(1)
        grads = nnx.grad(lambda m: loss(m.as_dict(), jnp))(model)
        optimizer.update(model, grads)

    def step(model, optimizer, torch_grads):  # jopt's side takes its own gradients
        update(model, optimizer)
        return model, optimizer

    def change(i, optimizer, group):
        if i == STEPS // 2:
            optimizer.opt_state.hyperparams["lr"][...] = 0.003
            group["lr"] = 0.003

    run_against_torch(
        None,
        theirs,
        tparams,
        STEPS,
        change=change,
        params=model,
        state=optimizer,
        step=step,
        view=Model.as_dict,
    )
    assert len(traces) == 1
    assert int(optimizer.step[...]) == STEPS


def test_train_state_matches_torch() -> None:
    tparams = to_torch(make_params())
    theirs = torch.optim.SGD(list(tparams.values()), lr=0.05, momentum=0.9, dampening=0.2)
    state = train_state.TrainState.create(
        apply_fn=None,
        params=jax.tree.map(jnp.asarray, from_torch(tparams)),
        tx=jopt.sgd(lr=0.05, momentum=0.9, dampening=0.2),
    )
    apply = jax.jit(lambda state: state.apply_gradients(grads=jax_grads(state.params)))

    def step(state, _, torch_grads):  # jopt's side takes its own gradients
        return apply(state), None

    run = run_against_torch(
        None, theirs, tparams, STEPS, params=state, step=step, view=lambda state: state.params
    )
    assert int(run.params.step) == STEPS
