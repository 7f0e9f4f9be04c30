"""What the optimizers share: torch's argument checks and the chain every optimizer is.

An optimizer is :func:`_optimizer` over a few transforms: the present terms in order, the
gradients checked against the parameters, complex parameters optimized as pairs of reals (or
refused, where torch refuses them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jopt.core import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Schedule,
    check_tree_match,
    is_concrete,
    named_chain,
)

__all__ = ["LearningRate", "Scalar"]

Scalar = float | jax.Array
LearningRate = float | jax.Array | Schedule


def _check(value: Any, ok: Callable[[Any], bool], message: str) -> None:
    """torch's argument check, for values known at construction (not tracers or schedules).

    Like torch it compares the value itself, so a value that is no number (``"0.1"``,
    ``None``) raises torch's ``TypeError`` rather than passing as ``float("0.1")``.
    """
    if is_concrete(value) and not ok(float(value) if isinstance(value, jax.Array) else value):
        raise ValueError(message)


def _nonneg(value: Any, what: str) -> None:
    _check(value, lambda v: v >= 0.0, f"Invalid {what}: {value}")


def _as_real(tree: Any) -> Any:
    """Complex leaves as real pairs on a last axis of 2 (torch's ``view_as_real``)."""
    return jax.tree.map(
        lambda x: jnp.stack([x.real, x.imag], -1) if jnp.iscomplexobj(x) else x, tree
    )


def _as_complex_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda x, ref: jax.lax.complex(x[..., 0], x[..., 1]) if jnp.iscomplexobj(ref) else x,
        tree,
        like,
    )


def _optimizer(
    *transforms: GradientTransformation | None,
    refuse_complex: tuple[type[Exception], str] | None = None,
    check_params: Callable[[Any], None] | None = None,
) -> GradientTransformationExtraArgs:
    """Chain the present terms; check gradients against the parameters when they are given.

    Complex parameters are optimized as torch does, as pairs of reals: the state of a complex
    parameter is real with a trailing axis of 2. ``refuse_complex`` is torch's error for an
    optimizer that takes no complex parameters (raised by ``init`` and ``update``);
    ``check_params`` is torch's check of the parameters at construction, run by ``init``.
    """
    inner = named_chain(*transforms)

    def refuse(tree: Any) -> None:
        if refuse_complex and any(jnp.iscomplexobj(x) for x in jax.tree.leaves(tree)):
            kind, message = refuse_complex
            raise kind(message)

    def init(params: Any) -> Any:
        refuse(params)
        if check_params is not None:
            check_params(params)
        return inner.init(_as_real(params))

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        if params is not None:
            check_tree_match(updates, params)
        refuse(updates)
        if not any(jnp.iscomplexobj(u) for u in jax.tree.leaves(updates)):
            return inner.update(updates, state, params, **extra)
        real, state = inner.update(_as_real(updates), state, _as_real(params), **extra)
        return _as_complex_like(real, updates), state

    return GradientTransformationExtraArgs(init, update)


def _check_adam(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """Adam's checks, in torch's order: lr, eps, each beta, weight decay."""
    _nonneg(lr, "learning rate")
    _nonneg(eps, "epsilon value")
    for i, beta in enumerate(betas):
        _check(beta, lambda b: 0.0 <= b < 1.0, f"Invalid beta parameter at index {i}: {beta}")
    _nonneg(weight_decay, "weight_decay value")
