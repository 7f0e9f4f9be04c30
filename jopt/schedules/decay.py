"""Decaying schedules with a closed form: step, multistep, exponential, cosine (and warm
restarts), linear, constant factor, polynomial, warm-up, inverse square root."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from jopt.core import Schedule, is_zero
from jopt.schedules.backend import (
    Scalar,
    as_float,
    check,
    make_schedule,
)


def constant(lr: Scalar) -> Schedule:
    """``lr_t = lr``: a constant as a schedule (torch: no scheduler)."""
    lr = as_float(lr)
    return make_schedule(lambda xp, t: xp.zeros_like(t, dtype=float) + lr, lr)


def step_lr(lr: Scalar, step_size: int, gamma: Scalar = 0.1) -> Schedule:
    """``lr_t = lr * gamma ** (t // step_size)``: torch's ``StepLR``."""
    lr, gamma = as_float(lr), as_float(gamma)
    check(step_size, lambda v: v > 0, f"Expected positive step_size, but got {step_size}")
    return make_schedule(
        lambda xp, t: lr * gamma ** xp.floor_divide(t, step_size), lr, gamma, step_size
    )


def multistep_lr(lr: Scalar, milestones: Sequence[int], gamma: Scalar = 0.1) -> Schedule:
    """``lr_t = lr * gamma ** #{m in milestones : m <= t}``: torch's ``MultiStepLR``.

    A milestone listed k times multiplies by ``gamma ** k`` there, as torch's ``Counter`` does.
    """
    lr, gamma = as_float(lr), as_float(gamma)
    marks = np.asarray(sorted(int(m) for m in milestones), dtype=np.int64)

    def rule(xp: Any, t: Any) -> Any:
        passed = xp.sum(xp.expand_dims(t, -1) >= xp.asarray(marks, dtype=t.dtype), axis=-1)
        return lr * gamma**passed

    return make_schedule(rule, lr, gamma)


def exponential_lr(lr: Scalar, gamma: Scalar) -> Schedule:
    """``lr_t = lr * gamma ** t``: torch's ``ExponentialLR``."""
    lr, gamma = as_float(lr), as_float(gamma)
    return make_schedule(lambda xp, t: lr * gamma**t, lr, gamma)


def _cosine(xp: Any, lr: Any, eta_min: Any, t: Any, period: Any) -> Any:
    return eta_min + (lr - eta_min) * (1 + xp.cos(math.pi * t / period)) / 2


def cosine_annealing_lr(lr: Scalar, T_max: Scalar, eta_min: Scalar = 0.0) -> Schedule:
    """``lr_t = eta_min + (lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``: ``CosineAnnealingLR``.

    Past ``T_max`` the cosine goes on, so the rate climbs back to ``lr`` at ``2 * T_max`` and
    the schedule has period ``2 * T_max`` — what torch's recursive form returns.
    """
    lr, T_max, eta_min = as_float(lr), as_float(T_max), as_float(eta_min)
    return make_schedule(lambda xp, t: _cosine(xp, lr, eta_min, t, T_max), lr, T_max, eta_min)


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
    lr, eta_min = as_float(lr), as_float(eta_min)
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

    return make_schedule(rule, lr, eta_min)


def linear_lr(
    lr: Scalar,
    start_factor: Scalar = 1.0 / 3,
    end_factor: Scalar = 1.0,
    total_iters: int = 5,
) -> Schedule:
    """``lr_t = lr * (start + (end - start) * min(t, total_iters) / total_iters)``: ``LinearLR``.

    ``total_iters == 0`` keeps ``start_factor`` for ever, as torch's scheduler does.
    """
    check(
        start_factor,
        lambda v: 0 < v <= 1.0,
        "Starting multiplicative factor expected to be greater than 0 and less or equal to 1.",
    )
    check(
        end_factor,
        lambda v: 0 <= v <= 1.0,
        "Ending multiplicative factor expected to be between 0 and 1.",
    )
    return _linear(lr, start_factor, end_factor, total_iters)


def _linear(lr: Scalar, start: Scalar, end: Scalar, total_iters: Any) -> Schedule:
    lr, start, end = as_float(lr), as_float(start), as_float(end)
    if is_zero(total_iters):
        return make_schedule(lambda xp, t: lr * (start + 0 * t), lr, start)

    def rule(xp: Any, t: Any) -> Any:
        return lr * (start + (end - start) * xp.minimum(total_iters, t) / total_iters)

    return make_schedule(rule, lr, start, end, total_iters)


def linear_warmup(lr: Scalar, warmup_steps: int, start_factor: Scalar = 0.0) -> Schedule:
    """Linear warm-up from ``start_factor * lr`` to ``lr`` over ``warmup_steps``, then ``lr``.

    ``LinearLR(start_factor, end_factor=1.0, total_iters=warmup_steps)``, allowing a start at 0.
    """
    check(start_factor, lambda v: 0 <= v <= 1.0, "Starting factor expected to be between 0 and 1.")
    check(
        warmup_steps,
        lambda v: v >= 0,
        f"Expected non-negative warmup_steps, but got {warmup_steps}",
    )
    if is_zero(warmup_steps):
        return constant(lr)
    return _linear(lr, start_factor, 1.0, warmup_steps)


def constant_lr(lr: Scalar, factor: Scalar = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """``lr_t = lr * factor`` for ``t < total_iters``, then ``lr``: torch's ``ConstantLR``.

    ``total_iters == 0`` keeps ``factor`` for ever, as torch's scheduler does.
    """
    check(
        factor,
        lambda v: 0 <= v <= 1.0,
        "Constant multiplicative factor expected to be between 0 and 1.",
    )
    lr, factor = as_float(lr), as_float(factor)
    if is_zero(total_iters):
        return make_schedule(lambda xp, t: lr * (factor + 0 * t), lr, factor)
    return make_schedule(
        lambda xp, t: lr * xp.where(t < total_iters, factor, 1.0), lr, factor, total_iters
    )


def polynomial_lr(lr: Scalar, total_iters: int = 5, power: Scalar = 1.0) -> Schedule:
    """``lr_t = lr * (1 - min(t, total_iters) / total_iters) ** power``: ``PolynomialLR``.

    ``total_iters == 0`` keeps ``lr``, as torch's scheduler does.
    """
    lr, power = as_float(lr), as_float(power)
    if is_zero(total_iters):
        return constant(lr)

    def rule(xp: Any, t: Any) -> Any:
        # (T - min(T, t)) / T rather than torch's 1 - min(T, t) / T: the same number in float64
        # (to rounding), and exactly 0 at the end in float32, where XLA divides by reciprocal.
        return lr * ((total_iters - xp.minimum(total_iters, t)) / total_iters) ** power

    return make_schedule(rule, lr, total_iters, power)


def inverse_sqrt_decay(lr: Scalar, delta: Scalar = 1.0, power: Scalar = 1.0) -> Schedule:
    """``lr_t = lr * (1 / sqrt(1 + delta * t)) ** power``: inverse-square-root (time) decay.

    torch has no class for it; ``LambdaLR(opt, lambda t: (1 + delta * t) ** (-power / 2))``.
    """
    check(delta, lambda v: v >= 0, f"Invalid delta: {delta}")
    lr, delta, power = as_float(lr), as_float(delta), as_float(power)
    return make_schedule(lambda xp, t: lr * (1 / xp.sqrt(1 + delta * t)) ** power, lr, delta, power)
