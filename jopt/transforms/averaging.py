"""Averaged SGD: ASGD's decayed step and the running average ``ax`` of the iterates."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import GradientTransformation, Schedule, check_tree_match
from jopt.transforms.common import _c, _increment, _need_params, _scalar_dtype, _unzip, _zeros_like

__all__ = ["ScaleByAsgdState", "scale_by_asgd"]


class ScaleByAsgdState(NamedTuple):
    """torch's ASGD state: ``step``, the step size ``eta``, the averaging weight ``mu`` (scalars:
    torch keeps the same value for every parameter) and the averaged parameters ``ax``."""

    count: jax.Array
    eta: jax.Array
    mu: jax.Array
    ax: Any


def scale_by_asgd(
    lr: float | jax.Array | Schedule = 1e-2,
    lambd: float | jax.Array = 1e-4,
    alpha: float | jax.Array = 0.75,
    t0: float | jax.Array = 1e6,
) -> GradientTransformation:
    """torch's ASGD step, the whole update (its ``eta`` is the learning rate); needs ``params``.

    ``p' = p * (1 - lambd * eta) - eta * g``; then ``ax <- ax + mu * (p' - ax)`` (``ax <- p'``
    while ``mu == 1``); then, at step ``t``, ``eta <- lr / (1 + lambd * lr * t) ** alpha`` and
    ``mu <- 1 / max(1, t - t0)``. ``eta`` starts at ``lr`` and ``mu`` at 1. The averaged
    parameters, torch's ``state["ax"]``, are ``state.ax``.
    """

    def rate(count: jax.Array) -> Any:
        return lr(count) if callable(lr) else lr

    def init(params: Any) -> ScaleByAsgdState:
        dtype = _scalar_dtype()
        return ScaleByAsgdState(
            jnp.zeros([], jnp.int32),
            jnp.asarray(rate(jnp.zeros([], jnp.int32)), dtype),
            jnp.ones([], dtype),
            _zeros_like(params),
        )

    def update(
        updates: Any, state: ScaleByAsgdState, params: Any = None
    ) -> tuple[Any, ScaleByAsgdState]:
        params = _need_params(params, "scale_by_asgd")
        check_tree_match(updates, state.ax, against="ASGD averages")
        eta, mu = state.eta, state.mu
        keep = 1 - lambd * eta

        def leaf(g: jax.Array, p: jax.Array, ax: jax.Array) -> tuple[jax.Array, jax.Array]:
            new = (p * _c(keep, p) - _c(eta, g) * g).astype(p.dtype)
            # ``p + (new - p)`` is ``new`` again, so the average reads the parameters as updated.
            averaged = jnp.where(mu != 1, ax + (new - ax) * _c(mu, ax), new).astype(ax.dtype)
            return (new - p).astype(g.dtype), averaged

        out, ax = _unzip(jax.tree.map(leaf, updates, params, state.ax), updates)
        count = _increment(state.count)
        step = count.astype(mu.dtype)
        current = rate(state.count)
        new_eta = jnp.asarray(current / (1 + lambd * current * step) ** alpha, eta.dtype)
        new_mu = jnp.asarray(1 / jnp.maximum(1, step - t0), mu.dtype)
        return out, ScaleByAsgdState(count, new_eta, new_mu, ax)

    return GradientTransformation(init, update)
