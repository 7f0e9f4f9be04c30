"""Building blocks: every update rule of jopt lives here, once, written as torch computes it.

Each function returns a ``GradientTransformation``. Hyperparameters may be Python floats,
arrays (traced under ``jit``/``vmap``/``inject_hyperparams``) or, for ``lr``, a schedule
``step -> lr``.

Precision follows torch's CPU kernels. Scalar coefficients are computed at the highest
precision at hand — a Python float's complement ``1 - beta`` and its logarithm in double on the
host, as torch does in Python — then cast to the compute dtype of each leaf: the leaf's own
dtype, or float32 for bfloat16/float16 leaves, which are computed in float32 and rounded back
(torch's "opmath"). State buffers keep the dtype of their parameter, as torch's
``zeros_like(param)`` do; updates keep the dtype of the gradient.
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
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByLearningRateState",
    "ScaleByRmsState",
    "SkipNonfiniteState",
    "TraceState",
    "add_decayed_weights",
    "add_l1_penalty",
    "clip_by_global_norm",
    "scale",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "skip_nonfinite",
    "trace",
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
# Momentum
# --------------------------------------------------------------------------------------------


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
    exactly 0 (possible when it is injected data) passes ``g`` through, as torch does.
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


def _unzip(pairs: Any, like: Any) -> tuple[Any, Any]:
    """Split a tree of tuples (made by ``tree.map`` over ``like``) into a tuple of trees."""
    treedef = jax.tree.structure(like)
    leaves = treedef.flatten_up_to(pairs)
    return tuple(treedef.unflatten(col) for col in zip(*leaves)) if leaves else (like, like)


# --------------------------------------------------------------------------------------------
# Preconditioners
# --------------------------------------------------------------------------------------------


class ScaleByAdamState(NamedTuple):
    """torch's Adam state: ``step`` and the moments, named as in ``torch.optim.Adam``."""

    count: jax.Array
    exp_avg: Any
    exp_avg_sq: Any
    max_exp_avg_sq: Any  # None unless amsgrad


def scale_by_adam(
    betas: tuple[float | jax.Array, float | jax.Array] = (0.9, 0.999),
    eps: float | jax.Array = 1e-8,
    amsgrad: bool = False,
) -> GradientTransformation:
    """torch's Adam direction, before ``-lr``.

    ``m <- lerp(m, g, 1 - b1)``, ``v <- b2 * v + (1 - b2) * g^2``; with ``amsgrad``
    ``vmax <- max(vmax, v)`` and ``v`` below reads ``vmax``. The update is
    ``(m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)`` (eps outside the sqrt, after the
    bias correction of ``v``, as in torch).
    """
    b1, b2 = betas

    def init(params: Any) -> ScaleByAdamState:
        return ScaleByAdamState(
            jnp.zeros([], jnp.int32),
            _zeros_like(params),
            _zeros_like(params),
            _zeros_like(params) if amsgrad else None,
        )

    def update(
        updates: Any, state: ScaleByAdamState, params: Any = None
    ) -> tuple[Any, ScaleByAdamState]:
        del params
        check_tree_match(updates, state.exp_avg, against="Adam moments")
        count = _increment(state.count)
        # Scalars at the hyperparameters' precision (torch: Python doubles).
        step = count.astype(jnp.result_type(float))
        bias1 = _bias_correction(b1, step)
        bias2_sqrt = jnp.sqrt(_bias_correction(b2, step))

        def moments(g: jax.Array, m: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
            new_m = m + _c(_one_minus(b1), g) * (g - m)
            new_v = v * _c(b2, g) + _c(_one_minus(b2), g) * g * g
            return new_m.astype(m.dtype), new_v.astype(v.dtype)

        m, v = _unzip(jax.tree.map(moments, updates, state.exp_avg, state.exp_avg_sq), updates)
        vmax = jax.tree.map(jnp.maximum, state.max_exp_avg_sq, v) if amsgrad else None

        def direction(m: jax.Array, v: jax.Array) -> jax.Array:
            denom = jnp.sqrt(v) / _c(bias2_sqrt, v) + _c(eps, v)
            return ((m / _c(bias1, m)) / denom).astype(m.dtype)

        out = jax.tree.map(direction, m, vmax if amsgrad else v)
        return out, ScaleByAdamState(count, m, v, vmax)

    return GradientTransformation(init, update)


class ScaleByRmsState(NamedTuple):
    """torch's RMSprop state: ``step``, ``square_avg`` and (centered) ``grad_avg``."""

    count: jax.Array
    square_avg: Any
    grad_avg: Any  # None unless centered


def scale_by_rms(
    alpha: float | jax.Array = 0.99, eps: float | jax.Array = 1e-8, centered: bool = False
) -> GradientTransformation:
    """torch's RMSprop direction, before momentum and ``-lr``.

    ``s <- alpha * s + (1 - alpha) * g^2``; centered: ``a <- lerp(a, g, 1 - alpha)`` and
    ``s`` below reads ``s - a^2``. The update is ``g / (sqrt(s) + eps)`` — eps outside the
    sqrt, where optax puts it inside.
    """

    def init(params: Any) -> ScaleByRmsState:
        return ScaleByRmsState(
            jnp.zeros([], jnp.int32),
            _zeros_like(params),
            _zeros_like(params) if centered else None,
        )

    def update(
        updates: Any, state: ScaleByRmsState, params: Any = None
    ) -> tuple[Any, ScaleByRmsState]:
        del params
        check_tree_match(updates, state.square_avg, against="RMSprop averages")

        def square(g: jax.Array, s: jax.Array) -> jax.Array:
            return (s * _c(alpha, g) + _c(_one_minus(alpha), g) * g * g).astype(s.dtype)

        def mean(g: jax.Array, a: jax.Array) -> jax.Array:
            return (a + _c(_one_minus(alpha), g) * (g - a)).astype(a.dtype)

        sq = jax.tree.map(square, updates, state.square_avg)
        if centered:
            ga = jax.tree.map(mean, updates, state.grad_avg)
            var = jax.tree.map(lambda s, a: (s - a * a).astype(s.dtype), sq, ga)
        else:
            ga, var = None, sq
        out = jax.tree.map(
            lambda g, s: (g / (jnp.sqrt(s) + _c(eps, s))).astype(g.dtype), updates, var
        )
        return out, ScaleByRmsState(_increment(state.count), sq, ga)

    return GradientTransformation(init, update)


class ScaleByAdagradState(NamedTuple):
    """torch's Adagrad state: ``step`` and the accumulator ``sum``."""

    count: jax.Array
    sum: Any


def scale_by_adagrad(
    lr_decay: float | jax.Array = 0.0,
    initial_accumulator_value: float | jax.Array = 0.0,
    eps: float | jax.Array = 1e-10,
) -> GradientTransformation:
    """torch's Adagrad direction, before ``-lr``.

    ``sum <- sum + g^2``; the update is ``g / (sqrt(sum) + eps) / (1 + (t - 1) * lr_decay)``
    (torch's ``clr = lr / (1 + (step - 1) * lr_decay)``).
    """

    def init(params: Any) -> ScaleByAdagradState:
        return ScaleByAdagradState(
            jnp.zeros([], jnp.int32),
            jax.tree.map(
                lambda p: jnp.full_like(p, jnp.asarray(initial_accumulator_value)), params
            ),
        )

    def update(
        updates: Any, state: ScaleByAdagradState, params: Any = None
    ) -> tuple[Any, ScaleByAdagradState]:
        del params
        check_tree_match(updates, state.sum, against="Adagrad sums")
        count = _increment(state.count)
        decay = 1 + (count - 1).astype(jnp.result_type(float)) * jnp.asarray(lr_decay)
        sums = jax.tree.map(lambda g, s: (s + g * g).astype(s.dtype), updates, state.sum)
        out = jax.tree.map(
            lambda g, s: (g / (jnp.sqrt(s) + _c(eps, s)) / _c(decay, g)).astype(g.dtype),
            updates,
            sums,
        )
        return out, ScaleByAdagradState(count, sums)

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
