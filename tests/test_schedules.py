"""jopt.schedules: properties of the pure schedules (finite, bounded, jit equals no-jit,
vmappable), their use as hyperparameters of the optimizers, and torch's argument errors.

Agreement with torch's classes, step by step, is in ``test_lr_scheduler.py``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jopt
from jopt import schedules as S

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

rate = st.floats(1e-4, 2.0)


def _with_zero(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats in [low, high] and 0: no tiny magnitudes float32 cannot represent."""
    return st.one_of(st.just(0.0), st.floats(low, high))


unit = _with_zero(1e-6, 1.0)
positive_unit = st.floats(0.01, 1.0)
power = st.floats(0.1, 3.0)
step = st.integers(0, 400)


class Family:
    """A schedule family: ``build(**floats)`` with the floats drawn from ``floats``; ``bounds``
    of its values from the same floats; ``last``: the largest step it is defined for."""

    def __init__(
        self,
        build: Callable[..., Any],
        floats: dict[str, Any],
        bounds: Callable[..., tuple[float, float]],
        last: int = 400,
    ) -> None:
        self.build, self.floats, self.bounds, self.last = build, floats, bounds, last
        # One compiled function per family: the floats are traced arguments.
        self.jitted = jax.jit(lambda hp, t: build(**hp)(t))


def _span(a: float, b: float) -> tuple[float, float]:
    return min(a, b), max(a, b)


FAMILIES = {
    "constant": Family(lambda lr: S.constant(lr), dict(lr=rate), lambda lr: (lr, lr)),
    "step_lr": Family(
        lambda lr, gamma: S.step_lr(lr, 7, gamma),
        dict(lr=rate, gamma=unit),
        lambda lr, gamma: (0, lr),
    ),
    "multistep_lr": Family(
        lambda lr, gamma: S.multistep_lr(lr, [5, 5, 40, 200], gamma),
        dict(lr=rate, gamma=unit),
        lambda lr, gamma: (0, lr),
    ),
    "exponential_lr": Family(
        lambda lr, gamma: S.exponential_lr(lr, gamma),
        dict(lr=rate, gamma=st.floats(0.5, 1.0)),
        lambda lr, gamma: (0, lr),
    ),
    "cosine_annealing_lr": Family(
        lambda lr, eta_min, T_max: S.cosine_annealing_lr(lr, T_max, eta_min),
        dict(lr=rate, eta_min=_with_zero(1e-6, 1e-2), T_max=st.floats(1.0, 300.0)),
        lambda lr, eta_min, T_max: _span(lr, eta_min),
    ),
    "cosine_annealing_warm_restarts": Family(
        lambda lr, eta_min: S.cosine_annealing_warm_restarts(lr, 5, 2, eta_min),
        dict(lr=rate, eta_min=_with_zero(1e-6, 1e-2)),
        lambda lr, eta_min: _span(lr, eta_min),
    ),
    "linear_lr": Family(
        lambda lr, start_factor, end_factor: S.linear_lr(lr, start_factor, end_factor, 30),
        dict(lr=rate, start_factor=positive_unit, end_factor=unit),
        lambda lr, start_factor, end_factor: _span(lr * start_factor, lr * end_factor),
    ),
    "constant_lr": Family(
        lambda lr, factor: S.constant_lr(lr, factor, 25),
        dict(lr=rate, factor=unit),
        lambda lr, factor: (lr * factor, lr),
    ),
    "polynomial_lr": Family(
        lambda lr, power: S.polynomial_lr(lr, 50, power),
        dict(lr=rate, power=power),
        lambda lr, power: (0, lr),
    ),
    "linear_warmup": Family(
        lambda lr, start_factor: S.linear_warmup(lr, 20, start_factor),
        dict(lr=rate, start_factor=unit),
        lambda lr, start_factor: (lr * start_factor, lr),
    ),
    "inverse_sqrt_decay": Family(
        lambda lr, delta, power: S.inverse_sqrt_decay(lr, delta, power),
        dict(lr=rate, delta=_with_zero(1e-6, 10.0), power=power),
        lambda lr, delta, power: (0, lr),
    ),
    "one_cycle_lr": Family(
        lambda max_lr: S.one_cycle_lr(max_lr, 200),
        dict(max_lr=rate),
        lambda max_lr: (max_lr / 25 / 1e4, max_lr),
        last=199,
    ),
    "one_cycle_lr_three_phase_linear": Family(
        lambda max_lr: S.one_cycle_lr(max_lr, 150, 0.2, "linear", three_phase=True),
        dict(max_lr=rate),
        lambda max_lr: (max_lr / 25 / 1e4, max_lr),
        last=149,
    ),
    "one_cycle_momentum": Family(
        lambda base_momentum, max_momentum: S.one_cycle_momentum(
            100, base_momentum=base_momentum, max_momentum=max_momentum
        ),
        dict(base_momentum=unit, max_momentum=unit),
        lambda base_momentum, max_momentum: _span(base_momentum, max_momentum),
        last=99,
    ),
    "cyclic_lr": Family(
        lambda base_lr, max_lr, gamma: S.cyclic_lr(base_lr, max_lr, 10, 6, "exp_range", gamma),
        dict(base_lr=rate, max_lr=rate, gamma=st.floats(0.9, 1.0)),
        lambda base_lr, max_lr, gamma: _span(base_lr, max_lr),
    ),
    "cyclic_lr_triangular2": Family(
        lambda base_lr, max_lr: S.cyclic_lr(base_lr, max_lr, 9, mode="triangular2"),
        dict(base_lr=rate, max_lr=rate),
        lambda base_lr, max_lr: _span(base_lr, max_lr),
    ),
    "cyclic_momentum": Family(
        lambda base_momentum, max_momentum: S.cyclic_momentum(base_momentum, max_momentum, 8),
        dict(base_momentum=unit, max_momentum=unit),
        lambda base_momentum, max_momentum: _span(base_momentum, max_momentum),
    ),
    "lambda_lr": Family(
        lambda lr: S.lambda_lr(lr, lambda t: 1.0 / (1.0 + t / 10)),
        dict(lr=rate),
        lambda lr: (0, lr),
    ),
    "sequential": Family(
        lambda lr, gamma: S.sequential(
            [S.linear_warmup(lr, 10), S.exponential_lr(lr, gamma), S.cosine_annealing_lr(lr, 40)],
            [10, 100],
        ),
        dict(lr=rate, gamma=st.floats(0.9, 1.0)),
        lambda lr, gamma: (0, lr),
    ),
}


def _draw_floats(data: st.DataObject, family: Family) -> dict[str, float]:
    return {k: data.draw(s, label=k) for k, s in family.floats.items()}


@pytest.mark.parametrize("name", FAMILIES)
@SETTINGS
@given(data=st.data())
def test_finite_bounded_and_jit_equals_no_jit(name: str, data: st.DataObject) -> None:
    family = FAMILIES[name]
    hp = _draw_floats(data, family)
    t = data.draw(st.integers(0, family.last), label="step")
    schedule = family.build(**hp)

    host = schedule(t)
    assert isinstance(host, float)  # numpy.float64: float64 on the host, like torch
    assert np.isfinite(host)
    lo, hi = family.bounds(**hp)
    slack = 1e-12 * max(abs(lo), abs(hi))
    assert lo - slack <= host <= hi + slack

    hp32 = {k: jnp.float32(v) for k, v in hp.items()}
    jitted = family.jitted(hp32, jnp.int32(t))
    # No jit at all: every operation (control flow included) one by one, so that an example
    # compiles nothing of its own (eagerly, a cond or a loop would compile per schedule built).
    with jax.disable_jit():
        eager = family.build(**hp32)(jnp.int32(t))
    assert jitted.dtype == eager.dtype == jnp.float32
    scale = max(abs(lo), abs(hi))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(jitted, host, rtol=2e-5, atol=2e-6 * scale)


@pytest.mark.parametrize("name", FAMILIES)
def test_vmappable_over_arguments_and_steps(name: str) -> None:
    """A batch of hyperparameters (e.g. a sweep of learning rates) is one vmapped call; the
    steps of a run are one vmapped call; a NumPy array of steps is evaluated on the host."""
    family = FAMILIES[name]
    rng = np.random.default_rng(1)
    # Deterministic draws inside each argument's range.
    lows = {"lr": 1e-3, "max_lr": 1e-3, "base_lr": 1e-3, "T_max": 5.0, "delta": 0.0, "power": 0.5}
    highs = {"lr": 1.0, "max_lr": 1.0, "base_lr": 0.5, "T_max": 50.0, "delta": 3.0, "power": 2.0}
    floats = {k: rng.uniform(lows.get(k, 0.05), highs.get(k, 0.95), 4) for k in family.floats}
    steps = np.arange(0, family.last + 1, 7)
    batched = jax.vmap(lambda hp: jax.vmap(family.build(**hp))(jnp.asarray(steps)))(
        {k: jnp.asarray(v, jnp.float32) for k, v in floats.items()}
    )
    for i in range(4):
        schedule = family.build(**{k: float(v[i]) for k, v in floats.items()})
        want = np.array([schedule(int(t)) for t in steps])
        np.testing.assert_allclose(schedule(steps), want, rtol=1e-15)
        np.testing.assert_allclose(batched[i], want, rtol=2e-5, atol=2e-6 * np.max(np.abs(want)))


def test_x64_jit_matches_host() -> None:
    """With x64 on, the traced schedule computes in float64 and meets the host's numbers."""
    with jax.enable_x64(True):
        for family in FAMILIES.values():
            hp = {k: 0.37 for k in family.floats}
            schedule = family.build(**hp)
            steps = np.arange(0, family.last + 1, 3)
            traced = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))
            assert traced.dtype == np.float64
            np.testing.assert_allclose(traced, schedule(steps), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Schedules as hyperparameters of the optimizers
# --------------------------------------------------------------------------------------------


def test_schedule_as_lr_of_an_optimizer() -> None:
    schedule = S.sequential([S.linear_warmup(0.1, 3), S.step_lr(0.1, 2, 0.5)], [3])
    tx = jopt.sgd(lr=schedule)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    grads = {"w": jnp.full(3, 2.0)}
    for t in range(8):
        updates, state = update(grads, state, params)
        np.testing.assert_allclose(updates["w"], -2.0 * schedule(t), rtol=1e-6)


def test_schedules_in_inject_hyperparams() -> None:
    """A schedule for ``lr`` and one for ``betas[0]`` (one-cycle with cycled momentum); the
    state shows their current values."""
    total = 20
    tx = jopt.inject_hyperparams(jopt.adam)(
        lr=S.one_cycle_lr(0.01, total), betas=(S.one_cycle_momentum(total), 0.999)
    )
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(total):
        _, state = update({"w": jnp.ones(2)}, state, params)
        np.testing.assert_allclose(state.hyperparams["lr"], S.one_cycle_lr(0.01, total)(t), 1e-5)
        np.testing.assert_allclose(
            state.hyperparams["betas"][0], S.one_cycle_momentum(total)(t), 1e-5
        )


def test_host_values_are_python_floats_and_arrays_vectorize() -> None:
    schedule = S.cosine_annealing_lr(0.1, 10)
    assert type(schedule(3)) is np.float64 and isinstance(schedule(3), float)
    assert schedule(np.arange(5)).shape == (5,)
    assert isinstance(schedule(jnp.int32(3)), jax.Array)


@pytest.mark.parametrize(("lr", "steps", "start_factor"), [(0.2, 4, 0.0), (0.3, 20, 0.25)])
def test_linear_warmup_is_optax_linear_schedule(lr: float, steps: int, start_factor: float) -> None:
    """``linear_warmup`` is optax's ``linear_schedule`` from ``start_factor * lr`` to ``lr``
    (both in float64 here); no warmup is the base rate from the first step."""
    warm = S.linear_warmup(lr, steps, start_factor)
    with jax.enable_x64(True):
        theirs = optax.linear_schedule(start_factor * lr, lr, steps)
        np.testing.assert_allclose(
            [warm(t) for t in range(steps + 3)],
            [float(theirs(t)) for t in range(steps + 3)],
            rtol=1e-12,
        )
    assert S.linear_warmup(lr, 0)(0) == lr


def test_inverse_sqrt_decay_is_its_formula() -> None:
    """No library has this schedule: its definition, ``lr * (1 + delta * t) ** (-power / 2)``."""
    decay = S.inverse_sqrt_decay(0.3, delta=2.0, power=1.5)
    for t in (0, 1, 7, 100):
        assert decay(t) == pytest.approx(0.3 * (1 / np.sqrt(1 + 2.0 * t)) ** 1.5, rel=1e-15)


def _torch_lrs(scheduler: str, steps: int, *args: Any) -> list[float]:
    """torch's learning rate at steps 0 .. steps-1 of ``lr_scheduler.<scheduler>(optimizer,
    *args)``, on an SGD of base rate 1."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = getattr(torch.optim.lr_scheduler, scheduler)(opt, *args)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return lrs


def test_cosine_is_periodic_past_t_max_as_torch() -> None:
    """Past ``T_max`` the cosine climbs back, as torch's recursive ``CosineAnnealingLR`` does."""
    schedule = S.cosine_annealing_lr(1.0, 10, 0.1)
    theirs = _torch_lrs("CosineAnnealingLR", 41, 10, 0.1)
    np.testing.assert_allclose([schedule(t) for t in range(41)], theirs, rtol=1e-12)
    assert schedule(15) == pytest.approx(schedule(5))
    assert schedule(30) == pytest.approx(schedule(10))


def test_warm_restarts_cycle_boundaries() -> None:
    """T_0 = 3, T_mult = 2: the cycles restart at the base rate where torch's do (1,540 steps,
    ten cycles), on the host and traced."""
    schedule = S.cosine_annealing_warm_restarts(1.0, 3, 2)
    steps = 1540
    theirs = _torch_lrs("CosineAnnealingWarmRestarts", steps, 3, 2)
    starts = [t for t in range(steps) if theirs[t] == 1.0]
    assert len(starts) == 10
    ours = schedule(np.arange(steps))
    assert [t for t in range(steps) if ours[t] == 1.0] == starts
    assert all(ours[t + 1] < 1.0 for t in starts)
    traced = jax.jit(schedule)
    for start in starts[1:]:
        assert float(traced(jnp.int32(start))) == 1.0


# --------------------------------------------------------------------------------------------
# Bad arguments: torch's errors
# --------------------------------------------------------------------------------------------


def _sgd(torch: Any) -> Any:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)


# (jopt's call, the torch scheduler that refuses the same arguments, given an optimizer).
BAD = {
    "constant_lr-factor": (
        lambda: S.constant_lr(0.1, 1.5),
        lambda L, opt: L.ConstantLR(opt, 1.5),
    ),
    "linear_lr-start": (lambda: S.linear_lr(0.1, 0.0), lambda L, opt: L.LinearLR(opt, 0.0)),
    "linear_lr-end": (
        lambda: S.linear_lr(0.1, 0.5, 2.0),
        lambda L, opt: L.LinearLR(opt, 0.5, 2.0),
    ),
    "warm_restarts-T_0=0": (
        lambda: S.cosine_annealing_warm_restarts(0.1, 0),
        lambda L, opt: L.CosineAnnealingWarmRestarts(opt, 0),
    ),
    "warm_restarts-T_0=2.0": (
        lambda: S.cosine_annealing_warm_restarts(0.1, 2.0),
        lambda L, opt: L.CosineAnnealingWarmRestarts(opt, 2.0),
    ),
    "warm_restarts-T_mult": (
        lambda: S.cosine_annealing_warm_restarts(0.1, 2, 0),
        lambda L, opt: L.CosineAnnealingWarmRestarts(opt, 2, 0),
    ),
    "one_cycle-total_steps": (
        lambda: S.one_cycle_lr(0.1, 0),
        lambda L, opt: L.OneCycleLR(opt, 0.1, 0),
    ),
    "one_cycle-pct_start": (
        lambda: S.one_cycle_lr(0.1, 10, 1.5),
        lambda L, opt: L.OneCycleLR(opt, 0.1, 10, pct_start=1.5),
    ),
    "one_cycle_momentum-anneal_strategy": (
        lambda: S.one_cycle_momentum(10, anneal_strategy="exp"),
        lambda L, opt: L.OneCycleLR(opt, 0.1, 10, anneal_strategy="exp"),
    ),
    "cyclic_lr-mode": (
        lambda: S.cyclic_lr(0.1, 1.0, mode="square"),
        lambda L, opt: L.CyclicLR(opt, 0.1, 1.0, mode="square"),
    ),
    "cyclic_momentum-mode": (
        lambda: S.cyclic_momentum(mode="square"),
        lambda L, opt: L.CyclicLR(opt, 0.1, 1.0, mode="square"),
    ),
    "sequential-empty": (lambda: S.sequential([], []), lambda L, opt: L.SequentialLR(opt, [], [])),
    "sequential-milestones": (
        lambda: S.sequential([S.constant(0.1), S.constant(0.2)], []),
        lambda L, opt: L.SequentialLR(opt, [L.ConstantLR(opt), L.ConstantLR(opt)], []),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_raise_torchs_error(case: str) -> None:
    """torch's scheduler, asked now, is the oracle: the same exception type and message."""
    torch = pytest.importorskip("torch")
    ours, theirs = BAD[case]
    with pytest.raises(Exception) as want:
        theirs(torch.optim.lr_scheduler, _sgd(torch))
    with pytest.raises(type(want.value)) as got:
        ours()
    assert str(got.value) == str(want.value)


# Schedules torch has no class for: jopt's own words.
JOPT_ONLY_BAD = [
    (lambda: S.linear_warmup(0.1, -1), "Expected non-negative warmup_steps"),
    (lambda: S.inverse_sqrt_decay(0.1, delta=-1.0), "Invalid delta: -1.0"),
]


@pytest.mark.parametrize("build, message", JOPT_ONLY_BAD, ids=[m for _, m in JOPT_ONLY_BAD])
def test_bad_arguments_without_a_torch_counterpart(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
