"""Sign-based steps: Rprop, whose per-entry step sizes adapt to the sign of the gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import GradientTransformation, Schedule, check_tree_match
from jopt.transforms.common import _c, _increment, _unzip, _zeros_like

__all__ = ["ScaleByRpropState", "scale_by_rprop"]


class ScaleByRpropState(NamedTuple):
    """torch's Rprop state: ``step``, the previous gradient ``prev`` and the per-entry
    ``step_size``."""

    count: jax.Array
    prev: Any
    step_size: Any


def scale_by_rprop(
    lr: float | jax.Array | Schedule = 1e-2,
    etas: tuple[float | jax.Array, float | jax.Array] = (0.5, 1.2),
    step_sizes: tuple[float | jax.Array, float | jax.Array] = (1e-6, 50),
) -> GradientTransformation:
    """torch's Rprop step, the whole update (its step sizes are the learning rate).

    Each step size starts at ``lr``. Where ``g * prev > 0`` it grows by ``etaplus``, where
    ``g * prev < 0`` it shrinks by ``etaminus`` and the gradient is taken as 0, elsewhere it
    stays; it is clamped to ``step_sizes``. The update is ``-sign(g) * step_size`` and ``prev``
    the gradient as taken. ``lr`` is read only at ``init``, as torch reads it only on the first
    step (a schedule is read at step 0).

    Differentiated (:func:`jopt.hypergrad`), the sign has derivative 0: a hypergradient flows
    only through the step sizes (``lr``, ``etas``), and is 0 where a size is clamped.
    """
    etaminus, etaplus = etas
    lo, hi = step_sizes

    def init(params: Any) -> ScaleByRpropState:
        rate = lr(0) if callable(lr) else lr
        return ScaleByRpropState(
            jnp.zeros([], jnp.int32),
            _zeros_like(params),
            jax.tree.map(lambda p: jnp.full_like(p, jnp.asarray(rate)), params),
        )

    def update(
        updates: Any, state: ScaleByRpropState, params: Any = None
    ) -> tuple[Any, ScaleByRpropState]:
        del params
        check_tree_match(updates, state.prev, against="Rprop gradients")

        def leaf(g: jax.Array, prev: jax.Array, size: jax.Array) -> tuple[jax.Array, ...]:
            sign = jnp.sign(g * prev)
            factor = jnp.where(sign > 0, _c(etaplus, g), jnp.where(sign < 0, _c(etaminus, g), 1))
            size = jnp.clip(size * factor, _c(lo, size), _c(hi, size)).astype(size.dtype)
            g = jnp.where(sign < 0, jnp.zeros_like(g), g)
            return (-jnp.sign(g) * size).astype(g.dtype), g.astype(prev.dtype), size

        out, prev, size = _unzip(jax.tree.map(leaf, updates, state.prev, state.step_size), updates)
        return out, ScaleByRpropState(_increment(state.count), prev, size)

    return GradientTransformation(init, update)
