"""Learning-rate schedules: pure functions ``step -> lr`` with torch.optim.lr_scheduler's numbers.

Every factory returns a :data:`jopt.core.Schedule`, usable as ``lr=`` of any jopt optimizer (or
any float hyperparameter under ``jopt.inject_hyperparams``), inside ``jit`` and ``vmap``.

Each rule is written once and runs on two backends, chosen by the types of its inputs:

- a Python/NumPy step with Python/NumPy hyperparameters evaluates in NumPy float64 and returns
  a ``numpy.float64`` (a ``float``) — the same double arithmetic torch's schedulers do, which is
  what the ``jopt.optim.lr_scheduler`` classes build on; a NumPy array of steps gives an array;
- a traced or JAX step (or hyperparameter) evaluates in ``jax.numpy`` at JAX's default float
  precision, without Python branching on values.

The value at step ``t`` is what torch's scheduler of the same name sets after ``t`` calls of
``scheduler.step()`` (its ``last_epoch == t``), including torch's behaviour at and past the ends
of a schedule.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.core import Schedule, is_concrete

__all__ = [
    "constant",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "cyclic_momentum",
    "exponential_lr",
    "inverse_sqrt_decay",
    "lambda_lr",
    "linear_lr",
    "linear_warmup",
    "multistep_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "polynomial_lr",
    "sequential",
    "step_lr",
]

Scalar = float | jax.Array
Step = int | jax.Array


# --------------------------------------------------------------------------------------------
# Backend selection: one formula, NumPy float64 for host numbers, jax.numpy otherwise
# --------------------------------------------------------------------------------------------


def _host(x: Any) -> bool:
    """A Python or NumPy number (or NumPy array): evaluated in float64 on the host."""
    return isinstance(x, numbers.Number | np.ndarray | np.generic)


def _float(x: Any) -> Any:
    """A Python float for a concrete real hyperparameter; arrays and tracers pass through."""
    return float(x) if isinstance(x, numbers.Real) else x


def _host_result(x: Any) -> Any:
    out = np.asarray(x, dtype=np.float64)
    return out[()] if out.ndim == 0 else out


def _jax_result(x: Any) -> jax.Array:
    out = jnp.asarray(x)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        out = out.astype(jnp.result_type(float))
    return out


def _schedule(rule: Callable[[Any, Any], Any], *hyperparams: Any) -> Schedule:
    """Wrap ``rule(xp, t)`` into a schedule that picks NumPy or jax.numpy by its inputs' types."""

    def schedule(step: Step) -> Any:
        if _host(step) and all(_host(h) for h in hyperparams):
            with np.errstate(all="ignore"):  # where() evaluates both sides; the unused may be inf
                return _host_result(rule(np, np.asarray(step)))
        return _jax_result(rule(jnp, jnp.asarray(step)))

    return schedule


def _check(value: Any, ok: Callable[[float], bool], message: str) -> None:
    """torch's argument check, for values known at construction (not tracers)."""
    if is_concrete(value) and isinstance(value, numbers.Real) and not ok(float(value)):
        raise ValueError(message)


def _is_zero(x: Any) -> bool:
    return isinstance(x, numbers.Real) and x == 0


# --------------------------------------------------------------------------------------------
# Closed-form schedules
# --------------------------------------------------------------------------------------------


def constant(lr: Scalar) -> Schedule:
    """``lr_t = lr``: a constant as a schedule (torch: no scheduler)."""
    lr = _float(lr)
    return _schedule(lambda xp, t: xp.zeros_like(t, dtype=float) + lr, lr)


def step_lr(lr: Scalar, step_size: int, gamma: Scalar = 0.1) -> Schedule:
    """``lr_t = lr * gamma ** (t // step_size)``: torch's ``StepLR``."""
    lr, gamma = _float(lr), _float(gamma)
    _check(step_size, lambda v: v > 0, f"Expected positive step_size, but got {step_size}")
    return _schedule(
        lambda xp, t: lr * gamma ** xp.floor_divide(t, step_size), lr, gamma, step_size
    )


def multistep_lr(lr: Scalar, milestones: Sequence[int], gamma: Scalar = 0.1) -> Schedule:
    """``lr_t = lr * gamma ** #{m in milestones : m <= t}``: torch's ``MultiStepLR``.

    A milestone listed k times multiplies by ``gamma ** k`` there, as torch's ``Counter`` does.
    """
    lr, gamma = _float(lr), _float(gamma)
    marks = np.asarray(sorted(int(m) for m in milestones), dtype=np.int64)

    def rule(xp: Any, t: Any) -> Any:
        passed = xp.sum(xp.expand_dims(t, -1) >= xp.asarray(marks, dtype=t.dtype), axis=-1)
        return lr * gamma**passed

    return _schedule(rule, lr, gamma)


def exponential_lr(lr: Scalar, gamma: Scalar) -> Schedule:
    """``lr_t = lr * gamma ** t``: torch's ``ExponentialLR``."""
    lr, gamma = _float(lr), _float(gamma)
    return _schedule(lambda xp, t: lr * gamma**t, lr, gamma)


def _cosine(xp: Any, lr: Any, eta_min: Any, t: Any, period: Any) -> Any:
    return eta_min + (lr - eta_min) * (1 + xp.cos(math.pi * t / period)) / 2


def cosine_annealing_lr(lr: Scalar, T_max: Scalar, eta_min: Scalar = 0.0) -> Schedule:
    """``lr_t = eta_min + (lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``: ``CosineAnnealingLR``.

    Past ``T_max`` the cosine goes on, so the rate climbs back to ``lr`` at ``2 * T_max`` and
    the schedule has period ``2 * T_max`` — what torch's recursive form returns.
    """
    lr, T_max, eta_min = _float(lr), _float(T_max), _float(eta_min)
    return _schedule(lambda xp, t: _cosine(xp, lr, eta_min, t, T_max), lr, T_max, eta_min)


def cosine_annealing_warm_restarts(
    lr: Scalar,
    T_0: int,
    T_mult: int = 1,
    eta_min: Scalar = 0.0,
) -> Schedule:
    """Cosine annealing restarted after ``T_0``, ``T_0 * T_mult``, ... steps.

    torch's ``CosineAnnealingWarmRestarts``: with ``T_i`` the length of the current cycle and
    ``T_cur`` the steps since it began,
    ``lr_t = eta_min + (lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``.
    """
    if not isinstance(T_0, numbers.Integral) or T_0 <= 0:
        raise ValueError(f"Expected positive integer T_0, but got {T_0}")
    if not isinstance(T_mult, numbers.Integral) or T_mult < 1:
        raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
    lr, eta_min = _float(lr), _float(eta_min)
    T_0, T_mult = int(T_0), int(T_mult)

    def rule(xp: Any, t: Any) -> Any:
        if T_mult == 1:
            return _cosine(xp, lr, eta_min, xp.remainder(t, T_0), T_0)
        # Cycle n starts at T_0 * (T_mult**n - 1) / (T_mult - 1); the log guesses n, integer
        # comparisons correct the guess where rounding puts it one off at a boundary.
        tf = xp.maximum(t, 0).astype(float)

        def start(n: Any) -> Any:
            return T_0 * (float(T_mult) ** n - 1) / (T_mult - 1)

        n = xp.floor(xp.log(tf / T_0 * (T_mult - 1) + 1) / math.log(T_mult))
        n = n + (start(n + 1) <= tf) - (start(n) > tf)
        return _cosine(xp, lr, eta_min, tf - start(n), T_0 * float(T_mult) ** n)

    return _schedule(rule, lr, eta_min)


def linear_lr(
    lr: Scalar,
    start_factor: Scalar = 1.0 / 3,
    end_factor: Scalar = 1.0,
    total_iters: int = 5,
) -> Schedule:
    """``lr_t = lr * (start + (end - start) * min(t, total_iters) / total_iters)``: ``LinearLR``.

    ``total_iters == 0`` keeps ``start_factor`` for ever, as torch's scheduler does.
    """
    _check(
        start_factor,
        lambda v: 0 < v <= 1.0,
        "Starting multiplicative factor expected to be greater than 0 and less or equal to 1.",
    )
    _check(
        end_factor,
        lambda v: 0 <= v <= 1.0,
        "Ending multiplicative factor expected to be between 0 and 1.",
    )
    return _linear(lr, start_factor, end_factor, total_iters)


def _linear(lr: Scalar, start: Scalar, end: Scalar, total_iters: Any) -> Schedule:
    lr, start, end = _float(lr), _float(start), _float(end)
    if _is_zero(total_iters):
        return _schedule(lambda xp, t: lr * (start + 0 * t), lr, start)

    def rule(xp: Any, t: Any) -> Any:
        return lr * (start + (end - start) * xp.minimum(total_iters, t) / total_iters)

    return _schedule(rule, lr, start, end, total_iters)


def linear_warmup(lr: Scalar, warmup_steps: int, start_factor: Scalar = 0.0) -> Schedule:
    """Linear warm-up from ``start_factor * lr`` to ``lr`` over ``warmup_steps``, then ``lr``.

    ``LinearLR(start_factor, end_factor=1.0, total_iters=warmup_steps)``, allowing a start at 0.
    """
    _check(start_factor, lambda v: 0 <= v <= 1.0, "Starting factor expected to be between 0 and 1.")
    _check(
        warmup_steps,
        lambda v: v >= 0,
        f"Expected non-negative warmup_steps, but got {warmup_steps}",
    )
    if _is_zero(warmup_steps):
        return constant(lr)
    return _linear(lr, start_factor, 1.0, warmup_steps)


def constant_lr(lr: Scalar, factor: Scalar = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """``lr_t = lr * factor`` for ``t < total_iters``, then ``lr``: torch's ``ConstantLR``.

    ``total_iters == 0`` keeps ``factor`` for ever, as torch's scheduler does.
    """
    _check(
        factor,
        lambda v: 0 <= v <= 1.0,
        "Constant multiplicative factor expected to be between 0 and 1.",
    )
    lr, factor = _float(lr), _float(factor)
    if _is_zero(total_iters):
        return _schedule(lambda xp, t: lr * (factor + 0 * t), lr, factor)
    return _schedule(
        lambda xp, t: lr * xp.where(t < total_iters, factor, 1.0), lr, factor, total_iters
    )


def polynomial_lr(lr: Scalar, total_iters: int = 5, power: Scalar = 1.0) -> Schedule:
    """``lr_t = lr * (1 - min(t, total_iters) / total_iters) ** power``: ``PolynomialLR``.

    ``total_iters == 0`` keeps ``lr``, as torch's scheduler does.
    """
    lr, power = _float(lr), _float(power)
    if _is_zero(total_iters):
        return constant(lr)

    def rule(xp: Any, t: Any) -> Any:
        # (T - min(T, t)) / T rather than torch's 1 - min(T, t) / T: the same number in float64
        # (to rounding), and exactly 0 at the end in float32, where XLA divides by reciprocal.
        return lr * ((total_iters - xp.minimum(total_iters, t)) / total_iters) ** power

    return _schedule(rule, lr, total_iters, power)


def inverse_sqrt_decay(lr: Scalar, delta: Scalar = 1.0, power: Scalar = 1.0) -> Schedule:
    """``lr_t = lr * (1 / sqrt(1 + delta * t)) ** power``: inverse-square-root (time) decay.

    torch has no class for it; ``LambdaLR(opt, lambda t: (1 + delta * t) ** (-power / 2))``.
    """
    _check(delta, lambda v: v >= 0, f"Invalid delta: {delta}")
    lr, delta, power = _float(lr), _float(delta), _float(power)
    return _schedule(lambda xp, t: lr * (1 / xp.sqrt(1 + delta * t)) ** power, lr, delta, power)


# --------------------------------------------------------------------------------------------
# One-cycle and cyclic schedules (learning rate and momentum)
# --------------------------------------------------------------------------------------------


def _anneal(xp: Any, strategy: str, start: Any, end: Any, pct: Any) -> Any:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (xp.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def _one_cycle_phases(total_steps: int, pct_start: float, three_phase: bool) -> list[float]:
    """The last step of each phase, as torch's ``OneCycleLR`` places them."""
    if three_phase:
        return [
            float(pct_start * total_steps) - 1,
            float(2 * pct_start * total_steps) - 2,
            total_steps - 1,
        ]
    return [float(pct_start * total_steps) - 1, total_steps - 1]


def _phased(
    xp: Any, t: Any, ends: Sequence[float], values: Sequence[tuple[Any, Any]], strategy: str
) -> Any:
    """Anneal from ``values[i][0]`` to ``values[i][1]`` over phase ``i``: the first phase whose
    last step is ``>= t``, else the final one (which extrapolates past its end)."""
    starts = [0.0, *ends[:-1]]

    def phase(i: int) -> Any:
        pct = (t - starts[i]) / (ends[i] - starts[i])
        return _anneal(xp, strategy, values[i][0], values[i][1], pct)

    out = phase(len(ends) - 1)
    for i in reversed(range(len(ends) - 1)):
        out = xp.where(t <= ends[i], phase(i), out)
    return out


def _check_one_cycle(total_steps: Any, pct_start: Any, anneal_strategy: str) -> None:
    if not isinstance(total_steps, numbers.Integral) or total_steps <= 0:
        raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
    if not isinstance(pct_start, numbers.Real) or not 0 <= pct_start <= 1:
        raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
        )


def one_cycle_value(
    xp: Any,
    t: Any,
    total_steps: int,
    pct_start: float,
    anneal_strategy: str,
    three_phase: bool,
    initial: Any,
    peak: Any,
    final: Any,
) -> Any:
    """The one-cycle rule on given endpoints: ``initial -> peak -> final`` (two phases) or
    ``initial -> peak -> initial -> final`` (three). Shared by the schedule and the class."""
    ends = _one_cycle_phases(total_steps, pct_start, three_phase)
    if three_phase:
        values = [(initial, peak), (peak, initial), (initial, final)]
    else:
        values = [(initial, peak), (peak, final)]
    return _phased(xp, t, ends, values, anneal_strategy)


def one_cycle_momentum_value(
    xp: Any,
    t: Any,
    total_steps: int,
    pct_start: float,
    anneal_strategy: str,
    three_phase: bool,
    base_momentum: Any,
    max_momentum: Any,
) -> Any:
    """The one-cycle momentum rule: ``max -> base -> max`` (three phases: then held at max)."""
    ends = _one_cycle_phases(total_steps, pct_start, three_phase)
    if three_phase:
        values = [
            (max_momentum, base_momentum),
            (base_momentum, max_momentum),
            (max_momentum, max_momentum),
        ]
    else:
        values = [(max_momentum, base_momentum), (base_momentum, max_momentum)]
    return _phased(xp, t, ends, values, anneal_strategy)


def one_cycle_lr(
    max_lr: Scalar,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """The 1cycle policy: torch's ``OneCycleLR``.

    From ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of
    ``total_steps``, then down to ``max_lr / div_factor / final_div_factor`` (``three_phase``:
    back to the start, then down), annealing by cosine or linearly.
    """
    _check_one_cycle(total_steps, pct_start, anneal_strategy)
    max_lr = _float(max_lr)
    initial = max_lr / div_factor
    final = initial / final_div_factor

    def rule(xp: Any, t: Any) -> Any:
        return one_cycle_value(
            xp, t, total_steps, pct_start, anneal_strategy, three_phase, initial, max_lr, final
        )

    return _schedule(rule, max_lr, div_factor, final_div_factor)


def one_cycle_momentum(
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    base_momentum: Scalar = 0.85,
    max_momentum: Scalar = 0.95,
    three_phase: bool = False,
) -> Schedule:
    """The momentum (or Adam's ``beta1``) that ``OneCycleLR(cycle_momentum=True)`` sets:
    from ``max_momentum`` down to ``base_momentum`` while the lr rises, and back."""
    _check_one_cycle(total_steps, pct_start, anneal_strategy)
    base_momentum, max_momentum = _float(base_momentum), _float(max_momentum)

    def rule(xp: Any, t: Any) -> Any:
        return one_cycle_momentum_value(
            xp, t, total_steps, pct_start, anneal_strategy, three_phase, base_momentum, max_momentum
        )

    return _schedule(rule, base_momentum, max_momentum)


def _cyclic(
    step_size_up: float,
    step_size_down: float | None,
    mode: str,
    gamma: Any,
    scale_fn: Callable[[Any], Any] | None,
    scale_mode: str,
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``(xp, t) -> (height, scale)``: the triangle's height in [0, 1] and the amplitude's scale."""
    if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
        raise ValueError("mode is invalid and scale_fn is None")
    up = float(step_size_up)
    down = float(step_size_down) if step_size_down is not None else up
    total_size = up + down
    step_ratio = up / total_size
    if scale_fn is None:
        scale_mode = "iterations" if mode == "exp_range" else "cycle"

    def rule(xp: Any, t: Any) -> tuple[Any, Any]:
        cycle = xp.floor(1 + t / total_size)
        x = 1.0 + t / total_size - cycle
        height = xp.where(x <= step_ratio, x / step_ratio, (x - 1) / (step_ratio - 1))
        arg = cycle if scale_mode == "cycle" else t
        if scale_fn is not None:
            if xp is np and np.ndim(arg) == 0:
                arg = float(arg)  # a host step: the Python number torch passes
                arg = int(arg) if arg.is_integer() else arg
            scale = scale_fn(arg)
        elif mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = 1 / (2.0 ** (arg - 1))
        else:
            scale = gamma**arg
        return height, scale

    return rule


def cyclic_lr(
    base_lr: Scalar,
    max_lr: Scalar,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: Scalar = 1.0,
    scale_fn: Callable[[Any], Any] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    """Cyclical learning rate between ``base_lr`` and ``max_lr``: torch's ``CyclicLR``.

    A triangle rising over ``step_size_up`` steps and falling over ``step_size_down``; its
    amplitude is scaled per cycle (``triangular``: 1, ``triangular2``: halved each cycle) or per
    step (``exp_range``: ``gamma ** t``), or by ``scale_fn`` of the cycle or of the step.
    """
    base_lr, max_lr, gamma = _float(base_lr), _float(max_lr), _float(gamma)
    shape = _cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def rule(xp: Any, t: Any) -> Any:
        height, scale = shape(xp, t)
        return base_lr + (max_lr - base_lr) * height * scale

    return _schedule(rule, base_lr, max_lr, gamma)


def cyclic_momentum(
    base_momentum: Scalar = 0.8,
    max_momentum: Scalar = 0.9,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: Scalar = 1.0,
    scale_fn: Callable[[Any], Any] | None = None,
    scale_mode: str = "cycle",
) -> Schedule:
    """The momentum ``CyclicLR(cycle_momentum=True)`` sets: the lr's triangle, mirrored,
    ``max_momentum - (max_momentum - base_momentum) * height * scale``."""
    base_momentum, max_momentum = _float(base_momentum), _float(max_momentum)
    gamma = _float(gamma)
    shape = _cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def rule(xp: Any, t: Any) -> Any:
        height, scale = shape(xp, t)
        return max_momentum - (max_momentum - base_momentum) * height * scale

    return _schedule(rule, base_momentum, max_momentum, gamma)


# --------------------------------------------------------------------------------------------
# Schedules built from functions and other schedules
# --------------------------------------------------------------------------------------------


def lambda_lr(lr: Scalar, lr_lambda: Callable[[Any], Any]) -> Schedule:
    """``lr_t = lr * lr_lambda(t)``: torch's ``LambdaLR``.

    ``lr_lambda`` gets the step as given: a Python int from the host, a traced integer under
    ``jit`` (where it must be written with ``jax.numpy``).
    """
    lr = _float(lr)

    def schedule(step: Step) -> Any:
        value = lr * lr_lambda(step)
        if _host(step) and _host(lr) and _host(value):
            return _host_result(value)
        return _jax_result(value)

    return schedule


def sequential(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``schedules[i]`` from ``milestones[i - 1]`` on, counting its own steps from 0 there.

    torch's ``SequentialLR``: ``lr_t = schedules[i](t - milestones[i - 1])`` with ``i`` the
    number of milestones ``<= t``.
    """
    schedules, milestones = list(schedules), [int(m) for m in milestones]
    if len(schedules) < 1:
        raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler.")
    if len(milestones) != len(schedules) - 1:
        raise ValueError(
            "Sequential Schedulers expects number of schedulers provided to be one more "
            f"than the number of milestone points, but got number of schedulers {len(schedules)} "
            f"and the number of milestones to be equal to {len(milestones)}"
        )
    starts = [0, *milestones]

    def schedule(step: Step) -> Any:
        if _host(step) and np.ndim(step) == 0:
            i = sum(m <= step for m in milestones)
            return schedules[i](step - starts[i])
        xp = np if _host(step) else jnp
        t = xp.asarray(step)
        out = schedules[-1](t - starts[-1])
        for i in reversed(range(len(milestones))):
            out = xp.where(t < milestones[i], schedules[i](xp.maximum(t - starts[i], 0)), out)
        return _host_result(out) if xp is np else _jax_result(out)

    return schedule
