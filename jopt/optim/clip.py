"""torch.nn.utils' gradient clipping, on the gradients an optimizer has accumulated.

torch clips the ``.grad`` of the parameters in place between ``backward()`` and ``step()``; in
jopt those gradients live in the optimizer (:attr:`jopt.optim.Optimizer.grads`), so the
functions take the optimizer. Inside a jitted functional step, use
:func:`jopt.clip_by_global_norm` instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jopt.optim.optimizer import Optimizer

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _norm(x: jax.Array, norm_type: float) -> jax.Array:
    x = jnp.abs(x)
    if norm_type == float("inf"):
        return jnp.max(x, initial=0.0)
    if norm_type == float("-inf"):
        return jnp.min(x)
    if norm_type == 0:
        return jnp.sum(x != 0).astype(x.dtype)
    return jnp.sum(x**norm_type) ** (1.0 / norm_type)


def _accumulated(optimizer: Optimizer, name: str) -> list[Any] | None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{name} takes a jopt.optim optimizer (its accumulated gradients), "
            f"got {type(optimizer).__name__}"
        )
    return optimizer._grad


def clip_grad_norm_(
    optimizer: Optimizer,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> jax.Array:
    """Scale the accumulated gradients so that their total norm is at most ``max_norm``.

    torch's ``clip_grad_norm_``: the total norm is the ``norm_type`` norm of the per-parameter
    norms; every gradient is multiplied by ``min(max_norm / (total + 1e-6), 1)``. Returns the
    total norm before clipping (0 when there are no gradients). ``foreach`` is accepted and
    ignored.
    """
    del foreach
    grads = _accumulated(optimizer, "clip_grad_norm_")
    norm_type = float(norm_type)
    if grads is None:
        return jnp.asarray(0.0)
    layouts = [g.layout for g in optimizer._groups]

    def clip(grads, offsets, max_norm: jax.Array) -> tuple[list[Any], jax.Array]:
        leaves = [
            leaf
            for lay, g, o in zip(layouts, grads, offsets)
            for leaf in lay.unflatten_leaves(g, o)
        ]
        total = _norm(jnp.stack([_norm(leaf, norm_type) for leaf in leaves]), norm_type)
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        scaled = jax.tree.map(lambda g: g * coef.astype(g.dtype), grads)
        return scaled, total

    # The gradients are donated unless a non-finite norm must leave them as they were.
    key = (norm_type, error_if_nonfinite)
    fn = optimizer.__dict__.setdefault("_clip_norm", {}).get(key)
    if fn is None:
        donate = () if error_if_nonfinite else (0,)
        fn = optimizer.__dict__["_clip_norm"][key] = jax.jit(clip, donate_argnums=donate)
    scaled, total = fn(grads, optimizer._offsets(), jnp.asarray(max_norm, jnp.float32))
    if error_if_nonfinite and not bool(jnp.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    optimizer._grad = scaled
    return total


def clip_grad_value_(optimizer: Optimizer, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every accumulated gradient into ``[-clip_value, clip_value]`` (torch's
    ``clip_grad_value_``)."""
    del foreach
    grads = _accumulated(optimizer, "clip_grad_value_")
    if grads is None:
        return
    fn = optimizer.__dict__.get("_clip_value")
    if fn is None:
        fn = optimizer.__dict__["_clip_value"] = jax.jit(
            lambda g, v: jax.tree.map(lambda x: jnp.clip(x, -v, v).astype(x.dtype), g),
            donate_argnums=(0,),
        )
    optimizer._grad = fn(grads, jnp.asarray(clip_value, jnp.float32))
