"""Hypergradient descent (Baydin et al., ICLR 2018): SGD-HD, SGDN-HD and Adam-HD, whose
learning rate is state, updated each step by the hypergradient
(:func:`jopt.transforms.scale_by_hypergradient`)."""

from __future__ import annotations

from jopt import transforms as T
from jopt.core import GradientTransformationExtraArgs, declare, identity, is_zero
from jopt.optimizers.common import Scalar, _check_adam, _nonneg, _optimizer
from jopt.optimizers.sgd import check_nesterov

__all__ = ["adam_hd", "sgd_hd"]


def _no_schedule(lr: object, name: str) -> None:
    if callable(lr):
        raise TypeError(
            f"{name}'s learning rate is state that its hypergradient updates; give its initial "
            "value, not a schedule"
        )


@declare(static_when_zero=("momentum", "weight_decay"))
def sgd_hd(
    lr: Scalar = 1e-3,
    momentum: Scalar = 0.0,
    dampening: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    hypergrad_lr: Scalar = 1e-6,
) -> GradientTransformationExtraArgs:
    """SGD-HD, and SGDN-HD with ``nesterov=True``: torch's SGD whose rate follows its hypergradient.

    ``g <- g + weight_decay * p``; ``d`` is torch's SGD direction (``g``, the momentum buffer,
    or ``g + momentum * buf``); ``alpha <- alpha + hypergrad_lr * g . d_prev`` (all leaves);
    ``p <- p - alpha * d``. ``lr`` is the initial rate, read at the first step (so an injected
    ``lr`` set before it, as a sweep sets each run's, is the one the rule starts from); the
    rate now is the state's ``lr``. The authors' torch code: ``SGDHD(params, lr, momentum,
    dampening, weight_decay, nesterov, hypergrad_lr)`` (default ``hypergrad_lr=1e-6``; the
    paper's experiments use 1e-3).
    """
    _no_schedule(lr, "sgd_hd")
    _nonneg(lr, "learning rate")
    _nonneg(momentum, "momentum value")
    _nonneg(weight_decay, "weight_decay value")
    _nonneg(hypergrad_lr, "hypergrad_lr value")
    check_nesterov(nesterov, momentum, dampening)
    direction = identity() if is_zero(momentum) else T.trace(momentum, dampening, nesterov)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_hypergradient(direction, lr, hypergrad_lr),
    )


@declare(static_when_zero=("weight_decay",))
def adam_hd(
    lr: Scalar = 1e-3,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    hypergrad_lr: Scalar = 1e-8,
) -> GradientTransformationExtraArgs:
    """Adam-HD: torch's Adam whose rate follows its hypergradient.

    ``g <- g + weight_decay * p``; ``d = m_hat / (sqrt(v_hat) + eps)`` (torch's Adam
    direction); ``alpha <- alpha + hypergrad_lr * g . d_prev`` (all leaves);
    ``p <- p - alpha * d``. ``lr`` is the initial rate, read at the first step; the rate now
    is the state's ``lr``. The authors' torch code: ``AdamHD(params, lr, betas, eps,
    weight_decay, hypergrad_lr)`` (default ``hypergrad_lr=1e-8``; the paper's experiments use
    1e-7), whose dot product puts ``eps`` before the bias correction of ``v``; jopt keeps the
    paper's ``m_hat / (sqrt(v_hat) + eps)``, which is torch's Adam step.
    """
    _no_schedule(lr, "adam_hd")
    _check_adam(lr, betas, eps, weight_decay)
    _nonneg(hypergrad_lr, "hypergrad_lr value")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_hypergradient(T.scale_by_adam(tuple(betas), eps, amsgrad), lr, hypergrad_lr),
    )
