"""The Adam family: Adam, Adamax, NAdam, RAdam and SparseAdam's directions, before ``-lr``.

All share Adam's moments, ``m <- lerp(m, g, 1 - b1)`` and ``v <- b2 * v + (1 - b2) * g^2``
(:func:`_moments`; the second is RMSprop's average of squares), and differ in how they turn
them into a step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import GradientTransformation, check_tree_match
from jopt.transforms.common import (
    _average_square,
    _bias_correction,
    _c,
    _increment,
    _one_minus,
    _scalar_dtype,
    _unzip,
    _zeros_like,
)

__all__ = [
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByNadamState",
    "ScaleByRadamState",
    "ScaleBySparseAdamState",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_sparse_adam",
]

Betas = tuple[float | jax.Array, float | jax.Array]


def _first_moment(g: jax.Array, m: jax.Array, b1: Any) -> jax.Array:
    """``m <- lerp(m, g, 1 - b1)`` (torch's ``exp_avg.lerp_(grad, 1 - beta1)``)."""
    return (m + _c(_one_minus(b1), g) * (g - m)).astype(m.dtype)


def _moments(updates: Any, exp_avg: Any, exp_avg_sq: Any, b1: Any, b2: Any) -> tuple[Any, Any]:
    """Adam's two moments over a tree, as a pair of trees."""

    def leaf(g: jax.Array, m: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _first_moment(g, m, b1), _average_square(g, v, b2)

    return _unzip(jax.tree.map(leaf, updates, exp_avg, exp_avg_sq), updates)


def _step(count: jax.Array) -> jax.Array:
    """The step count as torch's scalar (a float, at the hyperparameters' precision)."""
    return count.astype(_scalar_dtype())


class ScaleByAdamState(NamedTuple):
    """torch's Adam state: ``step`` and the moments, named as in ``torch.optim.Adam``."""

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any
    max_exp_avg_sq: Any  # None unless amsgrad


def scale_by_adam(
    betas: Betas = (0.9, 0.999),
    eps: float | jax.Array = 1e-8,
    amsgrad: bool = False,
) -> GradientTransformation:
    """torch's Adam direction, before ``-lr``.

    ``m <- lerp(m, g, 1 - b1)``, ``v <- b2 * v + (1 - b2) * g^2``; with ``amsgrad``
    ``vmax <- max(vmax, v)`` and ``v`` below reads ``vmax``. The update is
    ``(m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)`` (eps outside the sqrt, after the
    bias correction of ``v``, as in torch). Differentiated, AMSGrad's max follows the larger of
    ``vmax`` and ``v`` (JAX gives each half on an exact tie).
    """
    b1, b2 = betas

    def init(params: Any) -> ScaleByAdamState:
        return ScaleByAdamState(
            jnp.zeros([], jnp.int32),
            _zeros_like(params),
            _zeros_like(params),
            _zeros_like(params) if amsgrad else None,
        )

    def update(
        updates: Any, state: ScaleByAdamState, params: Any = None
    ) -> tuple[Any, ScaleByAdamState]:
        del params
        check_tree_match(updates, state.exp_avg, against="Adam moments")
        count = _increment(state.count)
        # Scalars at the hyperparameters' precision (torch: Python doubles).
        step = count.astype(_scalar_dtype())
        bias1 = _bias_correction(b1, step)
        bias2_sqrt = jnp.sqrt(_bias_correction(b2, step))

        m, v = _moments(updates, state.exp_avg, state.exp_avg_sq, b1, b2)
        vmax = jax.tree.map(jnp.maximum, state.max_exp_avg_sq, v) if amsgrad else None

        def direction(m: jax.Array, v: jax.Array) -> jax.Array:
            denom = jnp.sqrt(v) / _c(bias2_sqrt, v) + _c(eps, v)
            return ((m / _c(bias1, m)) / denom).astype(m.dtype)

        out = jax.tree.map(direction, m, vmax if amsgrad else v)
        return out, ScaleByAdamState(count, m, v, vmax)

    return GradientTransformation(init, update)


class ScaleByAdamaxState(NamedTuple):
    """torch's Adamax state: ``step``, ``exp_avg`` and the infinity norm ``exp_inf``."""

    count: jax.Array
    exp_avg: Any
    exp_inf: Any


def scale_by_adamax(
    betas: Betas = (0.9, 0.999), eps: float | jax.Array = 1e-8
) -> GradientTransformation:
    """torch's Adamax direction, before ``-lr``.

    ``m <- lerp(m, g, 1 - b1)``, ``u <- max(b2 * u, |g| + eps)``; the update is
    ``m / u / (1 - b1^t)`` (torch's ``clr = lr / bias_correction``).
    """
    b1, b2 = betas

    def init(params: Any) -> ScaleByAdamaxState:
        return ScaleByAdamaxState(
            jnp.zeros([], jnp.int32), _zeros_like(params), _zeros_like(params)
        )

    def update(
        updates: Any, state: ScaleByAdamaxState, params: Any = None
    ) -> tuple[Any, ScaleByAdamaxState]:
        del params
        check_tree_match(updates, state.exp_avg, against="Adamax moments")
        count = _increment(state.count)
        bias1 = _bias_correction(b1, _step(count))
        m = jax.tree.map(lambda g, m: _first_moment(g, m, b1), updates, state.exp_avg)
        inf = jax.tree.map(
            lambda g, u: jnp.maximum(u * _c(b2, g), jnp.abs(g) + _c(eps, g)).astype(u.dtype),
            updates,
            state.exp_inf,
        )
        out = jax.tree.map(lambda m, u: (m / u / _c(bias1, m)).astype(m.dtype), m, inf)
        return out, ScaleByAdamaxState(count, m, inf)

    return GradientTransformation(init, update)


class ScaleByNadamState(NamedTuple):
    """torch's NAdam state: ``step``, the moments and the product of the momentum schedule
    ``mu_product`` (one scalar: torch keeps the same value for every parameter)."""

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any
    mu_product: jax.Array


def _nadam_mu(b1: Any, momentum_decay: Any, step: jax.Array) -> jax.Array:
    """NAdam's momentum schedule ``b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``."""
    return b1 * (1.0 - 0.5 * jnp.exp(step * momentum_decay * math.log(0.96)))


def scale_by_nadam(
    betas: Betas = (0.9, 0.999),
    eps: float | jax.Array = 1e-8,
    momentum_decay: float | jax.Array = 4e-3,
) -> GradientTransformation:
    """torch's NAdam direction, before ``-lr``.

    With ``mu_t = b1 * (1 - 0.5 * 0.96^(t * momentum_decay))`` and ``P_t = mu_1 ... mu_t``,
    ``d = sqrt(v / (1 - b2^t)) + eps`` and Adam's moments, the update is
    ``(1 - mu_t) / (1 - P_t) * g / d + mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d``.
    """
    b1, b2 = betas

    def init(params: Any) -> ScaleByNadamState:
        return ScaleByNadamState(
            jnp.zeros([], jnp.int32),
            _zeros_like(params),
            _zeros_like(params),
            jnp.ones([], _scalar_dtype()),
        )

    def update(
        updates: Any, state: ScaleByNadamState, params: Any = None
    ) -> tuple[Any, ScaleByNadamState]:
        del params
        check_tree_match(updates, state.exp_avg, against="NAdam moments")
        count = _increment(state.count)
        step = _step(count)
        bias2 = _bias_correction(b2, step)
        mu = _nadam_mu(b1, momentum_decay, step)
        mu_next = _nadam_mu(b1, momentum_decay, step + 1)
        # torch multiplies its stored scalar (of torch's scalar dtype) and reads it back.
        mu_product = (state.mu_product * mu).astype(state.mu_product.dtype)
        coef_g = (1.0 - mu) / (1.0 - mu_product)
        coef_m = mu_next / (1.0 - mu_product * mu_next)
        m, v = _moments(updates, state.exp_avg, state.exp_avg_sq, b1, b2)

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            denom = jnp.sqrt(v / _c(bias2, v)) + _c(eps, v)
            return (g / denom * _c(coef_g, g) + m / denom * _c(coef_m, m)).astype(g.dtype)

        out = jax.tree.map(direction, updates, m, v)
        return out, ScaleByNadamState(count, m, v, mu_product)

    return GradientTransformation(init, update)


class ScaleByRadamState(NamedTuple):
    """torch's RAdam state: ``step``, ``exp_avg`` and ``exp_avg_sq``."""

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any


def scale_by_radam(
    betas: Betas = (0.9, 0.999), eps: float | jax.Array = 1e-8
) -> GradientTransformation:
    """torch's RAdam direction, before ``-lr``.

    With Adam's moments, ``rho_inf = 2 / (1 - b2) - 1`` and
    ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``: while ``rho_t <= 5`` the update is the
    bias-corrected momentum ``m / (1 - b1^t)``; after, it is that times the adaptive rate
    ``sqrt(1 - b2^t) / (sqrt(v) + eps)`` and the rectification
    ``sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``.
    """
    b1, b2 = betas

    def init(params: Any) -> ScaleByRadamState:
        return ScaleByRadamState(jnp.zeros([], jnp.int32), _zeros_like(params), _zeros_like(params))

    def update(
        updates: Any, state: ScaleByRadamState, params: Any = None
    ) -> tuple[Any, ScaleByRadamState]:
        del params
        check_tree_match(updates, state.exp_avg, against="RAdam moments")
        count = _increment(state.count)
        step = _step(count)
        bias1 = _bias_correction(b1, step)
        bias2 = _bias_correction(b2, step)
        rho_inf = 2 / _one_minus(b2) - 1
        rho_t = rho_inf - 2 * step * (1 - bias2) / bias2
        rectified = rho_t > 5.0
        ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        rect = jnp.sqrt(jnp.where(rectified, ratio, 1.0))  # no NaN on the branch not taken
        bias2_sqrt = jnp.sqrt(bias2)
        m, v = _moments(updates, state.exp_avg, state.exp_avg_sq, b1, b2)

        def direction(m: jax.Array, v: jax.Array) -> jax.Array:
            m_hat = m / _c(bias1, m)
            adaptive = _c(bias2_sqrt, v) / (jnp.sqrt(v) + _c(eps, v))
            return jnp.where(rectified, m_hat * adaptive * _c(rect, m), m_hat).astype(m.dtype)

        out = jax.tree.map(direction, m, v)
        return out, ScaleByRadamState(count, m, v)

    return GradientTransformation(init, update)


class ScaleBySparseAdamState(NamedTuple):
    """torch's SparseAdam state: ``step``, ``exp_avg`` and ``exp_avg_sq``."""

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any


def scale_by_sparse_adam(
    betas: Betas = (0.9, 0.999), eps: float | jax.Array = 1e-8
) -> GradientTransformation:
    """torch's SparseAdam direction, before ``-lr``, on a dense gradient.

    Lazy Adam: only the entries where ``g != 0`` (the entries of torch's sparse gradient)
    update their moments and move, by ``m / (sqrt(v) + eps) * sqrt(1 - b2^t) / (1 - b1^t)``
    (torch's ``step_size = lr * sqrt(bias_correction2) / bias_correction1``); the others keep
    their moments and get a zero update. ``t`` counts every step, as torch's ``step``.
    """
    b1, b2 = betas

    def init(params: Any) -> ScaleBySparseAdamState:
        return ScaleBySparseAdamState(
            jnp.zeros([], jnp.int32), _zeros_like(params), _zeros_like(params)
        )

    def update(
        updates: Any, state: ScaleBySparseAdamState, params: Any = None
    ) -> tuple[Any, ScaleBySparseAdamState]:
        del params
        check_tree_match(updates, state.exp_avg, against="SparseAdam moments")
        count = _increment(state.count)
        step = _step(count)
        step_size = jnp.sqrt(_bias_correction(b2, step)) / _bias_correction(b1, step)

        def leaf(g: jax.Array, m: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
            present = g != 0
            new_m = jnp.where(present, _first_moment(g, m, b1), m)
            new_v = jnp.where(present, _average_square(g, v, b2), v)
            step = new_m / (jnp.sqrt(new_v) + _c(eps, new_v)) * _c(step_size, g)
            return jnp.where(present, step, 0).astype(g.dtype), new_m, new_v

        out, m, v = _unzip(jax.tree.map(leaf, updates, state.exp_avg, state.exp_avg_sq), updates)
        return out, ScaleBySparseAdamState(count, m, v)

    return GradientTransformation(init, update)
