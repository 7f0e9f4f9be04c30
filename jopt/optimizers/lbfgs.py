"""L-BFGS, functional: ``jopt.lbfgs``, whose step evaluates the loss function itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt.optimizers.common import _nonneg, _one_element
from jopt.transforms.lbfgs import LbfgsRun, LbfgsState, lbfgs_machine, run_lbfgs
from jopt.transforms.lbfgs_memory import init_lbfgs_state

__all__ = ["Lbfgs", "lbfgs", "ravel"]


def ravel(tree: Any) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """``(vector, unravel)``: the leaves of ``tree`` raveled and concatenated in order (torch's
    flattening of its parameter list), in their promoted dtype, and the way back (one
    ``split``, each leaf in its own dtype). Real floating-point leaves only."""
    leaves, treedef = jax.tree.flatten(tree)
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"lbfgs takes real floating-point parameters, got one of dtype "
                f"{jnp.result_type(leaf)}"
            )
    dtype = jnp.result_type(*leaves)
    shapes = [jnp.shape(leaf) for leaf in leaves]
    dtypes = [jnp.result_type(leaf) for leaf in leaves]
    ends = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
    parts = [jnp.ravel(jnp.asarray(leaf)).astype(dtype) for leaf in leaves]
    vector = parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def unravel(v: jax.Array) -> Any:
        chunks = jnp.split(v, ends) if len(shapes) > 1 else [v]
        return treedef.unflatten(
            [c.reshape(s).astype(t) for c, s, t in zip(chunks, shapes, dtypes)]
        )

    return vector, unravel


class Lbfgs(NamedTuple):
    """The functional L-BFGS: ``init(params) -> state`` and ``step(loss_fn, params, state,
    *args, has_aux=False, **kwargs) -> (params, state, loss)``, one torch ``LBFGS.step``
    (``loss`` is that of the first evaluation, ``(loss, aux)`` with ``has_aux``).

    For other drivers: ``run(evaluate, x, state, carry)`` is the step over a flat vector with
    ``evaluate(x, carry) -> (loss, grad, carry, aux)``; ``start(state, x) -> run`` and
    ``tick(run, loss, grad) -> run`` hand the evaluations over one at a time (evaluate at
    ``run.x_eval`` until ``run.done``; the new vector is ``run.x``), which is how the facade
    calls a torch closure between them.
    """

    init: Callable[[Any], LbfgsState]
    step: Callable[..., tuple[Any, LbfgsState, Any]]
    run: Callable[..., tuple[jax.Array, LbfgsState, Any, Any, Any]]
    start: Callable[[LbfgsState, jax.Array], LbfgsRun]
    tick: Callable[[LbfgsRun, Any, jax.Array], LbfgsRun]


def lbfgs(
    lr: float | jax.Array = 1,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float | jax.Array = 1e-7,
    tolerance_change: float | jax.Array = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> Lbfgs:
    """L-BFGS, ``torch.optim.LBFGS``: one ``step`` is torch's whole step, up to ``max_iter``
    iterations and ``max_eval`` evaluations (default ``max_iter * 5 // 4``), in one
    ``lax.while_loop`` that jits.

    Each iteration moves ``x <- x + t d`` along the two-loop direction ``d = -H g`` of the
    last ``history_size`` pairs ``(s, y)``, with ``t = min(1, 1/|g|_1) lr`` at the first
    iteration and ``lr`` after, or ``t`` from a strong-Wolfe search with
    ``line_search_fn="strong_wolfe"``; torch's tolerances stop it early
    (:func:`jopt.transforms.lbfgs.lbfgs_machine`). The state carries torch's names (``d``,
    ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``,
    ``n_iter``, ``func_evals``) over the flat vector of all leaves.

    ``lr``, ``tolerance_grad`` and ``tolerance_change`` may be arrays (traced, no recompiles);
    the integers shape the program. ``jax.jit(opt.step, static_argnums=0)`` compiles the step.
    """
    lr = _one_element(lr, "lr")
    _nonneg(lr, "learning rate")
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    line_search = line_search_fn is not None

    def check_line_search() -> None:
        if line_search and line_search_fn != "strong_wolfe":
            raise RuntimeError("only 'strong_wolfe' is supported")

    machine = lbfgs_machine(
        lr, max_iter, max_eval, tolerance_grad, tolerance_change, history_size, line_search
    )

    def init(params: Any) -> LbfgsState:
        vector, _ = ravel(params)
        return init_lbfgs_state(vector.shape[0], vector.dtype, history_size)

    def start(state: LbfgsState, x: jax.Array) -> LbfgsRun:
        check_line_search()
        return machine.start(state, x)

    def run(evaluate: Callable, x: jax.Array, state: LbfgsState, carry: Any = None) -> Any:
        check_line_search()
        return run_lbfgs(machine, evaluate, x, state, carry)

    def step(
        loss_fn: Callable[..., Any],
        params: Any,
        state: LbfgsState,
        *args: Any,
        has_aux: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, LbfgsState, Any]:
        x, unravel = ravel(params)

        def evaluate(x: jax.Array, carry: Any) -> tuple[Any, jax.Array, Any, Any]:
            # Differentiated with respect to the leaves; their gradients are concatenated.
            out, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(unravel(x), *args, **kwargs)
            loss, aux = out if has_aux else (out, None)
            return loss, ravel(grads)[0], carry, aux

        x, state, loss, aux, _ = run(evaluate, x, state)
        return unravel(x), state, ((loss, aux) if has_aux else loss)

    return Lbfgs(init, step, run, start, machine.tick)
