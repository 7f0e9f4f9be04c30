"""The strong-Wolfe line search's pieces, as ``torch.optim.LBFGS`` has them: cubic
interpolation between two points and the two Wolfe conditions with torch's constants."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "C1",
    "C2",
    "cubic_interpolate",
    "max_like_python",
    "min_like_python",
    "strong_curvature",
    "sufficient_decrease",
]

C1, C2 = 1e-4, 0.9
"""torch's sufficient-decrease and curvature constants of the strong-Wolfe search."""



def max_like_python(a: Any, b: Any) -> Any:
    """Python's ``max(a, b)``: ``a`` unless ``b > a`` (so NaNs go where Python puts them)."""
    return jnp.where(b > a, b, a)


def min_like_python(a: Any, b: Any) -> Any:
    """Python's ``min(a, b)``: ``a`` unless ``b < a``."""
    return jnp.where(b < a, b, a)


def cubic_interpolate(
    x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any, bounds: tuple[Any, Any] | None = None
) -> jax.Array:
    """The minimizer of the cubic through ``(x1, f1, g1)`` and ``(x2, f2, g2)`` (values and
    slopes), clipped to ``bounds`` (default: between the points); the middle of the bounds
    when the cubic has no minimizer. torch's ``_cubic_interpolate``."""
    if bounds is None:
        ordered = x1 <= x2
        lo, hi = jnp.where(ordered, x1, x2), jnp.where(ordered, x2, x1)
    else:
        lo, hi = bounds
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    d2 = jnp.sqrt(jnp.maximum(d2_square, 0))
    min_pos = jnp.where(
        x1 <= x2,
        x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
        x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)),
    )
    clipped = min_like_python(max_like_python(min_pos, lo), hi)
    return jnp.where(d2_square >= 0, clipped, (lo + hi) / 2.0)


def sufficient_decrease(f_new: Any, f: Any, t: Any, gtd: Any) -> jax.Array:
    """Armijo: ``f(x + t d) <= f(x) + c1 t g.d``."""
    return ~(f_new > f + C1 * t * gtd)


def strong_curvature(gtd_new: Any, gtd: Any) -> jax.Array:
    """The strong curvature condition: ``|g(x + t d).d| <= -c2 g.d``."""
    return jnp.abs(gtd_new) <= -C2 * gtd
