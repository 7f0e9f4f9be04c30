"""Averages of squared gradients: RMSprop, Adagrad and Adadelta."""

from __future__ import annotations

from jopt import transforms as T
from jopt.core import GradientTransformationExtraArgs, declare, is_zero
from jopt.optimizers.common import LearningRate, Scalar, _check, _nonneg, _one_element, _optimizer

__all__ = ["adadelta", "adagrad", "rmsprop"]


@declare(static_when_zero=("momentum", "weight_decay"))
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
    lr = _one_element(lr, "lr")
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




@declare(static_when_zero=("weight_decay",))
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
    lr = _one_element(lr, "lr")
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




@declare(static_when_zero=("weight_decay",))
def adadelta(
    lr: LearningRate = 1.0,
    rho: Scalar = 0.9,
    eps: Scalar = 1e-6,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Adadelta, ``torch.optim.Adadelta``.

    ``g <- g + weight_decay * p``; ``s <- rho * s + (1 - rho) * g^2``,
    ``d = sqrt(acc + eps) / sqrt(s + eps) * g``, ``acc <- rho * acc + (1 - rho) * d^2``;
    ``p <- p - lr * d``.
    """
    lr = _one_element(lr, "lr")
    _nonneg(lr, "learning rate")
    _check(rho, lambda v: 0.0 <= v <= 1.0, f"Invalid rho value: {rho}")
    _nonneg(eps, "epsilon value")
    _nonneg(weight_decay, "weight_decay value")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_adadelta(rho, eps),
        T.scale_by_learning_rate(lr),
    )


