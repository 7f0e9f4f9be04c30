"""jopt.optim.lr_scheduler against torch.optim.lr_scheduler: the same scheduler, built on the
same param groups, sets the same rates (and momentums) at each of 300 steps; the functional
schedule of the same name agrees; state dicts resume identically; bad arguments fail alike."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jopt.optim
from jopt import schedules as S
from jopt.optim import lr_scheduler as JL

torch = pytest.importorskip("torch")
TL = torch.optim.lr_scheduler

STEPS = 300
RTOL = 1e-9

pytestmark = pytest.mark.filterwarnings(
    "ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`"
)


# --------------------------------------------------------------------------------------------
# Optimizers with the same param groups in torch and jopt
# --------------------------------------------------------------------------------------------


def make_pair(kind: str = "sgd", lrs: tuple[float, ...] = (0.1,)) -> tuple[Any, Any]:
    """(torch optimizer, jopt optimizer) with one param group per entry of ``lrs``."""
    tgroups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    jgroups = [{"params": {"w": jnp.zeros(2)}, "lr": lr} for lr in lrs]
    if kind == "sgd":
        return torch.optim.SGD(tgroups, momentum=0.9), jopt.optim.SGD(jgroups, momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(tgroups), jopt.optim.Adam(jgroups)
    return torch.optim.Adagrad(tgroups), jopt.optim.Adagrad(jgroups)


def momentum_of(group: dict[str, Any]) -> float:
    return group["betas"][0] if "betas" in group else group.get("momentum", 0.0)


def trajectory(scheduler: Any, optimizer: Any, steps: int, metrics: Any = None) -> np.ndarray:
    """Rates (and momentums) after construction and after each of ``steps - 1`` steps:
    rows ``[lr_0, ..., lr_k, m_0, ..., m_k]``."""
    rows = []
    for t in range(steps):
        if t:
            scheduler.step(*([] if metrics is None else [metrics[t]]))
        lrs = [float(v) for v in scheduler.get_last_lr()]
        assert lrs == [float(g["lr"]) for g in optimizer.param_groups]
        rows.append(lrs + [float(momentum_of(g)) for g in optimizer.param_groups])
    return np.array(rows)


# --------------------------------------------------------------------------------------------
# The table: torch's arguments, and the functional schedule they stand for
# --------------------------------------------------------------------------------------------


def _cos(t: Any) -> Any:
    return jnp.cos(t) if isinstance(t, jax.Array) else np.cos(t)


class Case:
    """A scheduler built identically on a torch and a jopt optimizer (``build(L, opt)`` with
    ``L`` either lr_scheduler module); ``lr(i, lr)``: the functional schedule of group ``i``;
    ``momentum(i)``: the functional momentum where the scheduler drives it."""

    def __init__(
        self,
        name: str,
        build: Callable[[Any, Any], Any],
        lr: Callable[[int, float], Any] | None = None,
        momentum: Callable[[int], Any] | None = None,
        kind: str = "sgd",
        lrs: tuple[float, ...] = (0.1,),
    ) -> None:
        self.name, self.build, self.lr, self.momentum = name, build, lr, momentum
        self.kind, self.lrs = kind, lrs

    def __repr__(self) -> str:
        return self.name


TWO = (0.1, 0.02)


def _seq3(L: Any, o: Any) -> Any:
    return L.SequentialLR(
        o,
        [L.LinearLR(o, 0.1, 1.0, 10), L.ExponentialLR(o, 0.97), L.CosineAnnealingLR(o, 50, 0.001)],
        milestones=[10, 100],
    )


def _nested(L: Any, o: Any) -> Any:
    chained = L.ChainedScheduler([L.StepLR(o, 10, 0.8), L.ExponentialLR(o, 0.99)])
    return L.SequentialLR(o, [chained, L.ConstantLR(o, 0.5, 50)], milestones=[40])


CASES = [
    # StepLR / MultiStepLR: two groups, repeated milestones, a milestone at 0.
    Case("step", lambda L, o: L.StepLR(o, 7, 0.5), lambda i, lr: S.step_lr(lr, 7, 0.5), lrs=TWO),
    Case("step-every", lambda L, o: L.StepLR(o, 1, 0.97), lambda i, lr: S.step_lr(lr, 1, 0.97)),
    Case(
        "multistep-repeated",
        lambda L, o: L.MultiStepLR(o, [3, 3, 10, 50, 50, 50, 299], 0.5),
        lambda i, lr: S.multistep_lr(lr, [3, 3, 10, 50, 50, 50, 299], 0.5),
        lrs=TWO,
    ),
    Case(
        "multistep-zero",
        lambda L, o: L.MultiStepLR(o, [0, 100]),
        lambda i, lr: S.multistep_lr(lr, [0, 100]),
    ),
    # ConstantLR / LinearLR: total_iters boundaries, including 0 and past the run's end.
    Case("constant-default", lambda L, o: L.ConstantLR(o), lambda i, lr: S.constant_lr(lr)),
    Case(
        "constant",
        lambda L, o: L.ConstantLR(o, 0.25, 30),
        lambda i, lr: S.constant_lr(lr, 0.25, 30),
        lrs=TWO,
    ),
    Case(
        "constant-0-iters",
        lambda L, o: L.ConstantLR(o, 0.5, 0),
        lambda i, lr: S.constant_lr(lr, 0.5, 0),
    ),
    Case(
        "constant-factor-1",
        lambda L, o: L.ConstantLR(o, 1.0, 7),
        lambda i, lr: S.constant_lr(lr, 1.0, 7),
    ),
    Case("linear-default", lambda L, o: L.LinearLR(o), lambda i, lr: S.linear_lr(lr)),
    Case(
        "linear",
        lambda L, o: L.LinearLR(o, 0.25, 0.8, 30),
        lambda i, lr: S.linear_lr(lr, 0.25, 0.8, 30),
        lrs=TWO,
    ),
    Case(
        "linear-to-zero",
        lambda L, o: L.LinearLR(o, 1.0, 0.0, 120),
        lambda i, lr: S.linear_lr(lr, 1.0, 0.0, 120),
    ),
    Case(
        "linear-long",
        lambda L, o: L.LinearLR(o, 0.01, 1.0, 500),
        lambda i, lr: S.linear_lr(lr, 0.01, 1.0, 500),
    ),
    Case(
        "linear-0-iters",
        lambda L, o: L.LinearLR(o, 0.5, 1.0, 0),
        lambda i, lr: S.linear_lr(lr, 0.5, 1.0, 0),
    ),
    # ExponentialLR / PolynomialLR.
    Case(
        "exponential",
        lambda L, o: L.ExponentialLR(o, 0.97),
        lambda i, lr: S.exponential_lr(lr, 0.97),
        lrs=TWO,
    ),
    Case("polynomial-default", lambda L, o: L.PolynomialLR(o), lambda i, lr: S.polynomial_lr(lr)),
    Case(
        "polynomial",
        lambda L, o: L.PolynomialLR(o, 100, 2.0),
        lambda i, lr: S.polynomial_lr(lr, 100, 2.0),
        lrs=TWO,
    ),
    Case(
        "polynomial-sqrt",
        lambda L, o: L.PolynomialLR(o, 299, 0.5),
        lambda i, lr: S.polynomial_lr(lr, 299, 0.5),
    ),
    Case(
        "polynomial-0-iters",
        lambda L, o: L.PolynomialLR(o, 0, 2.0),
        lambda i, lr: S.polynomial_lr(lr, 0, 2.0),
    ),
    # CosineAnnealingLR: T_max reached and passed (several periods), eta_min, the whole run.
    Case(
        "cosine-periodic",
        lambda L, o: L.CosineAnnealingLR(o, 40, 0.001),
        lambda i, lr: S.cosine_annealing_lr(lr, 40, 0.001),
        lrs=TWO,
    ),
    Case(
        "cosine-to-zero",
        lambda L, o: L.CosineAnnealingLR(o, 17),
        lambda i, lr: S.cosine_annealing_lr(lr, 17),
    ),
    Case(
        "cosine-run",
        lambda L, o: L.CosineAnnealingLR(o, 299, 1e-4),
        lambda i, lr: S.cosine_annealing_lr(lr, 299, 1e-4),
    ),
    # CosineAnnealingWarmRestarts.
    Case(
        "restarts",
        lambda L, o: L.CosineAnnealingWarmRestarts(o, 7),
        lambda i, lr: S.cosine_annealing_warm_restarts(lr, 7),
        lrs=TWO,
    ),
    Case(
        "restarts-mult",
        lambda L, o: L.CosineAnnealingWarmRestarts(o, 5, 2, 0.001),
        lambda i, lr: S.cosine_annealing_warm_restarts(lr, 5, 2, 0.001),
    ),
    Case(
        "restarts-mult3",
        lambda L, o: L.CosineAnnealingWarmRestarts(o, 3, 3),
        lambda i, lr: S.cosine_annealing_warm_restarts(lr, 3, 3),
    ),
    # LambdaLR / MultiplicativeLR: one lambda, one per group.
    Case(
        "lambda",
        lambda L, o: L.LambdaLR(o, lambda e: 1 / (1 + e) ** 0.5),
        lambda i, lr: S.inverse_sqrt_decay(lr),
    ),
    Case(
        "lambda-per-group",
        lambda L, o: L.LambdaLR(o, [lambda e: 0.95**e, lambda e: 1 + _cos(e / 10.0)]),
        lambda i, lr: S.lambda_lr(lr, [lambda e: 0.95**e, lambda e: 1 + _cos(e / 10.0)][i]),
        lrs=TWO,
    ),
    Case("multiplicative", lambda L, o: L.MultiplicativeLR(o, lambda e: 0.99), lrs=TWO),
    Case(
        "multiplicative-steps",
        lambda L, o: L.MultiplicativeLR(o, lambda e: 0.5 if e % 25 == 0 else 1.0),
    ),
    # CyclicLR: each mode, custom scale functions, momentum or betas[0] cycled.
    Case(
        "cyclic",
        lambda L, o: L.CyclicLR(o, 0.01, 0.1, 20),
        lambda i, lr: S.cyclic_lr(0.01, 0.1, 20),
        lambda i: S.cyclic_momentum(0.8, 0.9, 20),
    ),
    Case(
        "cyclic-triangular2",
        lambda L, o: L.CyclicLR(
            o,
            [0.01, 0.001],
            [0.1, 0.05],
            20,
            10,
            "triangular2",
            base_momentum=[0.7, 0.8],
            max_momentum=0.95,
        ),
        lambda i, lr: S.cyclic_lr([0.01, 0.001][i], [0.1, 0.05][i], 20, 10, "triangular2"),
        lambda i: S.cyclic_momentum([0.7, 0.8][i], 0.95, 20, 10, "triangular2"),
        lrs=TWO,
    ),
    Case(
        "cyclic-exp-range-adam",
        lambda L, o: L.CyclicLR(o, 0.001, 0.01, 15, 25, "exp_range", gamma=0.995),
        lambda i, lr: S.cyclic_lr(0.001, 0.01, 15, 25, "exp_range", gamma=0.995),
        lambda i: S.cyclic_momentum(0.8, 0.9, 15, 25, "exp_range", gamma=0.995),
        kind="adam",
    ),
    Case(
        "cyclic-scale-fn-iterations",
        lambda L, o: L.CyclicLR(
            o,
            0.01,
            0.1,
            10,
            scale_fn=lambda x: 1 / (1 + x / 50),
            scale_mode="iterations",
            cycle_momentum=False,
        ),
        lambda i, lr: S.cyclic_lr(
            0.01, 0.1, 10, scale_fn=lambda x: 1 / (1 + x / 50), scale_mode="iterations"
        ),
        kind="adagrad",
    ),
    Case(
        "cyclic-scale-fn-cycle",
        lambda L, o: L.CyclicLR(o, 0.01, 0.1, 12, 8, scale_fn=lambda x: 0.8**x),
        lambda i, lr: S.cyclic_lr(0.01, 0.1, 12, 8, scale_fn=lambda x: 0.8**x),
        lambda i: S.cyclic_momentum(0.8, 0.9, 12, 8, scale_fn=lambda x: 0.8**x),
    ),
    # OneCycleLR: cos and linear, three phases, momentum and betas, per-group max_lr.
    Case(
        "one-cycle",
        lambda L, o: L.OneCycleLR(o, 1.0, STEPS),
        lambda i, lr: S.one_cycle_lr(1.0, STEPS),
        lambda i: S.one_cycle_momentum(STEPS),
    ),
    Case(
        "one-cycle-linear-three-phase-adam",
        lambda L, o: L.OneCycleLR(o, 0.01, STEPS, anneal_strategy="linear", three_phase=True),
        lambda i, lr: S.one_cycle_lr(0.01, STEPS, anneal_strategy="linear", three_phase=True),
        lambda i: S.one_cycle_momentum(STEPS, anneal_strategy="linear", three_phase=True),
        kind="adam",
    ),
    Case(
        "one-cycle-three-phase-groups",
        lambda L, o: L.OneCycleLR(
            o,
            [1.0, 0.5],
            epochs=10,
            steps_per_epoch=30,
            pct_start=0.25,
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
            base_momentum=[0.8, 0.85],
            max_momentum=0.9,
        ),
        lambda i, lr: S.one_cycle_lr(
            [1.0, 0.5][i], 300, 0.25, "cos", 10.0, 100.0, three_phase=True
        ),
        lambda i: S.one_cycle_momentum(300, 0.25, "cos", [0.8, 0.85][i], 0.9, three_phase=True),
        lrs=TWO,
    ),
    Case(
        "one-cycle-no-momentum",
        lambda L, o: L.OneCycleLR(o, 0.3, STEPS + 5, pct_start=0.5, cycle_momentum=False),
        lambda i, lr: S.one_cycle_lr(0.3, STEPS + 5, pct_start=0.5),
        kind="adagrad",
    ),
    # SequentialLR (three schedulers; nested) and ChainedScheduler.
    Case(
        "sequential-3",
        _seq3,
        lambda i, lr: S.sequential(
            [
                S.linear_lr(lr, 0.1, 1.0, 10),
                S.exponential_lr(lr, 0.97),
                S.cosine_annealing_lr(lr, 50, 0.001),
            ],
            [10, 100],
        ),
        lrs=TWO,
    ),
    Case(
        "sequential-warmup-step",
        lambda L, o: L.SequentialLR(o, [L.ConstantLR(o, 0.1, 20), L.StepLR(o, 30, 0.5)], [20]),
        lambda i, lr: S.sequential([S.constant_lr(lr, 0.1, 20), S.step_lr(lr, 30, 0.5)], [20]),
    ),
    Case("sequential-nested", _nested),
    Case(
        "chained",
        lambda L, o: L.ChainedScheduler([L.ConstantLR(o, 0.1, 20), L.ExponentialLR(o, 0.98)]),
        lambda i, lr: S.lambda_lr(
            lr, lambda t: S.constant_lr(1.0, 0.1, 20)(t) * S.exponential_lr(1.0, 0.98)(t)
        ),
        lrs=TWO,
    ),
    Case(
        "chained-cosine-step",
        lambda L, o: L.ChainedScheduler(
            [L.StepLR(o, 25, 0.5), L.CosineAnnealingLR(o, 30, 0.01), L.MultiStepLR(o, [60, 60])],
            optimizer=o,
        ),
    ),
    Case(
        "chained-lambda-linear",
        lambda L, o: L.ChainedScheduler(
            [L.LambdaLR(o, lambda e: 1 / (1 + e)), L.LinearLR(o, 0.5, 1.0, 40)]
        ),
        lrs=TWO,
    ),
]


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each case's full torch and jopt trajectories, computed once for the tests below."""
    out = {}
    for case in CASES:
        topt, jopt_ = make_pair(case.kind, case.lrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = trajectory(case.build(TL, topt), topt, STEPS)
            ours = trajectory(case.build(JL, jopt_), jopt_, STEPS)
        out[case.name] = theirs, ours
    return out


def n_groups(case: Case) -> int:
    return len(case.lrs)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_class_matches_torch(case: Case, runs: dict) -> None:
    theirs, ours = runs[case.name]
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("case", [c for c in CASES if c.lr is not None], ids=repr)
def test_functional_matches_class(case: Case, runs: dict) -> None:
    """The functional schedule (host ints: float64) equals torch's class at every step, and
    under jit (float32) agrees to float32 precision."""
    theirs, _ = runs[case.name]
    k = n_groups(case)
    columns = [(case.lr(i, lr), theirs[:, i]) for i, lr in enumerate(case.lrs)]
    if case.momentum is not None:
        columns += [(case.momentum(i), theirs[:, k + i]) for i in range(k)]
    steps = jnp.arange(STEPS)
    for schedule, want in columns:
        host = np.array([schedule(t) for t in range(STEPS)])
        assert isinstance(schedule(3), float)
        np.testing.assert_allclose(host, want, rtol=RTOL, atol=1e-15)
        jitted = np.asarray(jax.jit(jax.vmap(schedule))(steps))
        assert jitted.dtype == np.float32
        np.testing.assert_allclose(jitted, want, rtol=2e-5, atol=2e-6 * np.max(np.abs(want)))


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_state_dict_round_trip(case: Case, runs: dict) -> None:
    """Stop half-way, save the optimizer's and the scheduler's state dicts (through pickle),
    load them into fresh ones, continue: the rates are those of the uninterrupted run."""
    _, ours = runs[case.name]
    half = STEPS // 2
    opt = make_pair(case.kind, case.lrs)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = case.build(JL, opt)
        trajectory(sched, opt, half + 1)
        saved = pickle.loads(pickle.dumps((opt.state_dict(), sched.state_dict())))
        fresh_opt = make_pair(case.kind, case.lrs)[1]
        fresh = case.build(JL, fresh_opt)
        fresh_opt.load_state_dict(saved[0])
        fresh.load_state_dict(saved[1])
        rest = trajectory(fresh, fresh_opt, STEPS - half)
    np.testing.assert_array_equal(rest, ours[half:])


# --------------------------------------------------------------------------------------------
# ReduceLROnPlateau
# --------------------------------------------------------------------------------------------


def scripted_metric(n: int = STEPS) -> np.ndarray:
    """Improvements, plateaus, noise, a sign change and a late slide to negative values."""
    rng = np.random.default_rng(0)
    parts = [
        np.linspace(5.0, 1.0, 30),
        np.full(25, 1.0),
        1.0 + 0.001 * rng.standard_normal(30),
        np.linspace(1.0, -2.0, 40),
        np.full(30, -2.0),
        -2.0 + 0.5 * rng.standard_normal(40),
        np.linspace(-2.0, 3.0, 35),
        np.full(40, 3.0),
        np.linspace(3.0, -8.0, 30),
    ]
    return np.concatenate(parts)[:n]


PLATEAU = [
    dict(),
    dict(mode="min", threshold_mode="abs", threshold=0.05, patience=3, cooldown=2, factor=0.5),
    dict(mode="max", threshold_mode="rel", threshold=0.01, patience=4, cooldown=0, min_lr=1e-3),
    dict(mode="max", threshold_mode="abs", threshold=0.1, patience=2, cooldown=5, factor=0.3),
    dict(mode="min", threshold_mode="rel", patience=2, cooldown=3, factor=0.2, min_lr=[1e-4, 1e-3]),
    dict(mode="min", patience=0, factor=0.95, eps=1e-3),  # eps stops the reductions
    dict(mode="max", patience=1, factor=0.5, min_lr=[0.05, 0.05]),  # never raises a rate
]


@pytest.mark.parametrize("kwargs", PLATEAU, ids=[str(i) for i in range(len(PLATEAU))])
def test_plateau_matches_torch(kwargs: dict) -> None:
    metrics = scripted_metric()
    topt, jopt_ = make_pair("sgd", TWO)
    theirs = trajectory(TL.ReduceLROnPlateau(topt, **kwargs), topt, STEPS, metrics)
    sched = JL.ReduceLROnPlateau(jopt_, **kwargs)
    ours = trajectory(sched, jopt_, STEPS, metrics)
    assert len(np.unique(theirs[:, 0])) > 1  # the script does trigger reductions
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=0)

    # Round trip from the middle.
    opt2 = make_pair("sgd", TWO)[1]
    half = JL.ReduceLROnPlateau(opt2, **kwargs)
    trajectory(half, opt2, STEPS // 2 + 1, metrics)
    saved = pickle.loads(pickle.dumps((opt2.state_dict(), half.state_dict())))
    opt3 = make_pair("sgd", TWO)[1]
    again = JL.ReduceLROnPlateau(opt3, **kwargs)
    opt3.load_state_dict(saved[0])
    again.load_state_dict(saved[1])
    rest = trajectory(again, opt3, STEPS - STEPS // 2, metrics[STEPS // 2 :])
    np.testing.assert_array_equal(rest, ours[STEPS // 2 :])


# --------------------------------------------------------------------------------------------
# The optimizer follows the scheduler, without recompiling
# --------------------------------------------------------------------------------------------


def test_optimizer_follows_scheduler_without_recompiling() -> None:
    """SGD with momentum under OneCycleLR (lr and momentum both change every step): the
    parameters follow torch's, and the jitted step is traced once."""
    tparam = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    topt = torch.optim.SGD([tparam], lr=0.1, momentum=0.9)
    with jax.enable_x64(True):
        opt = jopt.optim.SGD({"w": jnp.asarray([1.0, -2.0, 0.5])}, lr=0.1, momentum=0.9)
        tsched = TL.OneCycleLR(topt, 0.5, 60)
        sched = JL.OneCycleLR(opt, 0.5, 60)
        for _ in range(59):
            grad = np.cos(3 * tparam.detach().numpy()) + tparam.detach().numpy()
            tparam.grad = torch.tensor(grad)
            topt.step()
            opt.step({"w": jnp.asarray(np.cos(3 * np.asarray(opt.params["w"])) + opt.params["w"])})
            tsched.step()
            sched.step()
        np.testing.assert_allclose(np.asarray(opt.params["w"]), tparam.detach().numpy(), rtol=1e-10)
    assert opt.compile_count == 1


# --------------------------------------------------------------------------------------------
# Errors and warnings, in torch's words
# --------------------------------------------------------------------------------------------

BAD = [
    ("ReduceLROnPlateau", lambda L, o: L.ReduceLROnPlateau(o, factor=1.0)),
    ("ReduceLROnPlateau", lambda L, o: L.ReduceLROnPlateau(o, mode="up")),
    ("ReduceLROnPlateau", lambda L, o: L.ReduceLROnPlateau(o, threshold_mode="pct")),
    ("ReduceLROnPlateau", lambda L, o: L.ReduceLROnPlateau(o, min_lr=[0.1, 0.2, 0.3])),
    ("ConstantLR", lambda L, o: L.ConstantLR(o, factor=1.5)),
    ("ConstantLR", lambda L, o: L.ConstantLR(o, factor=-0.1)),
    ("LinearLR", lambda L, o: L.LinearLR(o, start_factor=0)),
    ("LinearLR", lambda L, o: L.LinearLR(o, end_factor=1.5)),
    ("CosineAnnealingWarmRestarts", lambda L, o: L.CosineAnnealingWarmRestarts(o, 0)),
    ("CosineAnnealingWarmRestarts", lambda L, o: L.CosineAnnealingWarmRestarts(o, 2.5)),
    ("CosineAnnealingWarmRestarts", lambda L, o: L.CosineAnnealingWarmRestarts(o, 5, 0)),
    ("CosineAnnealingWarmRestarts", lambda L, o: L.CosineAnnealingWarmRestarts(o, 5, 1, "0")),
    ("OneCycleLR", lambda L, o: L.OneCycleLR(o, 1.0)),
    ("OneCycleLR", lambda L, o: L.OneCycleLR(o, 1.0, total_steps=0)),
    ("OneCycleLR", lambda L, o: L.OneCycleLR(o, 1.0, epochs=0, steps_per_epoch=3)),
    ("OneCycleLR", lambda L, o: L.OneCycleLR(o, 1.0, epochs=2, steps_per_epoch=-1)),
    ("OneCycleLR", lambda L, o: L.OneCycleLR(o, 1.0, 10, pct_start=1)),
    ("OneCycleLR", lambda L, o: L.OneCycleLR(o, 1.0, 10, anneal_strategy="exp")),
    ("OneCycleLR", lambda L, o: L.OneCycleLR(o, [1.0, 2.0, 3.0], 10)),
    ("CyclicLR", lambda L, o: L.CyclicLR(o, 0.1, 1.0, mode="square")),
    ("CyclicLR", lambda L, o: L.CyclicLR(o, [0.1], 1.0)),
    ("LambdaLR", lambda L, o: L.LambdaLR(o, [lambda e: 1.0] * 3)),
    ("MultiplicativeLR", lambda L, o: L.MultiplicativeLR(o, 0.5)),
    ("SequentialLR", lambda L, o: L.SequentialLR(o, [], [])),
    ("SequentialLR", lambda L, o: L.SequentialLR(o, [L.StepLR(o, 2), L.StepLR(o, 3)], [])),
    ("SequentialLR", lambda L, o: L.SequentialLR(o, [L.StepLR(o, 2), L.ReduceLROnPlateau(o)], [1])),
    ("ChainedScheduler", lambda L, o: L.ChainedScheduler([])),
    ("ChainedScheduler", lambda L, o: L.ChainedScheduler([L.StepLR(o, 2), 3])),
]


def _error(build: Callable[[], Any]) -> tuple[type, str]:
    with pytest.raises((ValueError, TypeError, KeyError)) as info:
        build()
    return info.type, str(info.value)


@pytest.mark.parametrize("name, build", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_arguments_raise_torchs_errors(name: str, build: Callable) -> None:
    topt, jopt_ = make_pair("adagrad", TWO)
    want = _error(lambda: build(TL, topt))
    got = _error(lambda: build(JL, jopt_))
    assert got == want


def test_cycle_momentum_needs_a_momentum() -> None:
    topt, jopt_ = make_pair("adagrad")
    for L, o in ((TL, topt), (JL, jopt_)):
        with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
            L.OneCycleLR(o, 1.0, 10)
        with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
            L.CyclicLR(o, 0.1, 1.0)


def test_one_cycle_past_total_steps() -> None:
    _, opt = make_pair()
    sched = JL.OneCycleLR(opt, 1.0, 5)
    for _ in range(5):
        sched.step()
    with pytest.raises(
        ValueError,
        match=re.escape("Tried to step 6 times. The specified number of total steps is 5"),
    ):
        sched.step()


def test_resume_without_initial_lr() -> None:
    _, opt = make_pair()
    with pytest.raises(KeyError, match="initial_lr"):
        JL.StepLR(opt, 3, last_epoch=4)


@pytest.mark.filterwarnings("default")
def test_warnings() -> None:
    _, opt = make_pair()
    sched = JL.StepLR(opt, 3)
    with pytest.warns(UserWarning, match=re.escape("before `optimizer.step()`")):
        sched.step()
    with pytest.warns(UserWarning, match=re.escape("please use `get_last_lr()`")):
        sched.get_lr()
    _, opt = make_pair()
    sched = JL.ExponentialLR(opt, 0.5)
    opt.step([{"w": jnp.ones(2)}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched.step()  # optimizer first: no warning
    with pytest.warns(UserWarning, match="deprecated"):
        sched.step(10)  # the closed form
    assert sched.get_last_lr() == pytest.approx([0.1 * 0.5**10], rel=1e-15)


def test_epoch_argument_uses_closed_form_like_torch() -> None:
    """The deprecated ``step(epoch)`` (closed form where torch has one; warm restarts with a
    fractional epoch) gives torch's numbers."""
    builds = [
        lambda L, o: L.StepLR(o, 4, 0.5),
        lambda L, o: L.MultiStepLR(o, [2, 2, 9]),
        lambda L, o: L.CosineAnnealingLR(o, 10, 0.01),
        lambda L, o: L.PolynomialLR(o, 8, 2.0),
        lambda L, o: L.LinearLR(o, 0.2, 0.9, 6),
        lambda L, o: L.CosineAnnealingWarmRestarts(o, 3, 2, 0.01),
        lambda L, o: L.LambdaLR(o, lambda e: 1 / (1 + e)),
    ]
    epochs = [3, 7, 2.5, 12, 1, 20, 0, 30.25]
    for build in builds:
        topt, jopt_ = make_pair("sgd", TWO)
        ts, js = build(TL, topt), build(JL, jopt_)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in epochs:
                if not isinstance(ts, TL.CosineAnnealingWarmRestarts) and epoch != int(epoch):
                    continue
                ts.step(epoch)
                js.step(epoch)
                np.testing.assert_allclose(js.get_last_lr(), ts.get_last_lr(), rtol=RTOL)


RESUMED = [
    lambda L, o, e: L.StepLR(o, 3, 0.5, last_epoch=e),
    lambda L, o, e: L.MultiStepLR(o, [2, 6, 6], 0.5, last_epoch=e),
    lambda L, o, e: L.ExponentialLR(o, 0.9, last_epoch=e),
    lambda L, o, e: L.ConstantLR(o, 0.2, 6, last_epoch=e),
    lambda L, o, e: L.LinearLR(o, 0.2, 1.0, 10, last_epoch=e),
    lambda L, o, e: L.PolynomialLR(o, 10, 2.0, last_epoch=e),
    lambda L, o, e: L.CosineAnnealingLR(o, 7, 0.01, last_epoch=e),
    lambda L, o, e: L.CosineAnnealingWarmRestarts(o, 3, 2, last_epoch=e),
]


@pytest.mark.parametrize("build", RESUMED, ids=range(len(RESUMED)))
def test_resume_with_last_epoch_like_torch(build: Callable) -> None:
    """A scheduler constructed with ``last_epoch >= 0`` on groups that carry ``initial_lr``
    (and a current ``lr`` of their own) goes on as torch's does, quirks included."""
    tgroup = {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.05, "initial_lr": 0.1}
    topt = torch.optim.SGD([tgroup], momentum=0.9)
    jopt_ = jopt.optim.SGD([{"params": {"w": jnp.zeros(1)}, "lr": 0.05, "initial_lr": 0.1}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = trajectory(build(TL, topt, 5), topt, 12)
        ours = trajectory(build(JL, jopt_, 5), jopt_, 12)
    np.testing.assert_allclose(ours[:, 0], theirs[:, 0], rtol=RTOL, atol=1e-15)


def test_plateau_checks_min_lrs_against_the_groups_only_when_it_reduces():
    """torch's test_add_param_group_errors_reduce_lr_on_plateau: a group added after the
    scheduler is fine until a reduction is due; then both raise the same error."""
    outcomes = {}
    for lib, optim, zeros in (("jopt", jopt.optim, jnp.zeros), ("torch", torch.optim, torch.zeros)):
        opt = optim.SGD([zeros(2)], lr=0.1)
        sched = optim.lr_scheduler.ReduceLROnPlateau(opt, min_lr=[0.1], patience=1)
        opt.add_param_group({"params": [zeros(3)]})
        steps = []
        for _ in range(3):
            try:
                sched.step(1.0)
                steps.append("ok")
            except RuntimeError as e:
                steps.append(str(e))
        outcomes[lib] = steps
    assert outcomes["jopt"] == outcomes["torch"]
    assert outcomes["torch"][:2] == ["ok", "ok"] and "min_lrs" in outcomes["torch"][2]
