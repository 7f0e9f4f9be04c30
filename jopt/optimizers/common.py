"""What the optimizers share: torch's argument checks and the chain every optimizer is.

An optimizer is :func:`_optimizer` over a few transforms: the present terms in order, the
gradients checked against the parameters, complex parameters optimized as pairs of reals (or
refused, where torch refuses them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.core import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Schedule,
    chain_present,
    check_tree_match,
    is_concrete,
)

__all__ = ["LearningRate", "Scalar"]

Scalar = float | jax.Array
LearningRate = float | jax.Array | Schedule


def _check(value: Any, ok: Callable[[Any], bool], message: str) -> None:
    """torch's argument check, for values known at construction (not tracers or schedules).

    Like torch it compares the value itself, so a value that is no number (``"0.1"``,
    ``None``) raises torch's ``TypeError`` rather than passing as ``float("0.1")``; an array
    of one element is compared as its number, as torch compares a one-element tensor.
    """
    if is_concrete(value) and not ok(_number(value)):
        raise ValueError(message)


def _number(value: Any) -> Any:
    if isinstance(value, jax.Array | np.ndarray) and value.size == 1:
        return float(np.asarray(value).reshape(()))
    return value


def _is_tensor(value: Any) -> bool:
    """An array where torch would have a tensor (a tracer included); not a schedule."""
    return isinstance(value, jax.Array | np.ndarray)


def _one_element(value: Any, what: str) -> Any:
    """torch's tensor hyperparameter (``lr``, Adam's ``betas[i]``): one element, or
    ``Tensor lr must be 1-element``; kept as a 0-d array, as torch squeezes it, so that it
    scales every parameter the way a number does."""
    if not _is_tensor(value) or value.ndim == 0:
        return value
    if value.size != 1:
        raise ValueError(f"Tensor {what} must be 1-element")
    return jnp.reshape(value, ())


def _nonneg(value: Any, what: str) -> None:
    """torch's ``if not 0.0 <= value``: a NaN is refused."""
    _check(value, lambda v: v >= 0.0, f"Invalid {what}: {value}")


def _not_negative(value: Any, what: str) -> None:
    """torch's ``if value < 0.0`` (SGD's checks): a NaN passes, as in torch."""
    _check(value, lambda v: not v < 0.0, f"Invalid {what}: {value}")


def _as_real(tree: Any) -> Any:
    """Complex leaves as real pairs on a last axis of 2 (torch's ``view_as_real``)."""
    return jax.tree.map(
        lambda x: jnp.stack([x.real, x.imag], -1) if jnp.iscomplexobj(x) else x, tree
    )


def _as_complex_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda x, ref: jax.lax.complex(x[..., 0], x[..., 1]) if jnp.iscomplexobj(ref) else x,
        tree,
        like,
    )


def _optimizer(
    *transforms: GradientTransformation | None,
    refuse_complex: tuple[type[Exception], str] | None = None,
    check_params: Callable[[Any], None] | None = None,
) -> GradientTransformationExtraArgs:
    """Chain the present terms; check gradients against the parameters when they are given.

    Complex parameters are optimized as torch does, as pairs of reals: the state of a complex
    parameter is real with a trailing axis of 2. ``refuse_complex`` is torch's error for an
    optimizer that takes no complex parameters, raised by ``update`` as torch raises it at its
    step; ``check_params`` is torch's check of the parameters at construction, run by
    ``init``.
    """
    inner = chain_present(*transforms)

    def refuse(tree: Any) -> None:
        if refuse_complex and any(jnp.iscomplexobj(x) for x in jax.tree.leaves(tree)):
            kind, message = refuse_complex
            raise kind(message)

    def init(params: Any) -> Any:
        if check_params is not None:
            check_params(params)
        return inner.init(_as_real(params))

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        if params is not None:
            check_tree_match(updates, params)
        refuse(updates)
        if not any(jnp.iscomplexobj(u) for u in jax.tree.leaves(updates)):
            return inner.update(updates, state, params, **extra)
        real, state = inner.update(_as_real(updates), state, _as_real(params), **extra)
        return _as_complex_like(real, updates), state

    return GradientTransformationExtraArgs(init, update)


def _check_adam(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """Adam's checks, in torch's order: lr, eps, each beta, weight decay."""
    _nonneg(lr, "learning rate")
    _nonneg(eps, "epsilon value")
    for i, beta in enumerate(betas):
        _check(beta, lambda b: 0.0 <= b < 1.0, f"Invalid beta parameter at index {i}: {beta}")
    _nonneg(weight_decay, "weight_decay value")


def check_torch_adam(
    lr: Any,
    betas: Any,
    eps: Any,
    weight_decay: Any,
    *,
    foreach: bool | None,
    capturable: bool,
) -> None:
    """``torch.optim.Adam``'s (and AdamW's) constructor checks, in its order.

    Beyond :func:`jopt.adam`'s, the ones its kernels impose: ``betas`` both numbers or both
    tensors, and no tensor ``lr`` or ``betas`` with ``foreach=True`` unless ``capturable``.
    The functional ``jopt.adam`` takes any mix (``betas=(schedule, 0.999)``); the facade,
    which ports torch code, refuses what torch refuses.
    """
    refused = bool(foreach) and not capturable
    if _is_tensor(lr) and refused:
        raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
    lr = _one_element(lr, "lr")
    _check_adam(lr, betas, eps, weight_decay)
    if _is_tensor(betas[0]) != _is_tensor(betas[1]):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if _is_tensor(beta) and refused:
            raise ValueError(
                f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True"
            )
        _one_element(beta, f"betas[{i}]")
