"""One formula, two backends: NumPy float64 for host numbers, ``jax.numpy`` otherwise."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.core import Schedule, is_concrete

Scalar = float | jax.Array
Step = int | jax.Array


def is_host(x: Any) -> bool:
    """A Python or NumPy number (or NumPy array): evaluated in float64 on the host."""
    return isinstance(x, numbers.Number | np.ndarray | np.generic)


def as_float(x: Any) -> Any:
    """A Python float for a concrete real hyperparameter; arrays and tracers pass through."""
    return float(x) if isinstance(x, numbers.Real) else x


def host_result(x: Any) -> Any:
    """A host value as ``numpy.float64`` (a ``float``), or a float64 array for array steps."""
    out = np.asarray(x, dtype=np.float64)
    return out[()] if out.ndim == 0 else out


def jax_result(x: Any) -> jax.Array:
    """A traced value as a JAX array of a floating dtype."""
    out = jnp.asarray(x)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        out = out.astype(jnp.result_type(float))
    return out


def make_schedule(rule: Callable[[Any, Any], Any], *hyperparams: Any) -> Schedule:
    """Wrap ``rule(xp, t)`` into a schedule that picks NumPy or jax.numpy by its inputs' types."""

    def schedule(step: Step) -> Any:
        if is_host(step) and all(is_host(h) for h in hyperparams):
            with np.errstate(all="ignore"):  # where() evaluates both sides; the unused may be inf
                return host_result(rule(np, np.asarray(step)))
        return jax_result(rule(jnp, jnp.asarray(step)))

    return schedule


def check(value: Any, ok: Callable[[float], bool], message: str) -> None:
    """torch's argument check, for values known at construction (not tracers)."""
    if is_concrete(value) and isinstance(value, numbers.Real) and not ok(float(value)):
        raise ValueError(message)
