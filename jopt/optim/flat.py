"""Flat parameter storage: a pytree kept as one contiguous buffer per dtype.

XLA:CPU pays a cost per array it touches, so an optimizer step over a thousand small leaves is
a thousand small kernels. The facade keeps each parameter group as one 1-D buffer per dtype
(``{"float32": f32[n]}``): the elementwise optimizer math then runs as a few fused loops, and
the user's tree is recovered by slicing — free inside a jitted loss function, one dispatch
outside it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jopt.core import check_tree_match

Flat = dict[str, jax.Array]
"""A flat group: dtype name -> 1-D buffer."""


class Slot(NamedTuple):
    """Where one leaf lives: its bucket, offset and shape."""

    bucket: str
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Layout:
    """How a pytree maps onto flat per-dtype buffers.

    Leaves are numbered in ``jax.tree.leaves`` order; buckets appear in the order their dtype
    is first met, so the layout of a tree is deterministic.
    """

    def __init__(self, tree: Any) -> None:
        leaves, self.treedef = jax.tree.flatten(tree)
        self.paths = [
            jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
        ]
        self.slots: list[Slot] = []
        self.sizes: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        for path, leaf in zip(self.paths, leaves):
            dtype = np.dtype(jnp.result_type(leaf))
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(
                    f"can't optimize a parameter of dtype {dtype} at {path or '<root>'}: "
                    "jopt.optim takes real floating point parameters (the functional "
                    "optimizers, jopt.adam and the others, also take complex ones)"
                )
            name = dtype.name
            self.dtypes.setdefault(name, dtype)
            offset = self.sizes.get(name, 0)
            shape = tuple(jnp.shape(leaf))
            self.slots.append(Slot(name, offset, shape))
            self.sizes[name] = offset + math.prod(shape)
        self.shapes = [slot.shape for slot in self.slots]
        counts: dict[str, int] = {}
        for slot in self.slots:
            counts[slot.bucket] = counts.get(slot.bucket, 0) + 1
        self.concatenated = tuple(name for name, count in counts.items() if count > 1)
        """The buckets made of several leaves (their gradients are concatenated at each step)."""

    def __len__(self) -> int:
        return len(self.slots)

    def skeleton(self) -> Any:
        """The tree with ``ShapeDtypeStruct`` leaves, to check gradients against."""
        return self.treedef.unflatten(
            [jax.ShapeDtypeStruct(s.shape, self.dtypes[s.bucket]) for s in self.slots]
        )

    def leaves_of(self, tree: Any, what: str = "gradients") -> list[Any]:
        """The leaves of ``tree`` in layout order, once its structure and shapes are checked.

        The common case costs one tree flatten and one shape comparison per leaf; a mismatch
        raises ``check_tree_match``'s ``ValueError``, which names the path that differs.
        """
        leaves, treedef = jax.tree.flatten(tree)
        if treedef == self.treedef and [getattr(x, "shape", None) for x in leaves] == self.shapes:
            return leaves
        check_tree_match(tree, self.skeleton(), what=what)
        return self.treedef.flatten_up_to(tree)

    def flatten_leaves(self, leaves: list[Any]) -> Flat:
        """Concatenate leaves into the buckets (traceable)."""
        parts: dict[str, list[jax.Array]] = {name: [] for name in self.sizes}
        for slot, leaf in zip(self.slots, leaves):
            parts[slot.bucket].append(jnp.ravel(jnp.asarray(leaf, self.dtypes[slot.bucket])))
        return {
            name: chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)
            for name, chunks in parts.items()
        }

    def flatten(self, tree: Any) -> Flat:
        return self.flatten_leaves(self.treedef.flatten_up_to(tree))

    def leaf(self, flat: Flat, index: int) -> jax.Array:
        slot = self.slots[index]
        return flat[slot.bucket][slot.offset : slot.offset + slot.size].reshape(slot.shape)

    def unflatten_leaves(self, flat: Flat) -> list[jax.Array]:
        return [self.leaf(flat, i) for i in range(len(self.slots))]

    def unflatten(self, flat: Flat) -> Any:
        """The user's tree from the buckets (traceable: slices and reshapes)."""
        return self.treedef.unflatten(self.unflatten_leaves(flat))

    def is_flat(self, value: Any) -> bool:
        """Whether ``value`` is a per-parameter buffer of this layout (e.g. a state field)."""
        return (
            isinstance(value, dict)
            and set(value) == set(self.sizes)
            and all(jnp.shape(value[k]) == (n,) for k, n in self.sizes.items())
        )
