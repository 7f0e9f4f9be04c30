"""Sign-based steps: ``torch.optim.Rprop``."""

from __future__ import annotations

from typing import Any

import jopt
from jopt.optim.optimizer import Optimizer

__all__ = ["Rprop"]


class Rprop(Optimizer):
    """``torch.optim.Rprop`` over :func:`jopt.rprop`: each entry moves by its own step size
    against the sign of its gradient; the step size (``step_size``, from ``lr``) grows by
    ``etas[1]`` while the sign holds and shrinks by ``etas[0]`` when it flips. As in torch,
    ``lr`` is read once, when the step sizes are made.

    Kernel flags are checked as torch checks them; XLA compiles one program whatever they say."""

    functional = staticmethod(jopt.rprop)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            dict(
                lr=lr,
                etas=tuple(etas),
                step_sizes=tuple(step_sizes),
                foreach=foreach,
                maximize=maximize,
                differentiable=differentiable,
                capturable=capturable,
            ),
        )
