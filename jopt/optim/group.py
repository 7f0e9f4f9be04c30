"""A param group's storage inside :class:`jopt.optim.Optimizer`: its parameters (one flat
buffer per dtype, or the Variables they are shared with), the optimizer state over them, and
the cached hyperparameter arrays."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jopt.core import check_tree_match
from jopt.flat import Flat, Layout
from jopt.optim.params import Source

__all__ = ["Group", "as_float", "flatten", "hashable"]


@dataclass
class Group:
    """One param group's storage and the optimizer state over it.

    A group of arrays the optimizer owns keeps them as one flat buffer per dtype (``flat``),
    updated in place. A group with parameters shared with Variables keeps none: the values
    live in the Variables (and, for the group's own arrays, in ``owned``), are read at every
    step and the new ones written back, so nothing can diverge from the module and nothing is
    held twice; the state is flat either way.
    """

    source: Source
    layout: Layout
    flat: Flat | None
    state: Any
    owned: list[Any]  # per leaf of a shared group: the array (None where a Variable holds it)
    offsets: list[Any] = field(default_factory=list)  # runtime leaf offsets (see Layout)
    built: tuple[Any, ...] = ()  # the static arguments the state was built for
    mask: Flat | None = None  # pruning: per bucket, True where a parameter is kept
    args: tuple[Any, ...] | None = None  # (snapshot, static items, hyperparameter arrays, raw)
    skeleton: Any = field(default=None)

    def unview(self, tree: Any, what: str) -> list[Any]:
        """The leaves of ``tree`` (in the structure of the group's parameters), checked."""
        if self.skeleton is None:
            structs = [
                jax.ShapeDtypeStruct(shape, self.layout.dtype_of(i))
                for i, shape in enumerate(self.layout.shapes)
            ]
            self.skeleton = self.source.view(structs)
        try:
            leaves = self.source.unview(tree)
        except (ValueError, TypeError):
            leaves = None
        if leaves is None or [jnp.shape(x) for x in leaves] != self.layout.shapes:
            check_tree_match(tree, self.skeleton, what=what)
            leaves = self.source.unview(tree)
        return leaves


_FLATTENED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def flatten(layout: Layout) -> Callable[[list[Any]], Flat]:
    """The jitted concatenation of a layout's leaves (one per layout)."""
    fn = _FLATTENED.get(layout)
    if fn is None:
        fn = _FLATTENED[layout] = jax.jit(layout.flatten_leaves)
    return fn


def hashable(value: Any) -> Any:
    """A hyperparameter as a comparable key (tuples for lists, floats for numbers)."""
    if isinstance(value, tuple | list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, bool | str | None):
        return value
    return as_float(value)


def as_float(value: Any) -> float:
    """A hyperparameter's number; torch's one-element tensors (``lr=tensor([0.01])``) too."""
    if isinstance(value, jax.Array | np.ndarray) and value.ndim:
        value = value.reshape(())
    return float(value)
