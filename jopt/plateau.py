"""Reduce the learning rate when a metric stops improving: torch's ``ReduceLROnPlateau``.

Two faces of one rule:

- :func:`plateau_step` is the pure rule, one torch ``scheduler.step(metric)``: state in, state
  out. It runs in NumPy float64 on host numbers (what ``jopt.optim.lr_scheduler`` uses) and in
  ``jax.numpy`` on arrays, inside ``jit`` and ``scan``, without Python branching on values. Its
  ``lr`` may be a vector (one rate per param group) with ``min_lr`` broadcasting against it.
- :func:`reduce_on_plateau` is a transformation placed after an optimizer built with learning
  rate ``lr``: ``update(updates, state, params, value=metric)`` steps the rule and rescales the
  updates by ``state.lr / lr``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt.core import GradientTransformationExtraArgs
from jopt.schedules.backend import is_host

__all__ = ["ReduceOnPlateauState", "plateau_step", "reduce_on_plateau"]


class ReduceOnPlateauState(NamedTuple):
    """State of the plateau rule, with torch's attribute names.

    ``lr``: the current learning rate(s); ``best``: the best metric so far; ``num_bad_epochs``:
    steps since it improved; ``cooldown_counter``: steps left before bad steps count again;
    ``last_epoch``: how many steps were taken.
    """

    lr: Any
    best: Any
    num_bad_epochs: Any
    cooldown_counter: Any
    last_epoch: Any


def check_plateau_args(mode: str, factor: Any, threshold_mode: str) -> None:
    """torch's ``ValueError`` for a bad ``factor``, ``mode`` or ``threshold_mode``."""
    if isinstance(factor, numbers.Real) and factor >= 1.0:
        raise ValueError("Factor should be < 1.0.")
    if mode not in {"min", "max"}:
        raise ValueError("mode " + str(mode) + " is unknown!")
    if threshold_mode not in {"rel", "abs"}:
        raise ValueError("threshold mode " + str(threshold_mode) + " is unknown!")


def mode_worse(mode: str) -> float:
    """The starting ``best``: ``inf`` in min mode, ``-inf`` in max mode."""
    return math.inf if mode == "min" else -math.inf


def is_better(a: Any, best: Any, mode: str, threshold: Any, threshold_mode: str) -> Any:
    """torch's improvement test: ``a < best * (1 - threshold)`` (min, rel), ``a < best -
    threshold`` (min, abs), ``a > best * (1 + threshold)`` (max, rel), ``a > best + threshold``
    (max, abs). With a negative ``best`` the relative test is torch's, literally."""
    if mode == "min" and threshold_mode == "rel":
        return a < best * (1.0 - threshold)
    if mode == "min":
        return a < best - threshold
    if threshold_mode == "rel":
        return a > best * (threshold + 1.0)
    return a > best + threshold


def plateau_counts(
    state: ReduceOnPlateauState,
    metric: Any,
    *,
    mode: str = "min",
    patience: Any = 10,
    threshold: Any = 1e-4,
    threshold_mode: str = "rel",
    xp: Any = np,
) -> tuple[Any, Any, Any, Any]:
    """The counting half of :func:`plateau_step`: ``(best, num_bad_epochs, cooldown_counter,
    reduce)`` after ``metric``, before a reduction resets them; ``reduce`` says whether the
    rate drops at this step (torch's ``num_bad_epochs > patience``)."""
    _, best, bad, cool, _ = (xp.asarray(x) for x in state)
    metric = xp.asarray(metric)
    better = is_better(metric, best, mode, threshold, threshold_mode)
    best = xp.where(better, metric, best)
    bad = xp.where(better, 0, bad + 1)
    in_cooldown = cool > 0
    cool = xp.where(in_cooldown, cool - 1, cool)
    bad = xp.where(in_cooldown, 0, bad)
    return best, bad, cool, bad > patience


def plateau_step(
    state: ReduceOnPlateauState,
    metric: Any,
    *,
    mode: str = "min",
    factor: Any = 0.1,
    patience: Any = 10,
    threshold: Any = 1e-4,
    threshold_mode: str = "rel",
    cooldown: Any = 0,
    min_lr: Any = 0.0,
    eps: Any = 1e-8,
) -> ReduceOnPlateauState:
    """One ``ReduceLROnPlateau.step(metric)``: the pure rule.

    An improvement (see :func:`is_better`) resets ``num_bad_epochs``, anything else adds one;
    during a cooldown bad steps do not count. When ``num_bad_epochs > patience`` the rate
    becomes ``max(lr * factor, min_lr)`` — applied only where it drops by more than ``eps`` —
    and a cooldown of ``cooldown`` steps begins.
    """
    check_plateau_args(mode, factor, threshold_mode)
    xp = np if all(is_host(x) for x in (*state, metric, factor, min_lr)) else jnp
    lr, _, _, _, epoch = (xp.asarray(x) for x in state)
    best, bad, cool, reduce = plateau_counts(
        state, metric, mode=mode, patience=patience, threshold=threshold,
        threshold_mode=threshold_mode, xp=xp,
    )
    new_lr = xp.maximum(lr * factor, min_lr)
    lr = xp.where(reduce & (lr - new_lr > eps), new_lr, lr)
    cool = xp.where(reduce, cooldown, cool)
    bad = xp.where(reduce, 0, bad)

    new = (lr, best, bad, cool, epoch + 1)
    # Keep each field's dtype, so the state is a fixed carry for jit and scan.
    old = tuple(xp.asarray(x) for x in state)
    return ReduceOnPlateauState(*(xp.asarray(n, dtype=o.dtype) for n, o in zip(new, old)))


def reduce_on_plateau(
    lr: float = 1.0,
    *,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> GradientTransformationExtraArgs:
    """torch's ``ReduceLROnPlateau`` as a transformation, after an optimizer built with ``lr``.

    ``jopt.chain(jopt.adam(lr=0.01), jopt.reduce_on_plateau(lr=0.01, patience=5))``. Each
    ``update(updates, state, params, value=metric)`` is one ``scheduler.step(metric)`` (see
    :func:`plateau_step`) followed by ``updates * state.lr / lr``: a metric measured at the
    current parameters sets the rate of the step taken from them, as torch's
    ``optimizer.step(); scheduler.step(metric)`` loop sets the rate of the next step.
    """
    check_plateau_args(mode, factor, threshold_mode)
    if isinstance(lr, numbers.Real) and lr <= 0:
        raise ValueError(f"Invalid learning rate: {lr}")
    rule = dict(
        mode=mode,
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_lr=min_lr,
        eps=eps,
    )

    def init(params: Any) -> ReduceOnPlateauState:
        del params
        dtype = jnp.result_type(float)
        return ReduceOnPlateauState(
            lr=jnp.asarray(lr, dtype),
            best=jnp.asarray(mode_worse(mode), dtype),
            num_bad_epochs=jnp.zeros([], jnp.int32),
            cooldown_counter=jnp.zeros([], jnp.int32),
            last_epoch=jnp.zeros([], jnp.int32),
        )

    def update(
        updates: Any,
        state: ReduceOnPlateauState,
        params: Any = None,
        *,
        value: Any = None,
        **extra: Any,
    ) -> tuple[Any, ReduceOnPlateauState]:
        del params, extra
        if value is None:
            raise ValueError("reduce_on_plateau needs the metric: update(..., value=metric).")
        state = plateau_step(state, jnp.asarray(value), **rule)
        scale = state.lr / lr
        return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates), state

    return GradientTransformationExtraArgs(init, update)
