"""Running averages of squared gradients: RMSprop, Adagrad and Adadelta's directions, before
``-lr``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import GradientTransformation, check_tree_match
from jopt.transforms.common import (
    _average_square,
    _c,
    _increment,
    _one_minus,
    _scalar_dtype,
    _unzip,
    _zeros_like,
)

__all__ = [
    "ScaleByAdadeltaState",
    "ScaleByAdagradState",
    "ScaleByRmsState",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_rms",
]


class ScaleByRmsState(NamedTuple):
    """torch's RMSprop state: ``step``, ``square_avg`` and (centered) ``grad_avg``."""

    count: jax.Array
    square_avg: Any
    grad_avg: Any  # None unless centered


def scale_by_rms(
    alpha: float | jax.Array = 0.99, eps: float | jax.Array = 1e-8, centered: bool = False
) -> GradientTransformation:
    """torch's RMSprop direction, before momentum and ``-lr``.

    ``s <- alpha * s + (1 - alpha) * g^2``; centered: ``a <- lerp(a, g, 1 - alpha)`` and
    ``s`` below reads ``s - a^2``. The update is ``g / (sqrt(s) + eps)``: eps outside the
    sqrt, as optax's ``scale_by_rms(..., eps_in_sqrt=False)`` (its default is inside).
    """

    def init(params: Any) -> ScaleByRmsState:
        return ScaleByRmsState(
            jnp.zeros([], jnp.int32),
            _zeros_like(params),
            _zeros_like(params) if centered else None,
        )

    def update(
        updates: Any, state: ScaleByRmsState, params: Any = None
    ) -> tuple[Any, ScaleByRmsState]:
        del params
        check_tree_match(updates, state.square_avg, against="RMSprop averages")

        def mean(g: jax.Array, a: jax.Array) -> jax.Array:
            return (a + _c(_one_minus(alpha), g) * (g - a)).astype(a.dtype)

        sq = jax.tree.map(lambda g, s: _average_square(g, s, alpha), updates, state.square_avg)
        if centered:
            ga = jax.tree.map(mean, updates, state.grad_avg)
            var = jax.tree.map(lambda s, a: (s - a * a).astype(s.dtype), sq, ga)
        else:
            ga, var = None, sq
        out = jax.tree.map(
            lambda g, s: (g / (jnp.sqrt(s) + _c(eps, s))).astype(g.dtype), updates, var
        )
        return out, ScaleByRmsState(_increment(state.count), sq, ga)

    return GradientTransformation(init, update)


class ScaleByAdagradState(NamedTuple):
    """torch's Adagrad state: ``step`` and the accumulator ``sum``."""

    count: jax.Array
    sum: Any


def scale_by_adagrad(
    lr_decay: float | jax.Array = 0.0,
    initial_accumulator_value: float | jax.Array = 0.0,
    eps: float | jax.Array = 1e-10,
) -> GradientTransformation:
    """torch's Adagrad direction, before ``-lr``.

    ``sum <- sum + g^2``; the update is ``g / (sqrt(sum) + eps) / (1 + (t - 1) * lr_decay)``
    (torch's ``clr = lr / (1 + (step - 1) * lr_decay)``).
    """

    def init(params: Any) -> ScaleByAdagradState:
        return ScaleByAdagradState(
            jnp.zeros([], jnp.int32),
            jax.tree.map(
                lambda p: jnp.full_like(p, jnp.asarray(initial_accumulator_value)), params
            ),
        )

    def update(
        updates: Any, state: ScaleByAdagradState, params: Any = None
    ) -> tuple[Any, ScaleByAdagradState]:
        del params
        check_tree_match(updates, state.sum, against="Adagrad sums")
        count = _increment(state.count)
        decay = 1 + (count - 1).astype(_scalar_dtype()) * jnp.asarray(lr_decay)
        sums = jax.tree.map(lambda g, s: (s + g * g).astype(s.dtype), updates, state.sum)
        out = jax.tree.map(
            lambda g, s: (g / (jnp.sqrt(s) + _c(eps, s)) / _c(decay, g)).astype(g.dtype),
            updates,
            sums,
        )
        return out, ScaleByAdagradState(count, sums)

    return GradientTransformation(init, update)


class ScaleByAdadeltaState(NamedTuple):
    """torch's Adadelta state: ``step``, ``square_avg`` and ``acc_delta``."""

    count: jax.Array
    square_avg: Any
    acc_delta: Any


def scale_by_adadelta(
    rho: float | jax.Array = 0.9, eps: float | jax.Array = 1e-6
) -> GradientTransformation:
    """torch's Adadelta direction, before ``-lr``.

    ``s <- rho * s + (1 - rho) * g^2``; the update is
    ``d = sqrt(acc + eps) / sqrt(s + eps) * g``, then ``acc <- rho * acc + (1 - rho) * d^2``.
    """

    def init(params: Any) -> ScaleByAdadeltaState:
        return ScaleByAdadeltaState(
            jnp.zeros([], jnp.int32), _zeros_like(params), _zeros_like(params)
        )

    def update(
        updates: Any, state: ScaleByAdadeltaState, params: Any = None
    ) -> tuple[Any, ScaleByAdadeltaState]:
        del params
        check_tree_match(updates, state.square_avg, against="Adadelta averages")

        def leaf(g: jax.Array, s: jax.Array, acc: jax.Array) -> tuple[jax.Array, ...]:
            s = _average_square(g, s, rho)
            std = jnp.sqrt(s + _c(eps, s))
            delta = (jnp.sqrt(acc + _c(eps, acc)) / std * g).astype(g.dtype)
            return delta, s, _average_square(delta, acc, rho)

        out, sq, acc = _unzip(
            jax.tree.map(leaf, updates, state.square_avg, state.acc_delta), updates
        )
        return out, ScaleByAdadeltaState(_increment(state.count), sq, acc)

    return GradientTransformation(init, update)
