"""Optimizers of orthogonalized updates: Muon."""

from __future__ import annotations

from typing import Any

import jax

from jopt import transforms as T
from jopt.core import GradientTransformationExtraArgs, declare, is_zero
from jopt.optimizers.common import LearningRate, Scalar, _check, _one_element, _optimizer
from jopt.transforms.orthogonal import NS_COEFFICIENTS, NS_EPS, NS_STEPS

__all__ = ["muon"]


def _only_matrices(params: Any) -> None:
    for p in jax.tree.leaves(params):
        if p.ndim != 2:
            raise ValueError(
                "Muon only supports 2D parameters whereas we found a parameter with size: "
                f"torch.Size({list(p.shape)})"
            )


@declare(static_when_zero=("weight_decay",), static=("ns_steps",), leafwise=True)
def muon(
    lr: LearningRate = 1e-3,
    weight_decay: Scalar = 0.1,
    momentum: Scalar = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[Scalar, Scalar, Scalar] = NS_COEFFICIENTS,
    eps: Scalar = NS_EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: str | None = None,
) -> GradientTransformationExtraArgs:
    """Muon, ``torch.optim.Muon``, for 2-D parameters.

    ``buf <- lerp(buf, g, 1 - momentum)``, ``u = lerp(g, buf, momentum)`` (nesterov) or
    ``buf``; ``O`` = ``ns_steps`` Newton–Schulz iterations on ``u`` in bfloat16;
    ``p <- p - lr * (ratio * O + weight_decay * p)`` with ``ratio`` from ``adjust_lr_fn``
    (:func:`jopt.transforms.adjust_lr_by_shape`). Other parameters (biases, embeddings) belong
    to another optimizer, as in torch.
    """
    lr = _one_element(lr, "lr")
    _check(lr, lambda v: v >= 0.0, f"Learning rate should be >= 0 but is: {lr}")
    _check(momentum, lambda v: v >= 0.0, f"momentum should be >= 0 but is: {momentum}")
    _check(weight_decay, lambda v: v >= 0.0, f"weight decay should be >= 0 but is: {weight_decay}")
    if adjust_lr_fn is not None and adjust_lr_fn not in ("original", "match_rms_adamw"):
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    return _optimizer(
        T.ema_momentum(momentum, nesterov),
        T.orthogonalize_by_newton_schulz(tuple(ns_coefficients), ns_steps, eps),
        T.adjust_lr_by_shape(adjust_lr_fn),
        None if is_zero(weight_decay) else T.add_decayed_weights(weight_decay),
        T.scale_by_learning_rate(lr),
        refuse_complex=(RuntimeError, "Muon does not support complex parameters"),
        check_params=_only_matrices,
    )


