"""Flat parameter storage: many leaves kept as one contiguous buffer per dtype.

XLA:CPU pays a cost per array it touches, so an optimizer step over a thousand small leaves is
a thousand small kernels. Kept as one 1-D buffer per dtype (``{"float32": f32[n]}``), the
elementwise optimizer math runs as a few fused loops instead.

The leaves are recovered with one ``split`` per buffer, never with one slice per leaf: the
transpose of ``split`` is a single ``concatenate``, while the transpose of a slice is a ``pad``
to the whole buffer, and L of them summed cost O(L * n). So a loss written on
``unflatten(flat)`` can be differentiated with respect to ``flat`` at a cost linear in the number
of leaves::

    flat, unflatten = jopt.flat_params(params)
    state = opt.init(flat)
    grads = jax.grad(lambda f: loss(unflatten(f), x, y))(flat)   # one concatenate, no pads
    updates, state = opt.update(grads, state, flat)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Flat", "Layout", "flat_params"]

Flat = dict[str, jax.Array]
"""A flat group: bucket name -> buffer (a dtype's name -> its 1-D buffer; a sharded leaf's own
bucket -> the leaf in its shape)."""


def is_sharded(leaf: Any) -> bool:
    """Whether ``leaf`` is split over several devices (not a full copy on each): concatenating
    it with others would move data between devices, so it keeps a bucket of its own."""
    sharding = getattr(leaf, "sharding", None)
    return (
        isinstance(sharding, jax.sharding.Sharding)
        and len(sharding.device_set) > 1
        and not sharding.is_fully_replicated
    )


class Slot(NamedTuple):
    """Where one leaf lives: its bucket, offset and shape."""

    bucket: str
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Layout:
    """How a sequence of leaves maps onto flat per-dtype buffers.

    Buckets appear in the order their dtype is first met, and leaves keep their order inside a
    bucket, so the layout of a list of leaves is deterministic. A leaf split over several
    devices (:func:`is_sharded`) is a bucket of its own, ``"<dtype>:<index>"``, kept in its
    shape and its sharding: a flat buffer never concatenates arrays that live on different
    devices, and the optimizer state over such a bucket is sharded as the leaf is. ``names``
    (one per leaf) only serve error messages.
    """

    def __init__(self, leaves: Sequence[Any], names: Sequence[str] | None = None) -> None:
        self.names = list(names) if names is not None else [f"[{i}]" for i in range(len(leaves))]
        self.slots: list[Slot] = []
        self.sizes: dict[str, int] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.bucket_shapes: dict[str, tuple[int, ...]] = {}
        """Each bucket's buffer shape: ``(size,)``, or a sharded leaf's own shape."""
        for index, (name, leaf) in enumerate(zip(self.names, leaves)):
            dtype = np.dtype(jnp.result_type(leaf))
            if not jnp.issubdtype(dtype, jnp.inexact):
                raise ValueError(
                    f"can't keep a leaf of dtype {dtype} at {name or '<root>'} in a flat "
                    "buffer: parameters are floating point or complex"
                )
            shape = tuple(jnp.shape(leaf))
            bucket = f"{dtype.name}:{index}" if is_sharded(leaf) else dtype.name
            self.dtypes.setdefault(bucket, dtype)
            offset = self.sizes.get(bucket, 0)
            self.slots.append(Slot(bucket, offset, shape))
            self.sizes[bucket] = offset + math.prod(shape)
            self.bucket_shapes[bucket] = shape if bucket != dtype.name else (self.sizes[bucket],)
        self.shapes = [slot.shape for slot in self.slots]
        self._members = {
            bucket: [i for i, s in enumerate(self.slots) if s.bucket == bucket]
            for bucket in self.sizes
        }
        self.shaped = frozenset(b for b in self.sizes if ":" in b)
        """The buckets of sharded leaves, each its leaf in its own shape."""
        self.concatenated = tuple(b for b, members in self._members.items() if len(members) > 1)
        """The buckets made of several leaves (their gradients are concatenated at each step)."""

    def __len__(self) -> int:
        return len(self.slots)

    def dtype_of(self, index: int) -> np.dtype:
        return self.dtypes[self.slots[index].bucket]

    def flatten_leaves(self, leaves: Sequence[Any], dtype: Any = None) -> Flat:
        """Concatenate leaves into their buckets (traceable), in each bucket's dtype or in
        ``dtype`` (a mask's ``bool``)."""
        out = {}
        for bucket, members in self._members.items():
            kind = self.dtypes[bucket] if dtype is None else dtype
            if bucket in self.shaped:
                out[bucket] = jnp.asarray(leaves[members[0]], kind)
                continue
            chunks = [jnp.ravel(jnp.asarray(leaves[i], kind)) for i in members]
            out[bucket] = chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks)
        return out

    def unflatten_leaves(self, flat: Flat, offsets: Sequence[Any] | None = None) -> list[jax.Array]:
        """The leaves from the buckets (traceable): one ``split`` per bucket, then reshapes.

        With ``offsets`` (:meth:`offsets`, passed into the jitted function as arguments), each
        leaf is a ``dynamic_slice`` at a runtime offset instead. XLA:CPU compiles a kernel per
        distinct slice, and a static offset makes every slice distinct (about 50 ms of compile
        time per leaf); at runtime offsets, leaves of one shape share one kernel. Such slices
        must not be differentiated (their transpose is a full-size update per leaf).
        """
        leaves: list[Any] = [None] * len(self.slots)
        for bucket, members in self._members.items():
            buffer = flat[bucket]
            if len(members) == 1:
                parts = [buffer]
            elif offsets is not None:
                parts = [
                    jax.lax.dynamic_slice_in_dim(buffer, offsets[i], self.slots[i].size)
                    for i in members
                ]
            else:
                ends = np.cumsum([self.slots[i].size for i in members])[:-1]
                parts = jnp.split(buffer, ends)
            for i, part in zip(members, parts):
                leaves[i] = part.reshape(self.slots[i].shape)
        return leaves

    def offsets(self) -> list[jax.Array]:
        """Each leaf's offset in its bucket, as an int32 scalar array (see
        :meth:`unflatten_leaves`)."""
        return [jnp.asarray(slot.offset, jnp.int32) for slot in self.slots]

    def is_flat(self, value: Any) -> bool:
        """Whether ``value`` is a per-parameter buffer of this layout (e.g. a state field)."""
        return (
            isinstance(value, dict)
            and set(value) == set(self.sizes)
            and all(jnp.shape(value[k]) == shape for k, shape in self.bucket_shapes.items())
        )


def flat_params(tree: Any) -> tuple[Flat, Callable[[Flat], Any]]:
    """``(flat, unflatten)``: ``tree`` as one 1-D buffer per dtype, and the way back.

    ``unflatten(flat)`` is traceable and its transpose is a concatenation, so gradients taken
    through it cost O(n) whatever the number of leaves (see the module docstring). Every jopt
    optimizer runs on ``flat`` as on any pytree; on many small leaves it is much faster.
    """
    leaves, treedef = jax.tree.flatten(tree)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    layout = Layout(leaves, names)

    def unflatten(flat: Flat) -> Any:
        return treedef.unflatten(layout.unflatten_leaves(flat))

    return layout.flatten_leaves(leaves), unflatten
