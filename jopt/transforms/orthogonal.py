"""Orthogonalized updates: Muon's Newton–Schulz iteration and its shape-dependent step scale."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jopt.core import EmptyState, GradientTransformation

__all__ = ["adjust_lr_by_shape", "orthogonalize_by_newton_schulz"]

# torch.optim.Muon's defaults (Keller Jordan's quintic coefficients).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def _newton_schulz(g: jax.Array, coefficients: tuple[Any, Any, Any], steps: int, eps: Any):
    """torch's ``_zeropower_via_newtonschulz``, rounding where torch rounds.

    torch runs the iteration in bfloat16: every matrix product and every ``addmm`` is
    accumulated in float32 and rounded once to bfloat16. Here the products take bfloat16
    operands with a float32 result and each intermediate is rounded to bfloat16 as in torch,
    which reproduces torch's iterates bit for bit on small matrices.
    """
    bf16, f32 = jnp.bfloat16, jnp.float32
    a, b, c = (jnp.asarray(k).astype(f32) for k in coefficients)

    def mm(x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.matmul(x, y, preferred_element_type=f32)

    # torch rounds a float64 update to float32 first, then to bfloat16 (``c10::BFloat16`` is made
    # from a float): two roundings, which differ from one about once in 2**16 entries.
    x = g.astype(f32).astype(bf16)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(f32)))).astype(bf16)
    x = (x.astype(f32) / jnp.maximum(norm, jnp.asarray(eps).astype(bf16)).astype(f32)).astype(bf16)
    for _ in range(steps):
        gram = mm(x, x.T).astype(bf16)
        poly = (b * gram.astype(f32) + c * mm(gram, gram)).astype(bf16)
        x = (a * x.astype(f32) + mm(poly, x)).astype(bf16)
    return x.T if tall else x


def orthogonalize_by_newton_schulz(
    ns_coefficients: tuple[
        float | jax.Array, float | jax.Array, float | jax.Array
    ] = NS_COEFFICIENTS,
    ns_steps: int = NS_STEPS,
    eps: float | jax.Array = NS_EPS,
) -> GradientTransformation:
    """Muon's orthogonalization of each (2-D) update, torch's ``_zeropower_via_newtonschulz``.

    ``X <- G / max(||G||_F, eps)`` (transposed so that it is wide), then ``ns_steps`` times
    ``A = X X^T``, ``X <- a X + (b A + c A^2) X``, in bfloat16 as torch computes it. The
    result is rounded to bfloat16 and returned in the dtype of the update.
    """
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Any, state: EmptyState, params: Any = None) -> tuple[Any, EmptyState]:
        del params

        def leaf(g: jax.Array) -> jax.Array:
            if g.ndim != 2:
                raise ValueError("Input tensor gradient must be a 2D matrix")
            return _newton_schulz(g, tuple(ns_coefficients), ns_steps, eps).astype(g.dtype)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init, update)


def _shape_ratio(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def adjust_lr_by_shape(adjust_lr_fn: str | None = None) -> GradientTransformation:
    """Muon's learning-rate adjustment, a factor per matrix of shape ``(A, B)``.

    ``None`` or ``"original"``: ``sqrt(max(1, A / B))`` (Keller Jordan's Muon);
    ``"match_rms_adamw"``: ``0.2 * sqrt(max(A, B))`` (Moonshot's, to reuse AdamW's learning rate
    and weight decay). torch's ``_adjust_lr``.
    """

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Any, state: EmptyState, params: Any = None) -> tuple[Any, EmptyState]:
        del params

        def leaf(u: jax.Array) -> jax.Array:
            return (u * _shape_ratio(adjust_lr_fn, u.shape)).astype(u.dtype)

        return jax.tree.map(leaf, updates), state

    return GradientTransformation(init, update)
