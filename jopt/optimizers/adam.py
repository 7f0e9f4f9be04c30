"""The Adam family: Adam, AdamW, Adamax, NAdam, RAdam and SparseAdam."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jopt import transforms as T
from jopt.core import GradientTransformationExtraArgs, declare, is_zero
from jopt.optimizers.common import (
    LearningRate,
    Scalar,
    _check,
    _check_adam,
    _nonneg,
    _one_element,
    _optimizer,
)

__all__ = ["adam", "adamax", "adamw", "nadam", "radam", "sparse_adam"]


def _betas(betas: tuple[Scalar, Scalar]) -> tuple[Scalar, Scalar]:
    """torch's Adam takes each beta as a one-element tensor too (``Tensor betas[0] must be
    1-element``)."""
    return tuple(_one_element(beta, f"betas[{i}]") for i, beta in enumerate(betas))


@declare(static_when_zero=("weight_decay",))
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
    lr = _one_element(lr, "lr")
    _check_adam(lr, betas, eps, weight_decay)
    betas = _betas(betas)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_adam(betas, eps, amsgrad),
        T.scale_by_learning_rate(lr),
    )




@declare(static_when_zero=("weight_decay",))
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
    lr = _one_element(lr, "lr")
    _check_adam(lr, betas, eps, weight_decay)
    betas = _betas(betas)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        T.scale_by_adam(betas, eps, amsgrad),
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_learning_rate(lr),
    )




@declare(static_when_zero=("weight_decay",))
def adamax(
    lr: LearningRate = 2e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Adamax, ``torch.optim.Adamax``: Adam with an infinity norm.

    ``g <- g + weight_decay * p``; ``m <- lerp(m, g, 1 - b1)``, ``u <- max(b2 * u, |g| + eps)``;
    ``p <- p - lr / (1 - b1^t) * m / u``.
    """
    lr = _one_element(lr, "lr")
    _check_adam(lr, betas, eps, weight_decay)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_adamax(tuple(betas), eps),
        T.scale_by_learning_rate(lr),
    )




def _decay_terms(weight_decay: Scalar, decoupled: bool) -> tuple[object, object]:
    """The weight decay before the direction (coupled L2) or after it (decoupled), or none."""
    if is_zero(weight_decay):
        return None, None
    term = T.add_decayed_weights(weight_decay)
    return (None, term) if decoupled else (term, None)


@declare(static_when_zero=("weight_decay",))
def nadam(
    lr: LearningRate = 2e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    momentum_decay: Scalar = 4e-3,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """NAdam, ``torch.optim.NAdam``: Adam with Nesterov momentum on a schedule.

    ``mu_t = b1 * (1 - 0.5 * 0.96^(t * momentum_decay))``; ``p <- p - lr * ((1 - mu_t) /
    (1 - prod mu) * g + mu_{t+1} / (1 - prod mu * mu_{t+1}) * m) / (sqrt(v_hat) + eps)``
    (:func:`jopt.transforms.scale_by_nadam`). Weight decay is L2 on ``g``, or with
    ``decoupled_weight_decay`` AdamW's ``p <- p - lr * weight_decay * p``.
    """
    lr = _one_element(lr, "lr")
    _check_adam(lr, betas, eps, weight_decay)
    _nonneg(momentum_decay, "momentum_decay value")
    coupled, decoupled = _decay_terms(weight_decay, decoupled_weight_decay)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        coupled,
        T.scale_by_nadam(tuple(betas), eps, momentum_decay),
        decoupled,
        T.scale_by_learning_rate(lr),
    )




@declare(static_when_zero=("weight_decay",))
def radam(
    lr: LearningRate = 1e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """RAdam, ``torch.optim.RAdam``: Adam with its variance rectified.

    While the length of the approximated moving average ``rho_t <= 5`` the step is momentum,
    ``p <- p - lr * m_hat``; after, Adam's step times the rectification term
    (:func:`jopt.transforms.scale_by_radam`). Weight decay as in :func:`nadam`.
    """
    lr = _one_element(lr, "lr")
    _check_adam(lr, betas, eps, weight_decay)
    coupled, decoupled = _decay_terms(weight_decay, decoupled_weight_decay)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        coupled,
        T.scale_by_radam(tuple(betas), eps),
        decoupled,
        T.scale_by_learning_rate(lr),
    )




def sparse_adam(
    lr: LearningRate = 1e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Lazy Adam, ``torch.optim.SparseAdam`` on a dense gradient.

    Only the entries whose gradient is non-zero (those of torch's sparse gradient) update their
    moments and move, by Adam's step with the bias corrections of the global step count
    (:func:`jopt.transforms.scale_by_sparse_adam`).
    """
    lr = _one_element(lr, "lr")
    _check(lr, lambda v: v > 0.0, f"Invalid learning rate: {lr}")
    _check(eps, lambda v: v > 0.0, f"Invalid epsilon value: {eps}")
    for i, beta in enumerate(betas):
        _check(beta, lambda b: 0.0 <= b < 1.0, f"Invalid beta parameter at index {i}: {beta}")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        T.scale_by_sparse_adam(tuple(betas), eps),
        T.scale_by_learning_rate(lr),
        refuse_complex=(ValueError, _NO_COMPLEX),
        check_params=_dense_real,
    )


_NO_COMPLEX = "SparseAdam does not support complex parameters"


def _dense_real(params: object) -> None:
    """torch's SparseAdam refuses complex parameters when it is built."""
    if any(jnp.iscomplexobj(p) for p in jax.tree.leaves(params)):
        raise ValueError(_NO_COMPLEX)
