"""Stochastic gradient descent: SGD (with momentum) and averaged SGD."""

from __future__ import annotations

from jopt import transforms as T
from jopt.core import GradientTransformationExtraArgs, declare, is_concrete, is_zero
from jopt.optimizers.common import (
    LearningRate,
    Scalar,
    _nonneg,
    _not_negative,
    _one_element,
    _optimizer,
)

__all__ = ["asgd", "momentum", "sgd"]


def check_nesterov(nesterov: bool, momentum: Scalar, dampening: Scalar) -> None:
    """torch's SGD check: Nesterov momentum needs a positive momentum and no dampening."""
    if nesterov and (
        (is_concrete(momentum) and float(momentum) <= 0)
        or (is_concrete(dampening) and float(dampening) != 0)
    ):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


@declare(static_when_zero=("momentum", "weight_decay"))
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
    lr = _one_element(lr, "lr")
    _not_negative(lr, "learning rate")
    _not_negative(momentum, "momentum value")
    _not_negative(weight_decay, "weight_decay value")
    check_nesterov(nesterov, momentum, dampening)
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        None if is_zero(momentum) else T.trace(momentum, dampening, nesterov),
        T.scale_by_learning_rate(lr),
    )




@declare(static_when_zero=("momentum", "weight_decay"))
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




@declare(static_when_zero=("weight_decay",))
def asgd(
    lr: LearningRate = 1e-2,
    lambd: Scalar = 1e-4,
    alpha: Scalar = 0.75,
    t0: Scalar = 1e6,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Averaged SGD, ``torch.optim.ASGD``.

    ``g <- g + weight_decay * p``; ``p <- p * (1 - lambd * eta) - eta * g`` with
    ``eta_t = lr / (1 + lambd * lr * (t - 1)) ** alpha``; the average of the iterates from step
    ``t0`` on is kept in the state's ``ax`` (:func:`jopt.transforms.scale_by_asgd`).
    """
    lr = _one_element(lr, "lr")
    _nonneg(lr, "learning rate")
    _nonneg(weight_decay, "weight_decay value")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_asgd(lr, lambd, alpha, t0),
    )


