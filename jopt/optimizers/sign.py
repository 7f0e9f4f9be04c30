"""Sign-based optimizers: Rprop."""

from __future__ import annotations

from jopt import transforms as T
from jopt.core import GradientTransformationExtraArgs, is_concrete
from jopt.optimizers.common import LearningRate, Scalar, _nonneg, _one_element, _optimizer

__all__ = ["rprop"]


def rprop(
    lr: LearningRate = 1e-2,
    etas: tuple[Scalar, Scalar] = (0.5, 1.2),
    step_sizes: tuple[Scalar, Scalar] = (1e-6, 50),
    maximize: bool = False,
) -> GradientTransformationExtraArgs:
    """Resilient backpropagation, ``torch.optim.Rprop``.

    Per entry, the step size (starting at ``lr``) grows by ``etas[1]`` while the gradient keeps
    its sign and shrinks by ``etas[0]`` when it flips (that step then skips the entry), within
    ``step_sizes``; ``p <- p - sign(g) * step_size`` (:func:`jopt.transforms.scale_by_rprop`).
    """
    lr = _one_element(lr, "lr")
    _nonneg(lr, "learning rate")
    etaminus, etaplus = etas
    if (
        is_concrete(etaminus)
        and is_concrete(etaplus)
        and not 0.0 < float(etaminus) < 1.0 < float(etaplus)
    ):
        raise ValueError(f"Invalid eta values: {etaminus}, {etaplus}")
    return _optimizer(
        T.scale(-1.0) if maximize else None,
        T.scale_by_rprop(lr, tuple(etas), tuple(step_sizes)),
    )
