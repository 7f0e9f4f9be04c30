"""nnx modules carried through a jitted step, and loss functions recognised across steps.

A module passed to a facade step (the optimizer's own module, or one among the loss function's
arguments) is *lifted*, as ``nnx.jit`` lifts its arguments: its Variables go into the jitted call
as arrays, the loss function sees a module rebuilt from them inside the trace, and the Variables
that are not the optimizer's parameters (BatchNorm statistics, Dropout's RNG counts, any
``nnx.Variable``) come out with their new values and are written back.

Splitting a module costs about a millisecond of Python per call, so a :class:`Binding` splits it
once and then only checks, per step, that no node's attributes changed (``model.eval()`` sets
``deterministic`` and ``use_running_average``; assigning a new layer or Variable replaces an
attribute): a tuple comparison per node that short-cuts on identity. A change re-splits the
module and gives it a new graph token, so the step that depends on it is traced again.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from flax import nnx

__all__ = ["Binding", "FnKey", "get_value", "set_value"]


def get_value(variable: nnx.Variable) -> Any:
    """A Variable's value (the raw array where no hook is set: ~4x cheaper)."""
    if variable._var_metadata.get("on_get_value") is None:
        return variable.get_raw_value()
    return variable.get_value()


def set_value(variable: nnx.Variable, value: Any) -> None:
    """Set a Variable's value from outside any trace (the facade's steps are not traceable, so
    nnx's check of the trace level is skipped where no hook is set)."""
    if variable._var_metadata.get("on_set_value") is None:
        # ``set_raw_value(..., _unsafe_bypass_check=True)`` still runs the check, through
        # ``Variable.__setattr__``: 1.4 us a leaf against 0.16 us for the store itself.
        object.__setattr__(variable, "_raw_value", value)
    else:
        variable.set_value(value)


def _nodes(module: nnx.Module) -> list[Any]:
    """The module's graph nodes that hold attributes (modules, nnx.List, nnx.Dict, ...)."""
    return [node for _, node in nnx.iter_graph(module) if isinstance(node, nnx.Pytree)]


def _attributes(nodes: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(vars(node).values()) for node in nodes]


class Binding:
    """A module split once: its graph, its Variables in order, and the token of its graph.

    ``slots[i]`` is where Variable ``i`` comes from in a step: ``(group, leaf)`` for one of the
    optimizer's parameters, ``None`` for state carried in and out.
    """

    def __init__(self, module: nnx.Module, where: Callable[[nnx.Variable], Any], token: Any):
        self.module = module
        self.graphdef, state = nnx.split(module)
        flat = nnx.to_flat_state(state)
        self.paths = [path for path, _ in flat]
        self.variables = [variable for _, variable in flat]
        self.slots = [where(v) for v in self.variables]
        self.carried = [i for i, slot in enumerate(self.slots) if slot is None]
        self.written = [
            i for i in self.carried if not isinstance(self.variables[i], nnx.Param)
        ]
        """Carried Variables whose new values are written back (a Param the optimizer does
        not optimize is an input only, as a frozen torch parameter)."""
        self.token = token
        self._nodes = _nodes(module)
        self._attrs = _attributes(self._nodes)

    def stale(self) -> bool:
        """Whether the module's structure or static attributes changed since the split."""
        try:
            return bool(_attributes(self._nodes) != self._attrs)
        except Exception:  # an attribute whose == is not a bool (an array): it changed
            return True

    def inputs(self) -> list[Any]:
        """The values of the carried Variables, for the next call."""
        return [get_value(self.variables[i]) for i in self.carried]

    def rebuild(self, param_leaves: list[list[Any]], carried: list[Any]) -> nnx.Module:
        """The module inside the trace, from the parameter leaves and carried values."""
        values: list[Any] = [None] * len(self.variables)
        for i, slot in enumerate(self.slots):
            if slot is not None:
                values[i] = param_leaves[slot[0]][slot[1]]
        for i, value in zip(self.carried, carried):
            values[i] = value
        state = nnx.from_flat_state(
            [
                (path, variable.replace(value=value))
                for path, variable, value in zip(self.paths, self.variables, values)
            ]
        )
        return nnx.merge(self.graphdef, state)

    def outputs(self, module: nnx.Module) -> list[Any]:
        """The new values of the written-back Variables, read off the module in the trace."""
        after = dict(nnx.to_flat_state(nnx.state(module)))
        out = []
        for i in self.written:
            variable = after.get(self.paths[i])
            out.append(variable.get_value() if variable is not None else None)
        return out

    def write(self, values: list[Any]) -> None:
        for i, value in zip(self.written, values):
            if value is not None:
                set_value(self.variables[i], value)


class FnKey:
    """A loss function as a cache key: two function objects made by the same code with the same
    captured objects (``lambda p: loss(p, x)`` re-made each step around the same ``loss``) are
    the same function, so they share one compiled step; anything else is compared by identity.
    """

    __slots__ = ("_fn", "_parts", "_hash")

    def __init__(self, fn: Callable) -> None:
        self._fn = fn
        self._parts = _parts(fn)
        self._hash = hash(self._parts[0]) if self._parts is not None else hash(id(fn))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FnKey):
            return NotImplemented
        if self._fn is other._fn:
            return True
        if self._parts is None or other._parts is None:
            return False
        a, b = self._parts, other._parts
        return a[0] == b[0] and len(a[1]) == len(b[1]) and all(x is y for x, y in zip(a[1], b[1]))


def _parts(fn: Callable) -> tuple[Any, tuple[Any, ...]] | None:
    """(what compares by value, what compares by identity) for a function, a bound method or a
    partial of one; None for any other callable (compared by identity alone)."""
    if isinstance(fn, types.FunctionType):
        try:
            cells = tuple(c.cell_contents for c in fn.__closure__ or ())
        except ValueError:  # an empty cell: a name bound later
            return None
        kwdefaults = fn.__kwdefaults__ or {}
        static = (fn.__code__, tuple(kwdefaults))
        return static, (fn.__globals__, *cells, *(fn.__defaults__ or ()), *kwdefaults.values())
    if isinstance(fn, types.MethodType):
        inner = _parts(fn.__func__)
        return None if inner is None else (("method", inner[0]), (fn.__self__, *inner[1]))
    func = getattr(fn, "func", None)
    if func is not None and hasattr(fn, "args") and hasattr(fn, "keywords"):
        inner = _parts(func)
        if inner is None:
            return None
        static = ("partial", inner[0], len(fn.args), tuple(fn.keywords))
        return static, (*inner[1], *fn.args, *fn.keywords.values())
    return None
