"""torch.optim's optimizers as short chains of :mod:`jopt.transforms`.

Each keeps torch's argument names, defaults and ``ValueError`` messages, and returns a
``GradientTransformation`` whose updates are added with ``jopt.apply_updates``. A term torch
skips (``weight_decay == 0``, ``momentum == 0``) is left out of the chain, so it costs nothing.
Hyperparameters may be floats, arrays (to ``vmap`` over) or, for ``lr``, a schedule; wrap a
factory in ``jopt.inject_hyperparams`` to change them between jitted steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jopt import transforms as T
from jopt.core import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Schedule,
    check_tree_match,
    is_concrete,
    is_zero,
    named_chain,
)

__all__ = ["adagrad", "adam", "adamw", "momentum", "rmsprop", "sgd"]

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


def _optimizer(*transforms: GradientTransformation | None) -> GradientTransformationExtraArgs:
    """Chain the present terms; check gradients against the parameters when they are given.

    Complex parameters are optimized as torch does, as pairs of reals: the state of a complex
    parameter is real with a trailing axis of 2.
    """
    inner = named_chain(*transforms)

    def init(params: Any) -> Any:
        return inner.init(_as_real(params))

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        if params is not None:
            check_tree_match(updates, params)
        if not any(jnp.iscomplexobj(u) for u in jax.tree.leaves(updates)):
            return inner.update(updates, state, params, **extra)
        real, state = inner.update(_as_real(updates), state, _as_real(params), **extra)
        return _as_complex_like(real, updates), state

    return GradientTransformationExtraArgs(init, update)


def sgd(
    lr: LearningRate = 1e-3,
    momentum: Scalar = 0.0,
    dampening: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Stochastic gradient descent, ``torch.optim.SGD``.

    ``g <- g + weight_decay * p``; with momentum ``buf <- momentum * buf + (1 - dampening) * g``
    (``buf = g`` on the first step) and ``g <- g + momentum * buf`` (nesterov) or ``buf``;
    ``p <- p - lr * g``. ``maximize`` ascends.
    """
    _nonneg(lr, "learning rate")
    _nonneg(momentum, "momentum value")
    _nonneg(weight_decay, "weight_decay value")
    if nesterov and (
        (is_concrete(momentum) and float(momentum) <= 0)
        or (is_concrete(dampening) and float(dampening) != 0)
    ):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        None if is_zero(momentum) else T.trace(momentum, dampening, nesterov),
        T.scale_by_learning_rate(lr),
    )


sgd.static_when_zero = ("momentum", "weight_decay")  # type: ignore[attr-defined]


def momentum(
    lr: LearningRate = 1e-3,
    momentum: Scalar = 0.9,
    dampening: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """SGD with momentum 0.9 by default: ``torch.optim.SGD(params, lr, momentum=0.9)``."""
    return sgd(lr, momentum, dampening, weight_decay, nesterov, maximize)


momentum.static_when_zero = ("momentum", "weight_decay")  # type: ignore[attr-defined]


def _check_adam(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    _nonneg(lr, "learning rate")
    _nonneg(eps, "epsilon value")
    for i, beta in enumerate(betas):
        _check(beta, lambda b: 0.0 <= b < 1.0, f"Invalid beta parameter at index {i}: {beta}")
    _nonneg(weight_decay, "weight_decay value")


def adam(
    lr: LearningRate = 1e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Adam, ``torch.optim.Adam``.

    ``g <- g + weight_decay * p`` (coupled L2); ``m, v`` and the bias-corrected direction of
    :func:`jopt.transforms.scale_by_adam`; ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``.
    """
    _check_adam(lr, betas, eps, weight_decay)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_adam(tuple(betas), eps, amsgrad),
        T.scale_by_learning_rate(lr),
    )


adam.static_when_zero = ("weight_decay",)  # type: ignore[attr-defined]


def adamw(
    lr: LearningRate = 1e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """AdamW, ``torch.optim.AdamW``: Adam with decoupled weight decay.

    ``p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``, which is torch's
    ``p.mul_(1 - lr * weight_decay)`` before the Adam step.
    """
    _check_adam(lr, betas, eps, weight_decay)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        T.scale_by_adam(tuple(betas), eps, amsgrad),
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_learning_rate(lr),
    )


adamw.static_when_zero = ("weight_decay",)  # type: ignore[attr-defined]


def rmsprop(
    lr: LearningRate = 1e-2,
    alpha: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    momentum: Scalar = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """RMSprop, ``torch.optim.RMSprop``.

    ``s <- alpha * s + (1 - alpha) * g^2``, ``u = g / (sqrt(s) + eps)`` (centered: ``s - a^2``
    with ``a`` the mean gradient); with momentum ``buf <- momentum * buf + u``;
    ``p <- p - lr * buf`` (or ``u``).
    """
    _nonneg(lr, "learning rate")
    _nonneg(eps, "epsilon value")
    _nonneg(momentum, "momentum value")
    _nonneg(weight_decay, "weight_decay value")
    _nonneg(alpha, "alpha value")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_rms(alpha, eps, centered),
        # torch's buffer starts at zero, so its first step equals SGD's ``buf = g``.
        None if is_zero(momentum) else T.trace(momentum),
        T.scale_by_learning_rate(lr),
    )


rmsprop.static_when_zero = ("momentum", "weight_decay")  # type: ignore[attr-defined]


def adagrad(
    lr: LearningRate = 1e-2,
    lr_decay: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    initial_accumulator_value: Scalar = 0.0,
    eps: Scalar = 1e-10,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Adagrad, ``torch.optim.Adagrad``.

    ``g <- g + weight_decay * p``; ``sum <- sum + g^2`` (starting at
    ``initial_accumulator_value``);
    ``p <- p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)``.
    """
    _nonneg(lr, "learning rate")
    _nonneg(lr_decay, "lr_decay value")
    _nonneg(weight_decay, "weight_decay value")
    _nonneg(initial_accumulator_value, "initial_accumulator_value value")
    _nonneg(eps, "epsilon value")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_adagrad(lr_decay, initial_accumulator_value, eps),
        T.scale_by_learning_rate(lr),
    )


adagrad.static_when_zero = ("weight_decay",)  # type: ignore[attr-defined]
