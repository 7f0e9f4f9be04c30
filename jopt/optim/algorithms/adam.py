"""The Adam family: ``torch.optim.Adam``, ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam`` and
``SparseAdam``."""

from __future__ import annotations

from typing import Any

import jopt
from jopt.core import GradientTransformation, declare
from jopt.optim.optimizer import Optimizer, check_kernel_flags
from jopt.optimizers.common import check_torch_adam

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "SparseAdam"]


@declare(static_when_zero=("weight_decay",))
def _adam(
    lr: Any = 1e-3,
    betas: Any = (0.9, 0.999),
    eps: Any = 1e-8,
    weight_decay: Any = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
) -> GradientTransformation:
    """torch's Adam group: AdamW's decay when ``decoupled_weight_decay`` (as torch's AdamW)."""
    factory = jopt.adamw if decoupled_weight_decay else jopt.adam
    return factory(lr, betas, eps, weight_decay, amsgrad, maximize)


class Adam(Optimizer):
    """``torch.optim.Adam`` over :func:`jopt.adam` (:func:`jopt.adamw` when decoupled).

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(_adam)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_torch_adam(lr, betas, eps, weight_decay, foreach=foreach, capturable=capturable)
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
                foreach=foreach,
                capturable=capturable,
                differentiable=differentiable,
                fused=fused,
                decoupled_weight_decay=decoupled_weight_decay,
            ),
        )
        check_kernel_flags(fused, foreach, differentiable)


class AdamW(Adam):
    """``torch.optim.AdamW`` over :func:`jopt.adamw`: ``p <- p - lr * (adam + wd * p)``.

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )



class Adamax(Optimizer):
    """``torch.optim.Adamax`` over :func:`jopt.adamax`: Adam with the infinity norm ``exp_inf``
    in place of the second moment, and coupled (L2) weight decay.

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.adamax)

    def __init__(
        self,
        params: Any,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                foreach=foreach,
                maximize=maximize,
                differentiable=differentiable,
                capturable=capturable,
            ),
        )


class NAdam(Optimizer):
    """``torch.optim.NAdam`` over :func:`jopt.nadam`: Adam with Nesterov momentum on torch's
    ``momentum_decay`` schedule (its product kept as ``mu_product``); L2 weight decay, or
    AdamW's with ``decoupled_weight_decay``.

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.nadam)

    def __init__(
        self,
        params: Any,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                momentum_decay=momentum_decay,
                decoupled_weight_decay=decoupled_weight_decay,
                maximize=maximize,
                foreach=foreach,
                capturable=capturable,
                differentiable=differentiable,
            ),
        )


class RAdam(Optimizer):
    """``torch.optim.RAdam`` over :func:`jopt.radam`: Adam whose adaptive step is rectified,
    and plain bias-corrected momentum while the variance estimate is too short to trust; L2
    weight decay, or AdamW's with ``decoupled_weight_decay``.

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.radam)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                maximize=maximize,
                foreach=foreach,
                capturable=capturable,
                decoupled_weight_decay=decoupled_weight_decay,
                differentiable=differentiable,
            ),
        )


class SparseAdam(Optimizer):
    """``torch.optim.SparseAdam`` over :func:`jopt.sparse_adam`: lazy Adam. torch takes sparse
    gradients; here the gradient is dense and its zero entries are the ones a sparse gradient
    leaves out: they keep their moments and do not move."""

    functional = staticmethod(jopt.sparse_adam)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, maximize=maximize))
