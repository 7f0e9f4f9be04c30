"""Optimizers with factored second moments: Adafactor."""

from __future__ import annotations

from jopt import transforms as T
from jopt.core import GradientTransformationExtraArgs, declare, is_zero
from jopt.optimizers.common import LearningRate, Scalar, _check, _one_element, _optimizer

__all__ = ["adafactor"]


@declare(static_when_zero=("weight_decay",), leafwise=True)
def adafactor(
    lr: LearningRate = 1e-2,
    beta2_decay: Scalar = -0.8,
    eps: tuple[Scalar | None, Scalar] = (None, 1e-3),
    d: Scalar = 1.0,
    weight_decay: Scalar = 0.0,
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Adafactor, ``torch.optim.Adafactor``.

    A second moment factored into row and column averages for parameters of two or more
    dimensions, a step size relative to the parameter's RMS and clipped by ``d``
    (:func:`jopt.transforms.scale_by_adafactor`), and decoupled weight decay
    ``p <- p - lr * weight_decay * p``.
    """
    lr = _one_element(lr, "lr")
    eps1, eps2 = eps
    _check(lr, lambda v: v >= 0.0, f"Learning rate should be >= 0 but is: {lr}")
    _check(beta2_decay, lambda v: v <= 0.0, f"beta2_decay should be <= 0 but is: {beta2_decay}")
    if eps1 is not None:
        _check(eps1, lambda v: v >= 0.0, f"epsilon1 should be >= 0 but is: {eps1}")
    _check(eps2, lambda v: v >= 0.0, f"epsilon2 should be >= 0 but is: {eps2}")
    _check(d, lambda v: v >= 1.0, f"Clipping threshold d should be >= 1 but is: {d}")
    _check(weight_decay, lambda v: v >= 0.0, f"weight_decay should be >= 0 but is: {weight_decay}")
    if callable(lr) and not is_zero(weight_decay):
        raise TypeError(
            "adafactor's weight decay is scaled by the learning rate's value: give a schedule "
            "through jopt.inject_hyperparams(jopt.adafactor)(lr=schedule, ...)"
        )
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        T.scale_by_adafactor(lr, beta2_decay, tuple(eps), d),
        None if is_zero(weight_decay) else T.add_decayed_weights(lr * weight_decay),
        T.scale(-1.0),
        refuse_complex=(RuntimeError, "Adafactor does not support complex parameters"),
    )


