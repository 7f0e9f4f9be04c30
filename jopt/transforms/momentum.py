"""Momentum: SGD's heavy ball (``trace``) and the exponential average Muon keeps
(``ema_momentum``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jopt.core import GradientTransformation, check_tree_match
from jopt.transforms.common import _c, _increment, _lerp, _one_minus, _unzip, _zeros_like

__all__ = ["EmaMomentumState", "TraceState", "ema_momentum", "trace"]


class TraceState(NamedTuple):
    """torch's ``momentum_buffer`` per parameter, and the step count (0: no buffer yet)."""

    count: jax.Array
    momentum_buffer: Any


def trace(
    momentum: float | jax.Array, dampening: float | jax.Array = 0.0, nesterov: bool = False
) -> GradientTransformation:
    """torch's SGD momentum.

    ``buf <- g`` on the first step, then ``buf <- momentum * buf + (1 - dampening) * g``;
    the update is ``g + momentum * buf`` with ``nesterov``, else ``buf``. A momentum of
    exactly 0 (possible when it is injected data) passes ``g`` through, as torch does, so the
    derivative with respect to ``momentum`` there is 0 (differentiate at a small positive one).
    """

    def init(params: Any) -> TraceState:
        return TraceState(jnp.zeros([], jnp.int32), _zeros_like(params))

    def update(updates: Any, state: TraceState, params: Any = None) -> tuple[Any, TraceState]:
        del params
        check_tree_match(updates, state.momentum_buffer, against="momentum buffers")
        first = state.count == 0  # counts the steps taken with momentum: torch's buffer is None
        off = jnp.asarray(momentum) == 0  # torch skips the momentum branch entirely

        def leaf(g: jax.Array, buf: jax.Array) -> tuple[jax.Array, jax.Array]:
            mu = _c(momentum, g)
            new = jnp.where(first, g, buf * mu + g * _c(_one_minus(dampening), g)).astype(buf.dtype)
            # The update reads the stored buffer, not a second computation of it: XLA then
            # writes the buffer in place with no copy (it equals ``new`` wherever ``off`` is false).
            new = jnp.where(off, buf, new)
            out = (g + new * mu).astype(g.dtype) if nesterov else new.astype(g.dtype)
            return jnp.where(off, g, out), new

        pairs = jax.tree.map(leaf, updates, state.momentum_buffer)
        out, bufs = _unzip(pairs, updates)
        return out, TraceState(jnp.where(off, state.count, _increment(state.count)), bufs)

    return GradientTransformation(init, update)


class EmaMomentumState(NamedTuple):
    """torch's ``momentum_buffer`` of ``torch.optim.Muon``, and the steps taken (torch keeps
    none; 0 means torch has no buffer yet)."""

    count: jax.Array
    momentum_buffer: Any


def ema_momentum(
    momentum: float | jax.Array = 0.95, nesterov: bool = True
) -> GradientTransformation:
    """Muon's momentum: an exponential average of the gradients, from zero.

    ``buf <- lerp(buf, g, 1 - momentum)``; the update is ``lerp(g, buf, momentum)`` with
    ``nesterov``, else ``buf`` (torch's ``buf.lerp_(grad, 1 - momentum)`` and
    ``grad.lerp(buf, momentum)``).
    """

    def init(params: Any) -> EmaMomentumState:
        return EmaMomentumState(jnp.zeros([], jnp.int32), _zeros_like(params))

    def update(
        updates: Any, state: EmaMomentumState, params: Any = None
    ) -> tuple[Any, EmaMomentumState]:
        del params
        check_tree_match(updates, state.momentum_buffer, against="momentum buffers")

        def leaf(g: jax.Array, buf: jax.Array) -> tuple[jax.Array, jax.Array]:
            new = _lerp(buf, g, _one_minus(momentum)).astype(buf.dtype)
            out = _lerp(g, new, momentum) if nesterov else new
            return out.astype(g.dtype), new

        out, bufs = _unzip(jax.tree.map(leaf, updates, state.momentum_buffer), updates)
        return out, EmaMomentumState(_increment(state.count), bufs)

    return GradientTransformation(init, update)
