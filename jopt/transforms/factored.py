"""Factored second moments: Adafactor's step, with a row and a column average for matrices."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import GradientTransformation, Schedule, check_tree_match
from jopt.transforms.common import _c, _increment, _lerp, _need_params, _scalar_dtype, _unzip

__all__ = ["ScaleByAdafactorState", "scale_by_adafactor"]


class ScaleByAdafactorState(NamedTuple):
    """torch's Adafactor state: ``step``; for a parameter of two or more dimensions the factors
    ``row_var`` (last axis reduced to 1) and ``col_var`` (next to last reduced to 1), for the
    others the full ``variance`` (``None`` where torch keeps no such entry)."""

    count: jax.Array
    row_var: Any
    col_var: Any
    variance: Any


def _mean_square(g: jax.Array, axis: int) -> jax.Array:
    """torch's ``norm(g, dim=axis, keepdim=True).square_().div_(g.size(axis))``."""
    return jnp.square(jnp.sqrt(jnp.sum(g * g, axis=axis, keepdims=True))) / g.shape[axis]


def _rms(x: jax.Array) -> jax.Array:
    """``||x||_2 / sqrt(x.size)``."""
    return jnp.sqrt(jnp.sum(x * x)) / math.sqrt(x.size)


def scale_by_adafactor(
    lr: float | jax.Array | Schedule = 1e-2,
    beta2_decay: float | jax.Array = -0.8,
    eps: tuple[float | jax.Array | None, float | jax.Array] = (None, 1e-3),
    d: float | jax.Array = 1.0,
) -> GradientTransformation:
    """torch's Adafactor step before its sign: the whole step size is in it; needs ``params``.

    At step ``t`` with ``w = t ** beta2_decay``: matrices (and the last two axes of arrays of
    more dimensions) keep ``R <- lerp(R, mean_cols(g^2), w)``, ``C <- lerp(C, mean_rows(g^2), w)``
    and estimate ``V = R C / max(mean(R), eps1)``; the others ``V <- lerp(V, g^2, w)``. With
    ``u = g / sqrt(max(V, eps1^2))`` the update is
    ``max(eps2, rms(p)) * min(lr, 1 / sqrt(t)) / max(1, rms(u) / d) * u``. ``eps1=None`` is the
    machine epsilon of the parameter's dtype, as in torch.
    """
    eps1, eps2 = eps

    def init(params: Any) -> ScaleByAdafactorState:
        def factor(p: jax.Array, axis: int) -> jax.Array | None:
            return (
                jnp.zeros_like(p, shape=p.shape[:axis] + (1,) + p.shape[axis + 1 :])
                if p.ndim > 1
                else None
            )

        return ScaleByAdafactorState(
            jnp.zeros([], jnp.int32),
            jax.tree.map(lambda p: factor(p, p.ndim - 1), params),
            jax.tree.map(lambda p: factor(p, p.ndim - 2), params),
            jax.tree.map(lambda p: None if p.ndim > 1 else jnp.zeros_like(p), params),
        )

    def update(
        updates: Any, state: ScaleByAdafactorState, params: Any = None
    ) -> tuple[Any, ScaleByAdafactorState]:
        params = _need_params(params, "scale_by_adafactor")
        check_tree_match(updates, params)
        count = _increment(state.count)
        step = count.astype(_scalar_dtype())
        weight = step**beta2_decay
        rate = lr(state.count) if callable(lr) else lr
        rho = jnp.minimum(rate, 1 / jnp.sqrt(step))

        def leaf(g: jax.Array, p: jax.Array, row: Any, col: Any, var: Any) -> tuple[Any, ...]:
            tiny = jnp.finfo(p.dtype).eps if eps1 is None else eps1
            w = _c(weight, g)
            if g.ndim > 1:
                row = _lerp(row, _mean_square(g, -1), w).astype(row.dtype)
                col = _lerp(col, _mean_square(g, -2), w).astype(col.dtype)
                floor = jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), _c(tiny, row))
                estimate = row * col / floor
            else:
                var = _lerp(var, g * g, w).astype(var.dtype)
                estimate = var
            u = jax.lax.rsqrt(jnp.maximum(estimate, _c(tiny, g) * _c(tiny, g))) * g
            alpha = jnp.maximum(_c(eps2, p), _rms(p)) * _c(rho, p)
            denom = jnp.maximum(1, _rms(u) / _c(d, u))
            return (u * (alpha / denom)).astype(g.dtype), row, col, var

        out, row, col, var = _unzip(
            jax.tree.map(leaf, updates, params, state.row_var, state.col_var, state.variance),
            updates,
        )
        return out, ScaleByAdafactorState(count, row, col, var)

    return GradientTransformation(init, update)
