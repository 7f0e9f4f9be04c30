"""The rules that read each parameter's shape: ``torch.optim.Adafactor`` and ``torch.optim.Muon``.

Their functional optimizers are ``leafwise``: the facade gives them the group's leaves in their
shapes (not its flat buffer), and their state is one entry per leaf.
"""

from __future__ import annotations

from typing import Any

import jopt
from jopt.optim.optimizer import Optimizer
from jopt.transforms.orthogonal import NS_COEFFICIENTS, NS_EPS, NS_STEPS

__all__ = ["Adafactor", "Muon"]


class Adafactor(Optimizer):
    """``torch.optim.Adafactor`` over :func:`jopt.adafactor`: a second moment factored into row
    and column averages for matrices, a step relative to the parameter's RMS clipped by ``d``,
    and decoupled weight decay.

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.adafactor)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                beta2_decay=beta2_decay,
                eps=tuple(eps),
                d=d,
                weight_decay=weight_decay,
                foreach=foreach,
                maximize=maximize,
            ),
        )


class Muon(Optimizer):
    """``torch.optim.Muon`` over :func:`jopt.muon`: momentum, then the Newton–Schulz
    orthogonalisation of each 2-D parameter's update; other parameters belong to another
    optimizer, as in torch."""

    functional = staticmethod(jopt.muon)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = NS_EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_coefficients=tuple(ns_coefficients),
                eps=eps,
                ns_steps=ns_steps,
                adjust_lr_fn=adjust_lr_fn,
            ),
        )
