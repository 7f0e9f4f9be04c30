"""What every family of update rules shares: scalar helpers, the stateless terms (``scale``,
decay and L1 terms, clipping), the learning rate, and ``skip_nonfinite``.

The precision rules of :mod:`jopt.transforms` are implemented here: ``_c`` casts a scalar to a
leaf's compute dtype, ``_one_minus`` and ``_bias_correction`` keep a Python hyperparameter's
double precision, ``_lerp`` is torch's ``lerp`` kernel.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jopt.core import (
    EmptyState,
    GradientTransformation,
    Schedule,
    check_tree_match,
)

__all__ = [
    "ScaleByLearningRateState",
    "SkipNonfiniteState",
    "add_decayed_weights",
    "add_l1_penalty",
    "clip_by_global_norm",
    "scale",
    "scale_by_learning_rate",
    "skip_nonfinite",
]

Mask = Any  # a pytree of bools like the params, or a callable params -> such a tree


def _compute_dtype(dtype: Any) -> Any:
    """float32 for 16-bit floats (computed wide, stored narrow), else the dtype itself."""
    return jnp.promote_types(dtype, jnp.float32)


def _c(x: Any, like: jax.Array) -> jax.Array:
    """A scalar hyperparameter in the compute dtype of ``like``."""
    return jnp.asarray(x).astype(_compute_dtype(like.dtype))


def _one_minus(x: Any) -> Any:
    """``1 - x``, in double on the host for a Python number (torch: ``1 - beta`` in Python)."""
    return 1.0 - x if isinstance(x, numbers.Real) else 1 - jnp.asarray(x)


def _bias_correction(beta: Any, step: jax.Array) -> jax.Array:
    """``1 - beta ** step``, computed as ``-expm1(step * log(beta))``.

    For a Python ``beta`` the logarithm is taken in double on the host, so the small
    difference ``1 - beta ** step`` keeps float32's relative precision (the float32 power
    would lose it to the rounding of ``beta`` itself).
    """
    if isinstance(beta, numbers.Real):
        log_beta = math.log(beta) if beta > 0 else -math.inf
    else:
        log_beta = jnp.log(jnp.asarray(beta))
    return -jnp.expm1(step * log_beta)


def _zeros_like(params: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, params)


def _increment(count: jax.Array) -> jax.Array:
    return optax.safe_increment(count)


def _need_params(params: Any, name: str) -> Any:
    if params is None:
        raise ValueError(f"{name} needs the parameters: call update(updates, state, params).")
    return params


def _scalar_dtype() -> Any:
    """The dtype of torch's per-step scalars (``step``, ``mu_product``, ASGD's ``eta``): float64
    when jax runs in 64 bits (torch: a default dtype of float64), else float32."""
    return jnp.result_type(float)


def _lerp(start: jax.Array, end: jax.Array, weight: Any) -> jax.Array:
    """torch's ``lerp`` kernel: ``start + w * (end - start)`` for ``|w| < 0.5``, else
    ``end - (end - start) * (1 - w)``; ``weight`` a scalar in the compute dtype of ``start``."""
    w = _c(weight, start)
    low = start + w * (end - start)
    if isinstance(weight, numbers.Real):
        return low if abs(weight) < 0.5 else end - (end - start) * _c(_one_minus(weight), start)
    return jnp.where(jnp.abs(w) < 0.5, low, end - (end - start) * (1 - w))


def _average_square(g: jax.Array, s: jax.Array, decay: Any) -> jax.Array:
    """``s <- decay * s + (1 - decay) * g^2``: torch's ``s.mul_(decay).addcmul_(g, g, 1 - decay)``
    (Adam's ``exp_avg_sq``, RMSprop and Adadelta's ``square_avg``)."""
    return (s * _c(decay, g) + _c(_one_minus(decay), g) * g * g).astype(s.dtype)


def _unzip(pairs: Any, like: Any) -> tuple[Any, Any]:
    """Split a tree of tuples (made by ``tree.map`` over ``like``) into a tuple of trees."""
    treedef = jax.tree.structure(like)
    leaves = treedef.flatten_up_to(pairs)
    return tuple(treedef.unflatten(col) for col in zip(*leaves)) if leaves else (like, like)


# --------------------------------------------------------------------------------------------
# Stateless terms
# --------------------------------------------------------------------------------------------


def scale(factor: float | jax.Array) -> GradientTransformation:
    """``u <- factor * u``. ``scale(-1)`` is torch's ``maximize=True`` (``grad = -grad``)."""

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Any, state: EmptyState, params: Any = None) -> tuple[Any, EmptyState]:
        del params
        return jax.tree.map(lambda u: (_c(factor, u) * u).astype(u.dtype), updates), state

    return GradientTransformation(init, update)


def _mask_tree(mask: Mask | None, params: Any) -> Any:
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    tree = mask(params) if callable(mask) else mask
    # One bool per parameter: the structure must match, the leaves are not shaped like them.
    if jax.tree.structure(tree) != jax.tree.structure(params):
        check_tree_match(tree, params, what="mask entries", against="parameters")
    return tree


def _add_param_term(
    name: str, coefficient: Any, term: Any, mask: Mask | None
) -> GradientTransformation:
    """``u <- u + coefficient * term(p)`` on the leaves where ``mask`` is true."""

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Any, state: EmptyState, params: Any = None) -> tuple[Any, EmptyState]:
        params = _need_params(params, name)
        check_tree_match(updates, params)

        def leaf(u: jax.Array, p: jax.Array, keep: bool) -> jax.Array:
            return (u + _c(coefficient, u) * term(p)).astype(u.dtype) if keep else u

        return jax.tree.map(leaf, updates, params, _mask_tree(mask, params)), state

    return GradientTransformation(init, update)


def add_decayed_weights(
    weight_decay: float | jax.Array = 0.0, mask: Mask | None = None
) -> GradientTransformation:
    """``u <- u + weight_decay * p`` on the leaves where ``mask`` is true.

    Before the preconditioner it is torch's coupled L2 decay
    (``grad = grad.add(param, alpha=weight_decay)``); after it and before the learning rate it
    is AdamW's decoupled decay ``p <- p - lr * weight_decay * p``
    (torch's ``param.mul_(1 - lr * weight_decay)``).
    """
    return _add_param_term("add_decayed_weights", weight_decay, lambda p: p, mask)


def add_l1_penalty(l1: float | jax.Array, mask: Mask | None = None) -> GradientTransformation:
    """``u <- u + l1 * sign(p)``: the gradient of ``l1 * |p|_1`` (torch: add it to the loss)."""
    return _add_param_term("add_l1_penalty", l1, jnp.sign, mask)


def clip_by_global_norm(max_norm: float | jax.Array) -> GradientTransformation:
    """torch's ``clip_grad_norm_``: ``u <- u * min(1, max_norm / (||u||_2 + 1e-6))``.

    The norm is over all leaves together, computed at float32 or better.
    """

    def init(params: Any) -> EmptyState:
        del params
        return EmptyState()

    def update(updates: Any, state: EmptyState, params: Any = None) -> tuple[Any, EmptyState]:
        del params
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        acc = jnp.result_type(jnp.float32, *(jnp.real(u) for u in leaves))
        total = jnp.sqrt(sum(jnp.sum(jnp.square(jnp.abs(u).astype(acc))) for u in leaves))
        coef = jnp.minimum(jnp.asarray(max_norm, acc) / (total + 1e-6), 1.0)
        return jax.tree.map(lambda u: (u * coef).astype(u.dtype), updates), state

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------------


class ScaleByLearningRateState(NamedTuple):
    """The step count, used only when the learning rate is a schedule."""

    count: jax.Array


def scale_by_learning_rate(lr: float | jax.Array | Schedule) -> GradientTransformation:
    """``u <- -lr * u`` (torch's ``param.add_(update, alpha=-lr)``).

    ``lr`` may be a schedule ``step -> lr``, evaluated at 0, 1, 2, ... on successive updates.
    """

    def init(params: Any) -> ScaleByLearningRateState:
        del params
        return ScaleByLearningRateState(jnp.zeros([], jnp.int32))

    def update(
        updates: Any, state: ScaleByLearningRateState, params: Any = None
    ) -> tuple[Any, ScaleByLearningRateState]:
        del params
        rate = lr(state.count) if callable(lr) else lr
        updates = jax.tree.map(lambda u: (-_c(rate, u) * u).astype(u.dtype), updates)
        return updates, ScaleByLearningRateState(_increment(state.count))

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------


class SkipNonfiniteState(NamedTuple):
    """The inner state, and how many steps were skipped for a non-finite gradient."""

    skipped: jax.Array
    last_finite: jax.Array
    inner_state: Any


def skip_nonfinite(inner: GradientTransformation) -> GradientTransformation:
    """Skip a step whose gradient holds a NaN or an infinity.

    Without it, jopt does as torch: a non-finite gradient flows into the update and the
    parameters. Wrapped, such a step returns zero updates and leaves the inner state as it was;
    ``state.skipped`` counts the skipped steps and ``state.last_finite`` says whether the last
    one was applied (torch's ``GradScaler`` does the same for scaled mixed precision).
    """

    def init(params: Any) -> SkipNonfiniteState:
        return SkipNonfiniteState(jnp.zeros([], jnp.int32), jnp.array(True), inner.init(params))

    def update(
        updates: Any, state: SkipNonfiniteState, params: Any = None, **extra: Any
    ) -> tuple[Any, SkipNonfiniteState]:
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)]))
        new_updates, new_state = optax.with_extra_args_support(inner).update(
            updates, state.inner_state, params, **extra
        )

        def pick(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        return (
            jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), new_updates),
            SkipNonfiniteState(
                state.skipped + (~finite).astype(jnp.int32),
                finite,
                pick(new_state, state.inner_state),
            ),
        )

    return GradientTransformation(init, update)
