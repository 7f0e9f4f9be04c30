"""Averages of squared gradients: ``torch.optim.RMSprop``, ``Adagrad`` and ``Adadelta``."""

from __future__ import annotations

from typing import Any

import jopt
from jopt.optim.optimizer import Optimizer, check_kernel_flags

__all__ = ["Adadelta", "Adagrad", "RMSprop"]


class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` over :func:`jopt.rmsprop` (eps outside the sqrt, centered).

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.rmsprop)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                alpha=alpha,
                eps=eps,
                centered=centered,
                weight_decay=weight_decay,
                capturable=capturable,
                foreach=foreach,
                maximize=maximize,
                differentiable=differentiable,
            ),
        )


class Adagrad(Optimizer):
    """``torch.optim.Adagrad`` over :func:`jopt.adagrad` (lr_decay, initial accumulator).

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.adagrad)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                lr_decay=lr_decay,
                eps=eps,
                weight_decay=weight_decay,
                initial_accumulator_value=initial_accumulator_value,
                foreach=foreach,
                maximize=maximize,
                differentiable=differentiable,
                fused=fused,
            ),
        )
        check_kernel_flags(fused, foreach, differentiable)


class Adadelta(Optimizer):
    """``torch.optim.Adadelta`` over :func:`jopt.adadelta`: a step scaled by the ratio of the
    running RMS of past steps (``acc_delta``) to that of the gradients (``square_avg``), times
    ``lr`` (1.0 by default, as in torch).

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.adadelta)

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                rho=rho,
                eps=eps,
                weight_decay=weight_decay,
                maximize=maximize,
                capturable=capturable,
                foreach=foreach,
                differentiable=differentiable,
            ),
        )
