"""Sparsity schedules for gradual pruning: ``step -> fraction of weights pruned``."""

from __future__ import annotations

import numbers
from typing import Any

from jopt.core import Schedule
from jopt.schedules.backend import Scalar, as_float, check, make_schedule

__all__ = ["polynomial_sparsity"]


def polynomial_sparsity(
    final_sparsity: Scalar,
    num_updates: int,
    frequency: int = 1,
    begin_step: int = 0,
    initial_sparsity: Scalar = 0.0,
    power: Scalar = 3,
) -> Schedule:
    """Zhu & Gupta's gradual pruning (2017): from ``s_i`` to ``s_f`` over ``n`` mask updates
    ``frequency`` (``Δt``) steps apart, starting at ``begin_step`` (``t0``)::

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt)) ** power      (power 3 in the paper)

    with ``t`` clipped to ``[t0, t0 + n Δt]``: ``s_i`` before, ``s_f`` after. Fast pruning
    early, while the network is redundant, then slower. torch has no counterpart (its
    ``prune`` module prunes once per call); ``jopt.gradual_pruning`` applies this schedule.
    """
    for name, value in (("initial_sparsity", initial_sparsity),
                        ("final_sparsity", final_sparsity)):
        check(value, lambda v: 0.0 <= v <= 1.0,
              f"{name} should be a float in the range [0, 1], got {value}")
    if not isinstance(num_updates, numbers.Integral) or num_updates < 1:
        raise ValueError(f"num_updates should be a positive integer, got {num_updates}")
    if not isinstance(frequency, numbers.Integral) or frequency < 1:
        raise ValueError(f"frequency should be a positive integer, got {frequency}")
    s_i, s_f, power = as_float(initial_sparsity), as_float(final_sparsity), as_float(power)
    span = int(num_updates) * int(frequency)

    def rule(xp: Any, t: Any) -> Any:
        done = xp.clip(t - begin_step, 0, span)
        return s_f + (s_i - s_f) * ((span - done) / span) ** power

    return make_schedule(rule, s_i, s_f, power)
