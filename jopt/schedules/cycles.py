"""One-cycle and cyclic schedules, for the learning rate and for the momentum they cycle."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jopt.core import Schedule
from jopt.schedules.backend import (
    Scalar,
    as_float,
    make_schedule,
)


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
    max_lr = as_float(max_lr)
    initial = max_lr / div_factor
    final = initial / final_div_factor

    def rule(xp: Any, t: Any) -> Any:
        return one_cycle_value(
            xp, t, total_steps, pct_start, anneal_strategy, three_phase, initial, max_lr, final
        )

    return make_schedule(rule, max_lr, div_factor, final_div_factor)


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
    base_momentum, max_momentum = as_float(base_momentum), as_float(max_momentum)

    def rule(xp: Any, t: Any) -> Any:
        return one_cycle_momentum_value(
            xp, t, total_steps, pct_start, anneal_strategy, three_phase, base_momentum, max_momentum
        )

    return make_schedule(rule, base_momentum, max_momentum)


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
    base_lr, max_lr, gamma = as_float(base_lr), as_float(max_lr), as_float(gamma)
    shape = _cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def rule(xp: Any, t: Any) -> Any:
        height, scale = shape(xp, t)
        return base_lr + (max_lr - base_lr) * height * scale

    return make_schedule(rule, base_lr, max_lr, gamma)


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
    base_momentum, max_momentum = as_float(base_momentum), as_float(max_momentum)
    gamma = as_float(gamma)
    shape = _cyclic(step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def rule(xp: Any, t: Any) -> Any:
        height, scale = shape(xp, t)
        return max_momentum - (max_momentum - base_momentum) * height * scale

    return make_schedule(rule, base_momentum, max_momentum, gamma)
