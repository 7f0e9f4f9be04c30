"""The compiled programs of :class:`jopt.optim.Optimizer`, and the nnx modules they carry.

One program per kind of call (``step(loss_fn)``, ``backward``, ``step(grads)``, ``step()``
after ``backward``), per loss function, per static hyperparameters and per module graph,
kept for the optimizer's lifetime. The loss is differentiated with respect to the leaves and
the gradient concatenated (never through slices of a flat buffer: their transpose is a
full-size pad per leaf). Modules among a loss function's arguments are lifted out of the call
as ``nnx.jit`` does (:mod:`jopt.optim.lifting`): their parameters, statistics and RNG counts go
in as arrays and come back into the module.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jopt.core import EmptyState, GradientTransformation, apply_updates, chain, spec_of
from jopt.optim.lifting import Binding, FnKey
from jopt.transforms.pruning import keep_pruned, masked_updates

__all__ = ["RECOMPILE_LIMIT", "Programs", "RecompileWarning", "is_module"]

RECOMPILE_LIMIT = 8
"""New loss functions one optimizer compiles before it warns (torch.compile's default limit)."""


class RecompileWarning(UserWarning):
    """An optimizer keeps compiling step programs for loss functions it has not seen."""


class _Slot:
    """Where a lifted module stood among the loss function's arguments (a static leafless node)."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Slot) and other.index == self.index

    def __hash__(self) -> int:
        return hash(("jopt-slot", self.index))


jax.tree_util.register_pytree_node(_Slot, lambda s: ((), s.index), lambda index, _: _Slot(index))


class Programs:
    """The program-building half of :class:`~jopt.optim.Optimizer` (a mixin: it reads the
    optimizer's groups, hyperparameters and caches)."""

    # ---------------------------------------------------------------------------------------
    # Modules among the arguments
    # ---------------------------------------------------------------------------------------

    def _binding(self, module: nnx.Module) -> Binding:
        entry = self._bindings.get(id(module))
        if entry is not None and entry[0]() is module and not entry[1].stale():
            return entry[1]
        binding = Binding(module, lambda v: self._where.get(id(v)), None)
        # Programs are keyed by the module's graph, so model.train() after model.eval()
        # goes back to the program it had.
        binding.token = self._tokens.setdefault((id(module), binding.graphdef), len(self._tokens))
        self._bindings[id(module)] = (weakref.ref(module), binding)
        return binding

    def _lift(self, args: tuple, kwargs: dict) -> tuple[list[Binding], tuple, dict]:
        """The bindings of the modules among (own module, args, kwargs), each replaced by a slot."""
        bindings: list[Binding] = []
        index: dict[int, int] = {}

        def slot(value: Any) -> Any:
            if not is_module(type(value)):
                return value
            if id(value) not in index:
                index[id(value)] = len(bindings)
                bindings.append(self._binding(value))
            return _Slot(index[id(value)])

        if self._module is not None:
            slot(self._module)
        return bindings, tuple(slot(a) for a in args), {k: slot(v) for k, v in kwargs.items()}

    def _loss(
        self, fn, has_aux, bindings, leaves, carried, args, kwargs
    ) -> tuple[Any, tuple[Any, list[list[Any]]]]:
        """Call the loss function inside a trace; (loss, (aux, new carried values))."""
        modules = [b.rebuild(leaves, c) for b, c in zip(bindings, carried)]

        def put(value: Any) -> Any:
            return modules[value.index] if isinstance(value, _Slot) else value

        args = tuple(put(a) for a in args)
        kwargs = {k: put(v) for k, v in kwargs.items()}
        first = self._first
        if first == "module":
            head: tuple = (modules[0],)
        elif first == "tree":
            head = (self._as_given([g.source.view(lv) for g, lv in zip(self._groups, leaves)]),)
        else:
            head = ()
        out = fn(*head, *args, **kwargs)
        loss, aux = out if has_aux else (out, None)
        return loss, (aux, [b.outputs(m) for b, m in zip(bindings, modules)])

    # ---------------------------------------------------------------------------------------
    # Compiled programs
    # ---------------------------------------------------------------------------------------

    @property
    def compile_count(self) -> int:
        """How many step programs this optimizer has traced and compiled."""
        return self._compiles

    def _update(self, flats, leaves, offsets, states, grads, hps, masks):
        """One optimizer step of every group (traced): (flats, leaves, states).

        A shared group's parameters are concatenated for the update (XLA drops the copy when
        no term reads them) and each new leaf is its old value plus its slice of the update.
        A pruned group's rule runs between ``masked_updates`` and ``keep_pruned`` of its mask.
        """
        leafwise = spec_of(self.functional).leafwise
        new_flats, new_leaves, new_states = [], [], []
        for i, g in enumerate(self._groups):
            transform = self._transform(i, hps[i])
            if masks[i] is not None:
                mask = g.layout.unflatten_leaves(masks[i], offsets[i]) if leafwise else masks[i]
                transform = pruned(transform, mask)
            if leafwise:  # the rule sees each parameter in its shape
                grad_leaves = g.layout.unflatten_leaves(grads[i], offsets[i])
                parts, state = transform.update(grad_leaves, states[i], list(leaves[i]))
            else:
                flat = flats[i] if g.flat is not None else g.layout.flatten_leaves(leaves[i])
                updates, state = transform.update(grads[i], states[i], flat)
                if g.flat is not None:
                    new_flats.append(apply_updates(flat, updates))
                    new_leaves.append(None)
                    new_states.append(state)
                    continue
                parts = g.layout.unflatten_leaves(updates, offsets[i])
            new_flats.append(None)
            new = [(p + u).astype(jnp.result_type(p)) for p, u in zip(leaves[i], parts)]
            new_leaves.append(new)
            new_states.append(state)
        return new_flats, new_leaves, new_states

    def _program(self, kind: str, statics: tuple, fn=None, has_aux=False, bindings=()):
        tokens = tuple([b.token for b in bindings])
        last = self._last_program
        if (
            last is not None
            and last[0] is fn
            and last[1] == (kind, has_aux, statics, tokens)
        ):  # the same call as the last step: skip building the key
            return last[2]
        key = (kind, FnKey(fn) if fn is not None else None, has_aux, statics, tokens)
        program = self._programs.get(key)
        if program is not None:
            self._last_program = (fn, (kind, has_aux, statics, tokens), program)
            return program
        if fn is not None:
            self._note_loss_fn(key[1])
        bound = list(bindings)

        def differentiate(flats, leaves, offsets, masks, carried, args, kwargs):
            # The leaves are sliced outside the differentiated function: the loss is
            # differentiated with respect to the leaves, and their gradients concatenated.
            leaves = [
                g.layout.unflatten_leaves(f, o) if g.flat is not None else lv
                for g, f, lv, o in zip(self._groups, flats, leaves, offsets)
            ]

            def objective(leaves):
                return self._loss(fn, has_aux, bound, leaves, carried, args, kwargs)

            (loss, (aux, carried)), grads = jax.value_and_grad(objective, has_aux=True)(leaves)
            grads = [g.layout.flatten_leaves(lv) for g, lv in zip(self._groups, grads)]
            # A pruned group's gradient is torch's gradient of ``weight_orig * weight_mask``.
            grads = [gr if m is None else masked_updates(m).update(gr, EmptyState())[0]
                     for gr, m in zip(grads, masks)]
            return ((loss, aux) if has_aux else loss), grads, carried

        def closure(flats, leaves, offsets, states, hps, masks, carried, args, kwargs):
            self._compiles += 1
            result, grads, carried = differentiate(
                flats, leaves, offsets, masks, carried, args, kwargs
            )
            new = self._update(flats, leaves, offsets, states, grads, hps, masks)
            return (result, *new, carried)

        def backward(flats, leaves, offsets, masks, acc, carried, args, kwargs):
            self._compiles += 1
            result, grads, carried = differentiate(
                flats, leaves, offsets, masks, carried, args, kwargs
            )
            if acc is not None:
                grads = jax.tree.map(jnp.add, acc, grads)
            return result, grads, carried

        def with_grads(flats, leaves, offsets, states, hps, masks, grad_leaves, scratch):
            self._compiles += 1
            grads = [g.layout.flatten_leaves(lv) for g, lv in zip(self._groups, grad_leaves)]
            # The concatenated gradients go out into the donated scratch buffers' memory.
            kept = [{k: g[k] for k in s} for g, s in zip(grads, scratch)]
            return (*self._update(flats, leaves, offsets, states, grads, hps, masks), kept)

        def with_flat_grads(flats, leaves, offsets, states, hps, masks, grads):
            self._compiles += 1
            return self._update(flats, leaves, offsets, states, grads, hps, masks)

        # The flat buffers and the state are donated (updated in place); a shared group's
        # leaves are not: the user may still hold the arrays a Variable held.
        program = {
            "closure": lambda: jax.jit(closure, donate_argnums=(0, 3)),
            "backward": lambda: jax.jit(backward, donate_argnums=(4,)),
            "grads": lambda: jax.jit(with_grads, donate_argnums=(0, 3, 7), keep_unused=True),
            "flat_grads": lambda: jax.jit(with_flat_grads, donate_argnums=(0, 3)),
        }[kind]()
        self._programs[key] = program
        self._last_program = (fn, (kind, has_aux, statics, tokens), program)
        return program

    def _note_loss_fn(self, key: FnKey) -> None:
        if key in self._loss_fns:
            return
        self._loss_fns.add(key)
        if len(self._loss_fns) > RECOMPILE_LIMIT and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__} has compiled step programs for {len(self._loss_fns)} "
                "different loss functions. A function made anew at every step (a lambda, a "
                "closure or a partial capturing new objects) is a new program to compile: "
                "define the loss function once, outside the loop, and pass what changes as "
                "arguments: opt.step(loss_fn, x, y).",
                RecompileWarning,
                stacklevel=4,
            )


def pruned(transform: GradientTransformation, mask: Any) -> GradientTransformation:
    """``transform`` on a pruned group: torch's masked gradient in, pruned entries held at
    exactly zero out; the state is ``transform``'s own (the two masks keep none)."""
    inner = chain(masked_updates(mask), transform, keep_pruned(mask))
    empty = EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        updates, (_, state, _) = inner.update(updates, (empty, state, empty), params)
        return updates, state

    return GradientTransformation(transform.init, update)


_MODULE_TYPES: dict[type, bool] = {}


def is_module(kind: type) -> bool:
    """``issubclass(kind, nnx.Module)``, remembered per type (ABC checks cost microseconds)."""
    known = _MODULE_TYPES.get(kind)
    if known is None:
        known = _MODULE_TYPES[kind] = issubclass(kind, nnx.Module)
    return known
