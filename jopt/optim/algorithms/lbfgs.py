"""Quasi-Newton steps: ``torch.optim.LBFGS``.

torch's ``LBFGS.step(closure)`` calls the closure several times per step. Here the step is
the machine of :mod:`jopt.transforms.lbfgs`: each of its ticks is one compiled call that takes
the loss and gradient at the point it asked for and says where the next one is. The facade
writes that point into the parameters (its own flat buffer, or the Variables of an nnx module),
calls the closure, reads :attr:`~jopt.optim.Optimizer.grads` and ticks again: torch's closure
evaluations, one for one. ``step(loss_fn, *args)`` runs the same machine inside one jitted
``lax.while_loop`` instead (:func:`jopt.lbfgs`). No arithmetic lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jopt
from jopt.flat import Flat, Layout
from jopt.optim import state_layout
from jopt.optim.lifting import FnKey
from jopt.optim.optimizer import Optimizer, takes_no_arguments
from jopt.optim.state_dict import match
from jopt.optimizers.lbfgs import ravel
from jopt.prune import apply_mask
from jopt.transforms.lbfgs import LbfgsState

__all__ = ["LBFGS"]

_STATIC = ("max_iter", "max_eval", "history_size", "line_search_fn")
_DYNAMIC = ("lr", "tolerance_grad", "tolerance_change")


def _vector(leaves: list[Any]) -> jax.Array:
    """torch's flat view of a parameter list: the leaves raveled and concatenated in order."""
    return ravel(list(leaves))[0]


def _leaves(vector: jax.Array, layout: Layout) -> list[jax.Array]:
    """The leaves of ``layout`` from torch's flat vector, each in its own dtype."""
    ends = np.cumsum([slot.size for slot in layout.slots])[:-1]
    parts = jnp.split(vector, ends) if len(layout) > 1 else [vector]
    return [
        part.reshape(shape).astype(layout.dtype_of(i))
        for i, (part, shape) in enumerate(zip(parts, layout.shapes))
    ]


class LBFGS(Optimizer):
    """``torch.optim.LBFGS`` over :func:`jopt.lbfgs`: per step, up to ``max_iter`` L-BFGS
    iterations ``x <- x + t d`` along the two-loop direction of the last ``history_size``
    curvature pairs, with ``t = lr`` (``min(1, 1/|g|_1) lr`` at the very first iteration) or a
    strong-Wolfe search (``line_search_fn="strong_wolfe"``), within ``max_eval`` evaluations
    (default ``max_iter * 5 // 4``) and torch's tolerances.

    As in torch: ``opt.step(closure)`` with a closure that calls :meth:`zero_grad`,
    ``loss = opt.backward(loss_fn, ...)`` and returns the loss; it is called as many times as
    torch calls it, each time with the parameters at the point being tried. ``opt.step(loss_fn,
    *args)`` runs the whole step as one compiled program. One parameter group only; the
    state (torch keeps it under the first parameter) is in :meth:`state_dict`. Pruned
    (:meth:`prune`), the iterate is torch's ``weight_orig``: the loss is evaluated at its masked
    values, with masked gradients, and the parameters hold the masked iterate.
    """

    functional = staticmethod(jopt.lbfgs)

    def __init__(
        self,
        params: Any,
        lr: float = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
    ) -> None:
        jopt.lbfgs(lr=lr)  # torch checks lr before it computes max_eval
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(
            params,
            dict(
                lr=lr,
                max_iter=max_iter,
                max_eval=max_eval,
                tolerance_grad=tolerance_grad,
                tolerance_change=tolerance_change,
                history_size=history_size,
                line_search_fn=line_search_fn,
            ),
        )
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    def _split(self, group: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The integers and the line search shape the program; the floats are data."""
        return {k: group[k] for k in _STATIC}, {k: group[k] for k in _DYNAMIC}

    # ---------------------------------------------------------------------------------------
    # Steps
    # ---------------------------------------------------------------------------------------

    def _configure(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(static items, hyperparameter arrays); a changed ``history_size`` resizes the
        history, keeping its newest pairs."""
        if len(self.param_groups) != 1:
            raise AssertionError(
                f"Expected exactly one param_group, but got {len(self.param_groups)}"
            )
        g = self._groups[0]
        static, arrays = self._group_args(0)
        if static != g.built:
            template = self.functional(**dict(static), **arrays).init(self._state_input(g))
            g.state = _load_entry(template, _entry(g.state))
            g.built = static
        if dict(static)["line_search_fn"] not in (None, "strong_wolfe"):
            raise RuntimeError("only 'strong_wolfe' is supported")
        return static, arrays

    def _x(self, flat: Flat | None, leaves: list[Any] | None, offsets: list[Any]) -> jax.Array:
        g = self._groups[0]
        if flat is not None:
            leaves = g.layout.unflatten_leaves(flat, offsets)
        return _vector(leaves)

    def _mask_vector(self, mask: Flat | None) -> jax.Array | None:
        """A pruning mask (:meth:`prune`) as torch's flat vector, ``None`` without one."""
        if mask is None:
            return None
        leaves = self._groups[0].layout.unflatten_leaves(mask)
        return jnp.concatenate([jnp.ravel(m) for m in leaves])

    def _stored(self, x: jax.Array, mask: jax.Array | None) -> tuple[Flat | None, list[Any] | None]:
        """The vector ``x`` in the group's storage: its flat buffers, or leaves for Variables.

        Pruned: ``x`` is torch's ``weight_orig``, and what is stored (what the loss sees) is
        ``weight_orig * weight_mask``."""
        g = self._groups[0]
        leaves = _leaves(x if mask is None else apply_mask(x, mask), g.layout)
        return (g.layout.flatten_leaves(leaves), None) if g.flat is not None else (None, leaves)

    def step(self, closure: Any = None, *args: Any, has_aux: bool = False, **kwargs: Any) -> Any:
        """One torch ``LBFGS.step``.

        - ``step(closure)``, a closure of no arguments: torch's idiom, re-evaluated as torch
          does (the parameters hold the trial point at each call); returns its first loss;
        - ``step(loss_fn, *args, **kwargs)``: the whole step in one jitted call, ``loss_fn``
          given what :meth:`Optimizer.step` gives it; returns the first loss (``(loss, aux)``
          with ``has_aux=True``).
        """
        if not callable(closure):
            raise TypeError(
                "LBFGS.step needs a closure (torch: step(closure)) or a loss function: "
                "it evaluates the function several times per step"
            )
        if not args and not kwargs and takes_no_arguments(closure):
            return self._closure_step(closure)
        fn, inputs, bindings = self._function_call(closure, has_aux, args, kwargs)
        result, flat, leaves, state, carried = fn(*inputs)
        for b, values in zip(bindings, carried):
            b.write(values)
        self._store([flat], [leaves], [state])
        return result

    def lower_step(self, loss_fn: Callable, *args: Any, has_aux: bool = False, **kwargs: Any):
        """The lowered program of ``step(loss_fn, *args, **kwargs)``, without running it."""
        fn, inputs, _ = self._function_call(loss_fn, has_aux, args, kwargs)
        return fn.lower(*inputs)

    def _closure_step(self, closure: Callable[[], Any]) -> Any:
        static, hps = self._configure()
        begin, tick = self._closure_programs(static)
        g = self._groups[0]
        run = begin(g.flat, self._leaf_params()[0], g.offsets, g.state, hps)
        mask = g.mask
        g.state = None  # donated: it lives in ``run`` until the step ends
        result, first = None, True
        try:
            while True:
                out = closure()
                if first:
                    result, first = out, False
                grads = self._grad[0] if self._grad is not None else self._zero_grads()
                run, done, flat, leaves = tick(run, jnp.asarray(out), grads, hps, mask)
                self._store([flat], [leaves], [None])
                if bool(done):
                    break
        finally:
            g.state = run.state
        return result

    def _zero_grads(self) -> Flat:
        layout = self._groups[0].layout
        return {k: jnp.zeros(n, layout.dtypes[k]) for k, n in layout.sizes.items()}

    def _closure_programs(self, static: tuple[Any, ...]) -> tuple[Callable, Callable]:
        key = ("lbfgs-closure", static)
        programs = self._programs.get(key)
        if programs is not None:
            return programs
        g = self._groups[0]

        def begin(flat, leaves, offsets, state, hps):
            self._compiles += 1
            opt = self.functional(**dict(static), **hps)
            return opt.start(state, self._x(flat, leaves, offsets))

        def tick(run, loss, grads, hps, mask):
            self._compiles += 1
            opt = self.functional(**dict(static), **hps)
            mask = self._mask_vector(mask)
            grad = _vector(g.layout.unflatten_leaves(grads))
            run = opt.tick(run, loss, grad if mask is None else apply_mask(grad, mask))
            # The parameters hold the next trial point, or the new iterate at the end.
            flat, leaves = self._stored(jnp.where(run.done, run.x, run.x_eval), mask)
            return run, run.done, flat, leaves

        programs = (jax.jit(begin, donate_argnums=(3,)), jax.jit(tick, donate_argnums=(0,)))
        self._programs[key] = programs
        return programs

    def _function_call(
        self, loss_fn: Callable, has_aux: bool, args: tuple, kwargs: dict
    ) -> tuple[Callable, tuple, list[Any]]:
        static, hps = self._configure()
        bindings, args, kwargs = self._lift(args, kwargs)
        tokens = tuple([b.token for b in bindings])
        key = ("lbfgs", FnKey(loss_fn), has_aux, static, tokens)
        program = self._programs.get(key)
        if program is None:
            self._note_loss_fn(key[1])
            program = self._programs[key] = self._function_program(
                loss_fn, has_aux, list(bindings), static
            )
        g = self._groups[0]
        carried = [b.inputs() for b in bindings]
        inputs = (g.flat, self._leaf_params()[0], g.offsets, g.state, hps, g.mask, carried, args,
                  kwargs)
        return program, inputs, bindings

    def _function_program(self, fn, has_aux, bindings, static) -> Callable:
        g = self._groups[0]

        def program(flat, leaves, offsets, state, hps, mask, carried, args, kwargs):
            self._compiles += 1
            opt = self.functional(**dict(static), **hps)
            mask = self._mask_vector(mask)

            def evaluate(x, carried):
                def objective(leaves):
                    return self._loss(fn, has_aux, bindings, [leaves], carried, args, kwargs)

                trial = _leaves(x if mask is None else apply_mask(x, mask), g.layout)
                (loss, (aux, carried)), grads = jax.value_and_grad(objective, has_aux=True)(trial)
                grad = _vector(grads)
                return loss, grad if mask is None else apply_mask(grad, mask), carried, aux

            x, state, loss, aux, carried = opt.run(evaluate, self._x(flat, leaves, offsets), state,
                                                   carried)  # fmt: skip
            new_flat, new_leaves = self._stored(x, mask)
            return ((loss, aux) if has_aux else loss), new_flat, new_leaves, state, carried

        return jax.jit(program, donate_argnums=(0, 3))

    # ---------------------------------------------------------------------------------------
    # torch's state_dict: the whole state under the first parameter
    # ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``state[0]`` holds ``func_evals``, ``n_iter`` and, once an iteration
        ran, ``al``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro`` (lists, oldest first),
        ``H_diag``, ``prev_flat_grad`` and ``prev_loss``; vectors are torch's flat views."""
        entry = _entry(self._groups[0].state)
        groups = []
        start = 0
        for g, group in zip(self._groups, self.param_groups):
            groups.append({**group, "params": list(range(start, start + len(g.layout)))})
            start += len(g.layout)
        return {"state": {0: entry} if entry else {}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of :meth:`state_dict` or of ``torch.optim.LBFGS``; checked before
        anything changes."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        saved, g = saved_groups[0], self._groups[0]
        if len(saved["params"]) != len(g.layout):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size "
                "of optimizer's group"
            )
        match(saved, self.param_groups[0])  # names, where both sides have them, must match
        group = {k: state_layout.plain(v) for k, v in saved.items() if k != "params"}
        if "param_names" in self.param_groups[0]:
            group["param_names"] = self.param_groups[0]["param_names"]
        static, dynamic = self._split(group)
        arrays = jax.tree.map(lambda v: jnp.asarray(float(v)), dynamic)
        template = self.functional(**static, **arrays).init(self._state_input(g))
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        entry = saved_state.get(int(saved["params"][0]), {})  # torch keeps it there
        state = _load_entry(template, entry)
        self.param_groups[0] = group
        g.state, g.built, g.args = state, tuple(sorted(static.items())), None
        self._grad = None


# ------------------------------------------------------------------------------------------
# LbfgsState <-> torch's state entry
# ------------------------------------------------------------------------------------------


def _entry(state: LbfgsState) -> dict[str, Any]:
    """torch's state entry for ``state`` (empty before the first step)."""
    func_evals, n_iter = int(state.func_evals), int(state.n_iter)
    if func_evals == 0 and n_iter == 0:
        return {}
    entry: dict[str, Any] = {"func_evals": func_evals, "n_iter": n_iter}
    if n_iter == 0:
        return entry
    slots = [int(s) for s in state.history()]
    if n_iter >= 2:
        m = state.ro.shape[0]
        entry["al"] = [state.al[i] if i < len(slots) else None for i in range(m)]
    # Copies: the state's own buffers are donated to the next step.
    entry.update(
        d=jnp.copy(state.d),
        t=jnp.copy(state.t),
        old_dirs=[state.old_dirs[s] for s in slots],
        old_stps=[state.old_stps[s] for s in slots],
        ro=[state.ro[s] for s in slots],
        H_diag=jnp.copy(state.H_diag),
        prev_flat_grad=jnp.copy(state.prev_flat_grad),
        prev_loss=float(state.prev_loss),
    )
    return entry


def _load_entry(template: LbfgsState, entry: dict[str, Any]) -> LbfgsState:
    """``template`` filled from a torch state entry; the newest ``history_size`` pairs kept."""
    if not entry:
        return template
    dtype, n = template.d.dtype, template.d.shape[0]
    m = template.ro.shape[0]

    def array(value: Any, shape: tuple[int, ...], name: str, like: Any = None) -> jax.Array:
        a = np.asarray(value, dtype=np.float64)
        if a.shape != shape:
            raise ValueError(
                f"loaded state dict has '{name}' of shape {a.shape}, where {shape} is expected"
            )
        return jnp.asarray(a.astype(dtype if like is None else like))

    values: dict[str, Any] = {
        "func_evals": jnp.asarray(int(entry.get("func_evals", 0)), jnp.int32),
        "n_iter": jnp.asarray(int(entry.get("n_iter", 0)), jnp.int32),
    }
    if entry.get("d") is not None:
        dirs, stps, ro = (list(entry.get(k) or []) for k in ("old_dirs", "old_stps", "ro"))
        if not len(dirs) == len(stps) == len(ro):
            raise ValueError("loaded state dict has histories of different lengths")
        al = list(entry.get("al") or [])
        al = al[: len(dirs)]
        keep = min(len(dirs), m)
        old_dirs, old_stps = np.zeros((m, n)), np.zeros((m, n))
        ro_, al_ = np.zeros(m), np.zeros(m)
        for i, j in enumerate(range(len(dirs) - keep, len(dirs))):
            old_dirs[i] = array(dirs[j], (n,), "old_dirs")
            old_stps[i] = array(stps[j], (n,), "old_stps")
            ro_[i] = float(np.asarray(ro[j]))
            if j < len(al) and al[j] is not None:
                al_[i] = float(np.asarray(al[j]))
        values.update(
            d=array(entry["d"], (n,), "d"),
            t=array(entry["t"], (), "t"),
            old_dirs=jnp.asarray(old_dirs.astype(dtype)),
            old_stps=jnp.asarray(old_stps.astype(dtype)),
            ro=jnp.asarray(ro_.astype(dtype)),
            al=jnp.asarray(al_.astype(dtype)),
            H_diag=array(entry["H_diag"], (), "H_diag"),
            prev_flat_grad=array(entry["prev_flat_grad"], (n,), "prev_flat_grad"),
            prev_loss=array(entry["prev_loss"], (), "prev_loss", template.prev_loss.dtype),
            count=jnp.asarray(keep, jnp.int32),
            head=jnp.asarray(keep % m, jnp.int32),
        )
    return template._replace(**values)
