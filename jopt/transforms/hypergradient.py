"""Hypergradient descent (Baydin et al., ICLR 2018): the learning rate as state, descended by
its own gradient, one step late.

With ``d_t`` the direction a rule takes from the gradient ``g_t`` (``g`` for SGD, the momentum
buffer or Nesterov's ``g + mu buf`` for SGDN, Adam's ``m_hat / (sqrt(v_hat) + eps)``), a step
is ``theta_t = theta_{t-1} - alpha_t d_t``. The loss at the next point depends on the rate
just used through ``d f(theta_t) / d alpha_t = g_{t+1} . (-d_t)``, known one step later for
the price of a dot product, so

    h_t     = g_t . d_{t-1}                     (0 on the first step)
    alpha_t = alpha_{t-1} + beta h_t            (= alpha_{t-1} - beta df(theta_{t-1})/dalpha_{t-1})
    theta_t = theta_{t-1} - alpha_t d_t

with ``beta`` the hypergradient learning rate (``hypergrad_lr``) and ``alpha_0`` the ``lr`` the
rule is given at its first step. The dot product runs over all leaves: one learning rate for
the whole tree, as the paper's algorithms and its authors' torch code (``SGDHD``) have it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jopt.core import GradientTransformation, check_tree_match
from jopt.transforms.common import _c, _scalar_dtype, _zeros_like

__all__ = ["ScaleByHypergradientState", "scale_by_hypergradient"]


class ScaleByHypergradientState(NamedTuple):
    """The steps taken (``count``), the learning rate now (``alpha``, after the latest step's
    hypergradient update; the ``lr`` given at ``init`` before the first step), the previous
    step's direction ``d_{t-1}`` (zeros before the first step) and the direction's state."""

    count: jax.Array
    lr: jax.Array
    prev_direction: Any
    inner_state: Any


def _dot(a: Any, b: Any, dtype: Any) -> jax.Array:
    """``sum(a * b)`` over all leaves, accumulated at ``dtype`` or better."""
    def wide(x: jax.Array) -> jax.Array:
        return x.astype(jnp.promote_types(x.dtype, dtype))

    terms = [jnp.sum(wide(x) * wide(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return sum(terms, jnp.zeros([], dtype)).astype(dtype)


def scale_by_hypergradient(
    direction: GradientTransformation,
    lr: float | jax.Array = 1e-3,
    hypergrad_lr: float | jax.Array = 1e-6,
) -> GradientTransformation:
    """Hypergradient descent on the learning rate of ``direction``, and the step ``-alpha_t d_t``.

    ``h_t = g_t . d_{t-1}``, ``alpha_t = alpha_{t-1} + hypergrad_lr * h_t``, ``d_t =
    direction(g_t)``, update ``-alpha_t * d_t``. ``alpha_0`` is the ``lr`` the rule is given at
    its first step (the authors' ``SGDHD`` keeps the rate in the param group and starts from the
    group's lr as it is then): under ``jopt.inject_hyperparams``, an ``lr`` assigned to
    ``state.hyperparams`` before the first step (a sweep's rate per run) is the rate the rule
    starts from. From then on the rate is state, ``state.lr`` (the rate now, which may be
    assigned), and a later injected ``lr`` is not read; ``state.count`` counts the steps.
    ``h_t`` is the derivative of the loss at ``theta_{t-1}`` with respect to the rate of the
    step that led there, with the sign flipped: ``-d f(theta_{t-1}) / d alpha_{t-1}``.
    ``direction`` is a rule before ``-lr`` (``jopt.identity()``, ``jopt.trace(...)``,
    ``scale_by_adam(...)``), and ``g_t`` the updates this transformation receives (after weight
    decay, if it comes first).
    The rate is kept in torch's scalar precision (float64 with jax's x64, else float32).
    Baydin et al.'s ``SGDHD``/``AdamHD`` (torch code, ``hypergrad_lr``).
    """

    def init(params: Any) -> ScaleByHypergradientState:
        return ScaleByHypergradientState(
            jnp.zeros([], jnp.int32), jnp.asarray(lr, _scalar_dtype()), _zeros_like(params),
            direction.init(params),
        )

    def update(
        updates: Any, state: ScaleByHypergradientState, params: Any = None
    ) -> tuple[Any, ScaleByHypergradientState]:
        check_tree_match(updates, state.prev_direction, against="previous directions")
        # alpha_{t-1}: the lr given, before the first step; the rate held, after it.
        previous = jnp.where(state.count == 0, jnp.asarray(lr).astype(state.lr.dtype), state.lr)
        rate = previous + _c(hypergrad_lr, state.lr) * _dot(
            updates, state.prev_direction, state.lr.dtype
        )
        d, inner_state = direction.update(updates, state.inner_state, params)
        out = jax.tree.map(lambda u: (-_c(rate, u) * u).astype(u.dtype), d)
        prev = jax.tree.map(lambda u, old: u.astype(old.dtype), d, state.prev_direction)
        count = optax.safe_increment(state.count)
        return out, ScaleByHypergradientState(count, rate, prev, inner_state)

    return GradientTransformation(init, update)
