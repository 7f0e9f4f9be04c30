"""Weight averaging: SWA's equal-weight running mean and the exponential moving average (EMA).

The rules of ``torch.optim.swa_utils`` as pure functions of arrays, for use inside a jitted
train step, and the one place :class:`jopt.optim.swa_utils.AveragedModel` takes its arithmetic
from. A :class:`WeightAveraging` is ``init(params) -> state`` and
``update(params, state) -> state``; ``state.params`` is the average and ``state.n_averaged``
the number of models averaged so far (an int32 array, so the step never recompiles).

As in torch's ``AveragedModel``, the first update *copies* the parameters and later ones
apply the rule; under ``jit`` the choice is a ``jnp.where`` on ``n_averaged``. ``init`` only
makes the state (a copy of ``params``, ``n_averaged = 0``), as torch's constructor deep-copies
the model.

The rule functions keep torch's signatures: ``avg_fn(averaged, current, n_averaged) -> new``
on one array, ``multi_avg_fn(averaged_list, current_list, n_averaged) -> new_list`` on the
arrays of one dtype. torch's ``multi_avg_fn`` writes in place and returns ``None``; JAX arrays
are immutable, so jopt's returns the new list.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import check_tree_match, is_concrete
from jopt.transforms.common import _lerp, _one_minus

__all__ = [
    "AvgFn",
    "MultiAvgFn",
    "WeightAverageState",
    "WeightAveraging",
    "average_leaves",
    "ema",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "swa",
    "weight_average",
]

AvgFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""``avg_fn(averaged, current, n_averaged) -> new average`` of one array."""

MultiAvgFn = Callable[[Sequence[jax.Array], Sequence[jax.Array], jax.Array], list[jax.Array]]
"""``multi_avg_fn(averaged_list, current_list, n_averaged) -> new averages``, one dtype."""


def _is_float(x: jax.Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def _check_decay(decay: Any) -> None:
    if is_concrete(decay) and isinstance(decay, numbers.Real) and (decay < 0.0 or decay > 1.0):
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range."
        )


# --------------------------------------------------------------------------------------------
# torch's rule functions
# --------------------------------------------------------------------------------------------


def get_swa_avg_fn() -> AvgFn:
    """torch's ``get_swa_avg_fn``: ``averaged + (current - averaged) / (n_averaged + 1)``,
    the running mean of the models seen (what torch's ``AveragedModel`` uses on CPU)."""

    def swa_update(averaged: jax.Array, current: jax.Array, n_averaged: Any) -> jax.Array:
        return averaged + (current - averaged) / (n_averaged + 1)

    return swa_update


def get_ema_avg_fn(decay: float | jax.Array = 0.999) -> AvgFn:
    """torch's ``get_ema_avg_fn``: ``decay * averaged + (1 - decay) * current``."""
    _check_decay(decay)
    keep = _one_minus(decay)

    def ema_update(averaged: jax.Array, current: jax.Array, n_averaged: Any) -> jax.Array:
        return decay * averaged + keep * current

    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    """torch's ``get_swa_multi_avg_fn``: ``lerp(averaged, current, 1 / (n_averaged + 1))`` on
    floating arrays (torch's ``_foreach_lerp_``, the path it takes on GPU), the running mean
    ``averaged + (current - averaged) / (n_averaged + 1)`` on integer ones."""

    def swa_update(
        averaged: Sequence[jax.Array], current: Sequence[jax.Array], n_averaged: Any
    ) -> list[jax.Array]:
        out = []
        for a, c in zip(averaged, current):
            if _is_float(a):
                weight = 1 / (jnp.asarray(n_averaged) + 1)
                out.append(_lerp(a, c, weight).astype(a.dtype))
            else:
                out.append(a + (c - a) / (n_averaged + 1))
        return out

    return swa_update


def get_ema_multi_avg_fn(decay: float | jax.Array = 0.999) -> MultiAvgFn:
    """torch's ``get_ema_multi_avg_fn``: ``lerp(averaged, current, 1 - decay)`` on floating
    arrays (torch's ``_foreach_lerp_``), ``averaged * decay + current * (1 - decay)`` on
    integer ones."""
    _check_decay(decay)
    weight = _one_minus(decay)

    def ema_update(
        averaged: Sequence[jax.Array], current: Sequence[jax.Array], n_averaged: Any
    ) -> list[jax.Array]:
        return [
            _lerp(a, c, weight) if _is_float(a) else a * decay + c * weight
            for a, c in zip(averaged, current)
        ]

    return ema_update


# --------------------------------------------------------------------------------------------
# The functional averager
# --------------------------------------------------------------------------------------------


class WeightAverageState(NamedTuple):
    """The average of the parameters (``params``, their tree) and how many models it holds."""

    params: Any
    n_averaged: jax.Array


class WeightAveraging(NamedTuple):
    """``init(params) -> state``; ``update(params, state) -> state``, pure and jittable."""

    init: Callable[[Any], WeightAverageState]
    update: Callable[[Any, WeightAverageState], WeightAverageState]


def average_leaves(
    averaged: list[jax.Array],
    current: list[jax.Array],
    n_averaged: jax.Array,
    avg_fn: AvgFn | None = None,
    multi_avg_fn: MultiAvgFn | None = None,
) -> list[jax.Array]:
    """One update of torch's ``AveragedModel`` on lists of arrays: ``current`` where
    ``n_averaged == 0``, else the rule, each result in its average's dtype.

    ``multi_avg_fn`` sees the arrays grouped by dtype, as torch groups them by device and
    dtype; with neither function the rule is :func:`get_swa_avg_fn`'s running mean.
    """
    if avg_fn is not None and multi_avg_fn is not None:
        raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
    if multi_avg_fn is not None:
        rule: list[Any] = [None] * len(averaged)
        groups: dict[Any, list[int]] = {}
        for i, a in enumerate(averaged):
            groups.setdefault(jnp.dtype(a.dtype), []).append(i)
        for indices in groups.values():
            new = multi_avg_fn(
                [averaged[i] for i in indices], [current[i] for i in indices], n_averaged
            )
            for i, value in zip(indices, new):
                rule[i] = value
    else:
        fn = avg_fn if avg_fn is not None else get_swa_avg_fn()
        rule = [fn(a, c, n_averaged) for a, c in zip(averaged, current)]
    first = n_averaged == 0
    return [
        jnp.where(first, c, r).astype(a.dtype) for a, c, r in zip(averaged, current, rule)
    ]


def weight_average(
    avg_fn: AvgFn | None = None, multi_avg_fn: MultiAvgFn | None = None
) -> WeightAveraging:
    """The running average of ``AveragedModel(model, avg_fn=..., multi_avg_fn=...)``.

    ``update(params, state)`` copies ``params`` at the first call (``n_averaged == 0``) and
    afterwards applies ``avg_fn`` to each leaf or ``multi_avg_fn`` to the leaves of each dtype;
    with neither, the equal-weight SWA mean :func:`get_swa_avg_fn`. The average keeps the
    dtype of each leaf. torch: ``AveragedModel(...).update_parameters(model)``.
    """
    if avg_fn is not None and multi_avg_fn is not None:
        raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")

    def init(params: Any) -> WeightAverageState:
        return WeightAverageState(jax.tree.map(jnp.copy, params), jnp.zeros([], jnp.int32))

    def update(params: Any, state: WeightAverageState) -> WeightAverageState:
        check_tree_match(params, state.params, what="parameters", against="averaged parameters")
        leaves, treedef = jax.tree.flatten(state.params)
        current = treedef.flatten_up_to(params)
        new = average_leaves(leaves, current, state.n_averaged, avg_fn, multi_avg_fn)
        return WeightAverageState(treedef.unflatten(new), state.n_averaged + 1)

    return WeightAveraging(init, update)


def swa() -> WeightAveraging:
    """Stochastic weight averaging: after ``k`` updates ``state.params`` is the mean of the ``k``
    parameter trees given, ``avg + (p - avg) / (n + 1)``. torch: ``AveragedModel(model)``."""
    return weight_average()


def ema(decay: float | jax.Array = 0.999) -> WeightAveraging:
    """Exponential moving average: the first update copies, later ones
    ``avg <- lerp(avg, p, 1 - decay)``, i.e. ``decay * avg + (1 - decay) * p``. torch:
    ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``. ``decay`` may be an
    array (data under ``jit``)."""
    return weight_average(multi_avg_fn=get_ema_multi_avg_fn(decay))
