"""Differentiable training runs: ``T`` optimizer steps in one ``lax.scan``, and hypergradients.

``unroll(opt, loss_fn, params, steps)`` runs ``steps`` steps of any jopt (or optax)
transformation on ``loss_fn`` and returns the final parameters, state and the loss of every
step. It is an ordinary JAX function, so ``jax.grad`` of anything computed from its result
reaches the initial parameters and every hyperparameter the optimizer closes over::

    def validation_loss(hp):
        opt = jopt.adam(lr=hp["lr"], betas=(hp["b1"], 0.999))
        run = jopt.unroll(opt, train_loss, params, steps=1000)
        return val_loss(run.params)

    jax.grad(validation_loss)(hp)                   # d val_loss / d (lr, b1), through 1000 steps

Reverse mode keeps what the backward pass needs from every step. ``remat`` bounds it:

- ``None``: a plain scan; memory grows like ``T`` times everything one step computes.
- ``"step"``: ``jax.checkpoint`` around each step; ``T`` copies of the carry (parameters and
  optimizer state), each step recomputed once in the backward pass.
- ``"sqrt"`` (the default) or an int ``B``: the steps in blocks of ``B = ceil(sqrt(T))``, a
  scan of checkpointed blocks; the carry at each block boundary and one block's residuals are
  kept, so memory grows like ``sqrt(T)``, for one more forward pass of compute. Without
  differentiation the blocks cost nothing.

``truncate=K`` differentiates through the last ``K`` steps only (truncated backpropagation):
the carry entering them is a constant, so the earlier steps keep no residuals. Its hypergradient
is biased towards short horizons (Wu et al., 2018); it is exact when ``K >= steps``.

``hypergrad(factory, hyperparams, loss_fn, params, steps)`` is the common case in one call:
the loss after ``steps`` steps of ``factory(**hyperparams)`` and its gradient with respect to
the hyperparameters, in reverse mode or, with ``mode="forward"``, by one forward-mode pass per
hyperparameter (no stored steps at all; the only way through :func:`jopt.lbfgs`, whose step is
a ``lax.while_loop`` that JAX differentiates forward only).

Where the derivative is zero or undefined. jopt differentiates the computation torch runs, so a
rule that branches or rounds has the derivative of the branch taken:

- **Rprop** moves by ``sign(g) * step_size``: the sign has derivative 0, so the hypergradient
  flows only through the step sizes (``lr`` and ``etas`` scale them); where a step size sits at
  a bound of ``step_sizes`` its derivative is 0.
- **AMSGrad** (``amsgrad=True``) takes ``max(vmax, v)``: the derivative follows the larger
  (JAX splits it in half on an exact tie, which a trajectory meets only with zero gradients).
- **RAdam** switches from momentum to the rectified step when ``rho_t > 5``: each step has the
  derivative of its own branch; the switch itself is not differentiated.
- **A momentum of exactly 0 given as data** (``inject_hyperparams`` or a traced value): torch
  skips the momentum term, and so does jopt's ``trace``, so the derivative with respect to
  ``momentum`` there is 0, while the one-sided derivative from above is not; differentiate at
  a small positive momentum instead.
- **Adafactor** clips by ``max(1, rms(u) / d)``: at ``d = 1`` a vector's first update is
  ``sign(g)`` with ``rms`` exactly 1, a tie on which JAX splits the derivative in half.
- **Muon** rounds its Newton–Schulz iteration to bfloat16 as torch does; JAX differentiates a
  rounding as the identity, so the hypergradient is that of the unrounded iteration.
- **L-BFGS**: the number of iterations and evaluations, the line search's accepted step and
  the stopping rules are decisions; forward mode differentiates the path taken (with a fixed
  ``lr`` the step length is ``lr`` times a smooth function; with ``line_search_fn=
  "strong_wolfe"`` the accepted ``t`` is the derivative of whichever trial or interpolation was
  accepted). A perturbation that flips a decision makes the loss jump, where no derivative
  exists; jopt returns that of the current path.

torch's equivalent is ``torch.optim.X(..., differentiable=True)`` with tensor hyperparameters
and non-leaf parameters, stepped in an autograd graph (which holds every step; there is no
rematerialisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jopt.core import GradientTransformation, apply_updates
from jopt.optimizers.lbfgs import Lbfgs

__all__ = ["Remat", "Unrolled", "hypergrad", "unroll"]

Remat = Literal["sqrt", "step"] | int | None
"""How :func:`unroll` rematerialises: ``"sqrt"``, ``"step"``, a block size, or ``None``."""


class Unrolled(NamedTuple):
    """What :func:`unroll` returns: the parameters and optimizer state after the last step, and
    ``losses[t]``, the training loss at step ``t`` (before its update)."""

    params: Any
    state: Any
    losses: jax.Array


def _block_size(remat: Remat, steps: int) -> int | None:
    """Steps per checkpointed block (``None``: no blocks)."""
    if remat is None or remat == "step":
        return None
    if remat == "sqrt":
        return max(1, math.ceil(math.sqrt(steps)))
    if isinstance(remat, bool) or not isinstance(remat, int) or remat < 1:
        raise ValueError(
            f"remat must be 'sqrt', 'step', None or a positive block size, got {remat!r}"
        )
    return remat


def _take(batches: Any, start: int, stop: int) -> Any:
    return None if batches is None else jax.tree.map(lambda x: x[start:stop], batches)


def _blocks(batches: Any, count: int, size: int) -> Any:
    """The first ``count * size`` batches as ``count`` blocks of ``size``."""
    if batches is None:
        return None
    return jax.tree.map(lambda x: x[: count * size].reshape(count, size, *x.shape[1:]), batches)


def unroll(
    opt: GradientTransformation | Lbfgs,
    loss_fn: Callable[..., jax.Array],
    params: Any,
    steps: int,
    *,
    batches: Any = None,
    state: Any = None,
    remat: Remat = "sqrt",
    truncate: int | None = None,
) -> Unrolled:
    """``steps`` steps of ``opt`` on ``loss_fn`` in one ``lax.scan``, differentiable end to end.

    Each step is ``g = grad(loss_fn)(p, batch)``, ``u, s = opt.update(g, s, p)``,
    ``p = apply_updates(p, u)`` (a :func:`jopt.lbfgs` step is its own ``step(loss_fn, p, s)``).
    ``batches`` is a tree of arrays with a leading axis of ``steps`` (step ``t`` reads
    ``batch[t]``) or ``None`` (``loss_fn(p)``, full batch). ``state`` defaults to
    ``opt.init(params)``; pass one to continue a run or to differentiate with respect to
    ``state.hyperparams`` of an ``inject_hyperparams`` optimizer. ``remat`` and ``truncate``: see
    the module docstring. torch: a loop of ``opt.step()`` with ``differentiable=True``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if truncate is not None and (isinstance(truncate, bool) or not isinstance(truncate, int)
                                 or truncate < 0):
        raise ValueError(f"truncate must be a non-negative int or None, got {truncate!r}")
    if batches is not None:
        lengths = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(batches)}
        if lengths != {steps}:
            raise ValueError(
                f"batches must have a leading axis of steps={steps} on every leaf, got {lengths}"
            )
    _block_size(remat, steps)  # checks remat before anything is traced
    if state is None:
        state = opt.init(params)

    def step(carry: tuple[Any, Any], batch: Any) -> tuple[tuple[Any, Any], jax.Array]:
        p, s = carry
        args = () if batches is None else (batch,)
        if isinstance(opt, Lbfgs):
            p, s, loss = opt.step(loss_fn, p, s, *args)
            return (p, s), loss
        loss, grads = jax.value_and_grad(loss_fn)(p, *args)
        updates, s = opt.update(grads, s, p)
        return (apply_updates(p, updates), s), loss

    def plain(carry: Any, xs: Any, n: int) -> tuple[Any, jax.Array]:
        return lax.scan(step, carry, xs, length=n)

    def segment(carry: Any, xs: Any, n: int) -> tuple[Any, jax.Array]:
        """``n`` steps, rematerialised as asked."""
        if n == 0:
            return carry, jnp.zeros((0,))
        if remat == "step":
            return lax.scan(jax.checkpoint(step), carry, xs, length=n)
        block = _block_size(remat, n)
        if block is None or block >= n:
            return plain(carry, xs, n)
        count, rest = divmod(n, block)

        @jax.checkpoint
        def one_block(c: Any, x: Any) -> tuple[Any, jax.Array]:
            return plain(c, x, block)

        carry, losses = lax.scan(one_block, carry, _blocks(xs, count, block), length=count)
        losses = losses.reshape(-1)
        if rest:
            tail = _take(xs, count * block, n)
            carry, more = jax.checkpoint(lambda c, x: plain(c, x, rest))(carry, tail)
            losses = jnp.concatenate([losses, more])
        return carry, losses

    carry = (params, state)
    if truncate is not None and truncate < steps:
        head = steps - truncate
        carry, head_losses = plain(carry, _take(batches, 0, head), head)
        carry, head_losses = lax.stop_gradient((carry, head_losses))
        carry, tail_losses = segment(carry, _take(batches, head, steps), truncate)
        losses = jnp.concatenate([head_losses, tail_losses.astype(head_losses.dtype)])
    else:
        carry, losses = segment(carry, batches, steps)
    return Unrolled(carry[0], carry[1], losses)


def hypergrad(
    factory: Callable[..., GradientTransformation | Lbfgs],
    hyperparams: dict[str, Any],
    loss_fn: Callable[..., jax.Array],
    params: Any,
    steps: int,
    *,
    meta_loss: Callable[[Any], jax.Array] | None = None,
    batches: Any = None,
    remat: Remat = "sqrt",
    truncate: int | None = None,
    mode: Literal["reverse", "forward"] = "reverse",
    **options: Any,
) -> tuple[jax.Array, dict[str, Any]]:
    """``(value, grads)``: the meta-loss after ``steps`` steps of ``factory(**hyperparams,
    **options)`` from ``params``, and its gradient with respect to ``hyperparams``.

    ``hyperparams`` maps argument names to floats (``{"lr": 0.1, "betas": (0.9, 0.999)}``);
    ``options`` are the factory's other, fixed arguments (``nesterov=True``). The meta-loss is
    ``meta_loss(final_params)``, by default ``loss_fn(final_params)`` (full batch; pass
    ``meta_loss`` with ``batches``). ``mode="reverse"`` is ``jax.value_and_grad`` over
    :func:`unroll` (``remat``, ``truncate`` apply); ``mode="forward"`` is ``jax.jacfwd``: one
    forward pass per hyperparameter and no stored steps, and the mode :func:`jopt.lbfgs` needs.
    torch: ``differentiable=True`` and ``torch.autograd.grad(loss, [lr, ...])``.
    """
    if mode not in ("reverse", "forward"):
        raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
    if meta_loss is None and batches is not None:
        raise ValueError("with batches, pass meta_loss: the loss the hyperparameters should lower")
    hyperparams = jax.tree.map(jnp.asarray, hyperparams)

    def final(h: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
        opt = factory(**options, **h)
        if isinstance(opt, Lbfgs) and mode == "reverse":
            raise ValueError(
                "jopt.lbfgs runs its step in a lax.while_loop, which JAX differentiates in "
                "forward mode only: pass mode='forward'"
            )
        run = unroll(opt, loss_fn, params, steps, batches=batches, remat=remat,
                     truncate=truncate)
        value = loss_fn(run.params) if meta_loss is None else meta_loss(run.params)
        return value, value

    if mode == "forward":
        grads, value = jax.jacfwd(final, has_aux=True)(hyperparams)
        return value, grads
    (value, _), grads = jax.value_and_grad(final, has_aux=True)(hyperparams)
    return value, grads
