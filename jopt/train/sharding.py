"""Where a run's arrays live on a mesh of devices: data parallel, fully sharded, sharded sweeps.

A :class:`Placement` tells a :class:`~jopt.train.steps.Trainer` how to lay out its
``TrainState`` and batches over a ``jax.sharding.Mesh``; XLA does the communication:

- **data parallel** (``Placement(mesh)``): every batch is split over the ``data`` axis, the
  parameters and the optimizer state are replicated, and XLA sums the gradients across devices;
- **fully sharded** (``Placement(mesh, fsdp=True)``): in addition every parameter is split over
  the same axis along its largest dimension that divides evenly (ZeRO-3 / FSDP), and each
  optimizer buffer with it (:func:`jopt.state_shardings`), so a device holds ``1/N`` of both;
- **sweeps**: the K runs of a batched state are split over the ``data`` axis (K runs on N
  devices: K/N per device), each run whole on its device.

Nothing here changes the arithmetic: a sharded run computes what a one-device run does, up to
the order of the gradient's sums.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jopt.core import GradientTransformation
from jopt.sharding import state_shardings

__all__ = ["Placement", "make_mesh", "put"]


def make_mesh(devices: int | None = None, axis: str = "data") -> Mesh:
    """A one-axis mesh over the first ``devices`` devices (all of them by default)."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ValueError(
            f"asked for {n} devices, {len(available)} available on {jax.default_backend()}"
        )
    return Mesh(np.array(available[:n]), (axis,))


def put(tree: Any, shardings: Any) -> Any:
    """``tree``'s arrays placed as ``shardings`` says. With several processes (after
    ``jax.distributed.initialize``) each process gives the shards its own devices hold from
    its copy of the values — which every process computed alike from the same seeds — instead
    of ``jax.device_put``'s cross-process comparison; arrays already spread over processes stay
    as they are."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x: Any, sharding: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def _split_largest(shape: tuple[int, ...], parts: int, axis: str) -> PartitionSpec:
    """``axis`` on the largest dimension of ``shape`` that ``parts`` divides; none if none."""
    candidates = [d for d in range(len(shape)) if shape[d] % parts == 0 and shape[d] >= parts]
    if not candidates or parts == 1:
        return PartitionSpec()
    d = max(candidates, key=lambda i: (shape[i], -i))
    return PartitionSpec(*([None] * d), axis)


@dataclasses.dataclass(frozen=True)
class Placement:
    """How a trainer lays its arrays over ``mesh``: batches (and a sweep's runs) split over
    ``axis``; with ``fsdp`` the parameters and optimizer state split over it too."""

    mesh: Mesh
    fsdp: bool = False
    axis: str = "data"

    def __post_init__(self) -> None:
        if self.axis not in self.mesh.axis_names:
            raise ValueError(f"the mesh has no axis {self.axis!r}: {self.mesh.axis_names}")

    @property
    def size(self) -> int:
        return self.mesh.shape[self.axis]

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batch(self) -> NamedSharding:
        """A batch's rows split over the axis."""
        return NamedSharding(self.mesh, PartitionSpec(self.axis))

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise ValueError(
                f"batch size {batch_size} does not split over {self.size} devices: use a "
                f"multiple of {self.size}"
            )

    def params(self, params: Any) -> Any:
        """Each parameter's sharding: replicated, or split along its largest even dimension."""
        if not self.fsdp:
            return jax.tree.map(lambda _: self.replicated(), params)
        return jax.tree.map(
            lambda p: NamedSharding(self.mesh, _split_largest(np.shape(p), self.size, self.axis)),
            params,
        )

    def state(self, optimizer: GradientTransformation, state: Any, batched: bool) -> Any:
        """Shardings for a ``TrainState``: a batched one split run-wise over the axis, a
        single one with its parameters as :meth:`params` says and its optimizer state
        following them (:func:`jopt.state_shardings`); counters and keys replicated."""
        if batched:
            runs = jax.tree.leaves(state)[0].shape[0]
            if runs % self.size:
                raise ValueError(
                    f"{runs} runs do not split over {self.size} devices: use a multiple of "
                    f"{self.size}"
                )
            split = NamedSharding(self.mesh, PartitionSpec(self.axis))
            return jax.tree.map(lambda _: split, state)
        param_shardings = self.params(state.params)
        placed = jax.tree.map(
            lambda p, s: jax.ShapeDtypeStruct(np.shape(p), p.dtype, sharding=s),
            state.params,
            param_shardings,
        )
        rest = jax.tree.map(lambda _: self.replicated(), state)
        return rest._replace(
            params=param_shardings, opt_state=state_shardings(optimizer, placed)
        )
