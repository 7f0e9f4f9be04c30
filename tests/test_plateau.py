"""jopt.reduce_on_plateau and jopt.plateau_step against torch's ReduceLROnPlateau: the pure rule
on the host and under jit/scan, the transformation in a training loop, torch's errors."""

from __future__ import annotations

import re
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jopt
from jopt.plateau import ReduceOnPlateauState, mode_worse, plateau_step

torch = pytest.importorskip("torch")

CONFIGS = [
    dict(),
    dict(mode="min", threshold_mode="abs", threshold=0.05, patience=3, cooldown=2, factor=0.5),
    dict(mode="max", threshold_mode="rel", threshold=0.01, patience=4, min_lr=1e-3),
    dict(mode="max", threshold_mode="abs", threshold=0.1, patience=2, cooldown=5, factor=0.3),
    dict(mode="min", threshold_mode="rel", patience=1, cooldown=3, factor=0.2, min_lr=2e-4),
    dict(mode="min", patience=0, factor=0.95, eps=1e-3),
]


def scripted_metric() -> np.ndarray:
    """Improvements, plateaus, noise, negative values; float32-representable, so the host and
    the float32 jitted rule see the same numbers."""
    rng = np.random.default_rng(0)
    parts = [
        np.linspace(5.0, 1.0, 30),
        np.full(25, 1.0),
        1.0 + 0.01 * rng.standard_normal(30),
        np.linspace(1.0, -2.0, 40),
        np.full(30, -2.0),
        -2.0 + 0.5 * rng.standard_normal(40),
        np.linspace(-2.0, 3.0, 35),
        np.full(40, 3.0),
        np.linspace(3.0, -8.0, 30),
    ]
    return np.concatenate(parts).astype(np.float32).astype(np.float64)


def torch_run(metrics: np.ndarray, lr: float, **kwargs: Any) -> dict[str, np.ndarray]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    out: dict[str, list] = {"lr": [], "best": [], "num_bad_epochs": [], "cooldown_counter": []}
    for m in metrics:
        sched.step(float(m))
        out["lr"].append(opt.param_groups[0]["lr"])
        for key in ("best", "num_bad_epochs", "cooldown_counter"):
            out[key].append(getattr(sched, key))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("kwargs", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_rule_on_host_and_under_scan(kwargs: dict) -> None:
    metrics = scripted_metric()
    want = torch_run(metrics, 0.1, **kwargs)
    assert len(np.unique(want["lr"])) > 1

    # Host: float64, the same numbers as torch.
    mode = kwargs.get("mode", "min")
    state = ReduceOnPlateauState(0.1, mode_worse(mode), 0, 0, 0)
    for t, m in enumerate(metrics):
        state = plateau_step(state, float(m), **kwargs)
        assert float(state.lr) == want["lr"][t]
        assert float(state.best) == want["best"][t]
        assert int(state.num_bad_epochs) == want["num_bad_epochs"][t]
        assert int(state.cooldown_counter) == want["cooldown_counter"][t]
        assert int(state.last_epoch) == t + 1

    # Traced: one lax.scan over the whole sequence, float32.
    def body(s: ReduceOnPlateauState, m: jax.Array) -> tuple[ReduceOnPlateauState, Any]:
        s = plateau_step(s, m, **kwargs)
        return s, (s.lr, s.num_bad_epochs, s.cooldown_counter)

    init = jopt.reduce_on_plateau(0.1, **kwargs).init(None)
    _, (lrs, bad, cool) = jax.jit(lambda s, ms: jax.lax.scan(body, s, ms))(
        init, jnp.asarray(metrics, jnp.float32)
    )
    np.testing.assert_allclose(lrs, want["lr"], rtol=1e-6)
    np.testing.assert_array_equal(bad, want["num_bad_epochs"])
    np.testing.assert_array_equal(cool, want["cooldown_counter"])


def test_vector_of_rates_with_per_group_min_lr() -> None:
    """``lr`` may hold one rate per group, ``min_lr`` broadcasting against it."""
    metrics = scripted_metric()
    state = ReduceOnPlateauState(np.array([0.1, 0.01]), np.inf, 0, 0, 0)
    kwargs = dict(patience=1, factor=0.5, min_lr=np.array([1e-3, 5e-3]))
    for m in metrics:
        state = plateau_step(state, m, **kwargs)
    np.testing.assert_array_equal(state.lr, [1e-3, 5e-3])


def test_transformation_in_a_training_loop_matches_torch() -> None:
    """``chain(adam(lr), reduce_on_plateau(lr, ...))`` with ``value=loss``, against torch's
    Adam and ReduceLROnPlateau stepped with the same loss before each optimizer step."""
    lr, steps = 0.3, 120
    kwargs = dict(patience=3, factor=0.5, threshold=0.02, cooldown=1, min_lr=0.01)
    x0 = np.array([2.0, -1.5, 0.7], np.float32)

    def loss_fn(x: Any, xp: Any) -> Any:
        return (xp.sin(3 * x) + 0.5 * x * x).sum()

    tparam = torch.nn.Parameter(torch.tensor(x0))
    topt = torch.optim.Adam([tparam], lr=lr)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    tx = jopt.chain(jopt.adam(lr=lr), jopt.reduce_on_plateau(lr, **kwargs))
    params = jnp.asarray(x0)
    state = tx.init(params)

    @jax.jit
    def train_step(params: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, jnp)
        updates, state = tx.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state

    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            topt.zero_grad()
            tloss = loss_fn(tparam, torch)
            tloss.backward()
            tsched.step(tloss.item())
            topt.step()
            params, state = train_step(params, state)
            lrs.append(topt.param_groups[0]["lr"])
            np.testing.assert_allclose(float(state[1].lr), lrs[-1], rtol=1e-6)
            np.testing.assert_allclose(params, tparam.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert len(set(lrs)) >= 3  # the rate was reduced more than once


def test_state_fields_and_optax_interop() -> None:
    tx = optax.chain(optax.sgd(1.0), jopt.reduce_on_plateau(1.0, patience=0, factor=0.5))
    state = tx.init({"w": jnp.ones(2)})
    plateau = state[1]
    assert plateau._fields[:4] == ("lr", "best", "num_bad_epochs", "cooldown_counter")
    update = jax.jit(tx.update)
    grads = {"w": jnp.ones(2)}
    for value, want in [(1.0, -1.0), (1.0, -0.5), (0.5, -0.5), (0.6, -0.25)]:
        updates, state = update(grads, state, value=value)
        np.testing.assert_allclose(updates["w"], want)


def test_needs_the_metric() -> None:
    tx = jopt.reduce_on_plateau(0.1)
    with pytest.raises(ValueError, match="needs the metric"):
        tx.update({"w": jnp.ones(1)}, tx.init(None))


@pytest.mark.parametrize(
    "kwargs",
    [dict(factor=1.0), dict(factor=2.0), dict(mode="up"), dict(threshold_mode="pct")],
    ids=["factor-1", "factor-2", "mode", "threshold_mode"],
)
def test_torchs_errors(kwargs: dict) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError) as want:
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    with pytest.raises(ValueError, match=re.escape(str(want.value))):
        jopt.reduce_on_plateau(0.1, **kwargs)
    with pytest.raises(ValueError, match=re.escape(str(want.value))):
        plateau_step(ReduceOnPlateauState(0.1, np.inf, 0, 0, 0), 1.0, **kwargs)
