"""Gradual magnitude pruning as a recipe: the pruning transformation of
:mod:`jopt.transforms.pruning` driven by the polynomial sparsity schedule of
:mod:`jopt.schedules.sparsity` (Zhu & Gupta, 2017)."""

from __future__ import annotations

from jopt.core import GradientTransformation
from jopt.schedules.sparsity import polynomial_sparsity
from jopt.transforms.pruning import Mask, magnitude_pruning

__all__ = ["gradual_pruning"]


def gradual_pruning(
    final_sparsity: float,
    num_updates: int,
    frequency: int = 1,
    begin_step: int = 0,
    initial_sparsity: float = 0.0,
    power: float = 3,
    scope: str = "global",
    where: Mask | None = None,
) -> GradientTransformation:
    """Zhu & Gupta's automated gradual pruning: :func:`magnitude_pruning` at
    ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3`` (:func:`jopt.schedules.
    polynomial_sparsity`), the mask recomputed at ``t0, t0 + Δt, ..., t0 + n Δt`` and held
    after. ``n = num_updates``, ``Δt = frequency``, ``t0 = begin_step``."""
    schedule = polynomial_sparsity(final_sparsity, num_updates, frequency, begin_step,
                                   initial_sparsity, power)
    return magnitude_pruning(schedule, frequency, begin_step,
                             begin_step + num_updates * frequency, scope, where)
