"""Stochastic gradient descent: ``torch.optim.SGD`` and ``torch.optim.ASGD``."""

from __future__ import annotations

from typing import Any

import jopt
from jopt.optim.optimizer import Optimizer, check_kernel_flags

__all__ = ["ASGD", "SGD"]


class SGD(Optimizer):
    """``torch.optim.SGD`` over :func:`jopt.sgd` (momentum, dampening, nesterov, weight decay).

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.sgd)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
                foreach=foreach,
                differentiable=differentiable,
                fused=fused,
            ),
        )
        check_kernel_flags(fused, foreach, differentiable)



class ASGD(Optimizer):
    """``torch.optim.ASGD`` over :func:`jopt.asgd`: SGD with a decaying step ``eta`` and, from
    step ``t0`` on, the running average of the iterates in torch's ``ax`` state entry (read it
    from ``state_dict()``, as from torch's ``optimizer.state[p]["ax"]``).

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.asgd)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                lambd=lambd,
                alpha=alpha,
                t0=t0,
                weight_decay=weight_decay,
                foreach=foreach,
                maximize=maximize,
                differentiable=differentiable,
                capturable=capturable,
            ),
        )
