"""Optimizer state sharded like its parameters, with no communication code of jopt's own.

Every jopt state buffer has its parameter's shape and sits in the state under its parameter's
path (``exp_avg['layer']['w']`` for the parameter ``['layer']['w']``), so the sharding of each
state leaf follows from the parameters': :func:`state_shardings` reads it off, and
:func:`init_sharded` creates the state already placed, in one jitted ``init`` with those
out-shardings (no host round trip, no replicated copy on one device). The same tree is what a
jitted step of your own takes as ``in_shardings`` / ``out_shardings`` and what orbax restores
onto (``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``).

Leaves that are not per-parameter (step counts, injected hyperparameters, NAdam's
``mu_product``) are replicated over the parameters' devices. Adafactor's factored row and column
statistics, of shape ``(m, 1)`` and ``(1, n)`` for an ``(m, n)`` parameter, keep the parameter's
partitioning along the axis they keep. L-BFGS's state is one vector over all parameters (its
two-loop recursion needs every entry at every iteration): it is replicated.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from jopt.core import GradientTransformation

__all__ = ["init_sharded", "state_shardings"]

Path = tuple[Any, ...]


def _sharding_of(leaf: Any) -> Sharding | None:
    sharding = getattr(leaf, "sharding", None)
    return sharding if isinstance(sharding, Sharding) else None


def _replicated(sharding: Sharding) -> Sharding:
    """A sharding that holds a full copy on every device of ``sharding``."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    if isinstance(sharding, SingleDeviceSharding):
        return sharding
    devices = sharding.device_set
    if len(devices) == 1:
        return SingleDeviceSharding(next(iter(devices)))
    mesh = jax.sharding.Mesh(sorted(devices, key=lambda d: d.id), ("devices",))
    return NamedSharding(mesh, PartitionSpec())


def _reduced(sharding: Sharding, param_shape: tuple[int, ...], shape: tuple[int, ...]) -> Sharding:
    """``sharding`` for a statistic of the parameter kept with ``keepdims`` (Adafactor's rows
    and columns): the partitioning of every axis the statistic keeps, none on the others."""
    if shape == param_shape:
        return sharding
    if not isinstance(sharding, NamedSharding) or len(shape) != len(param_shape):
        return _replicated(sharding)
    spec = tuple(sharding.spec) + (None,) * (len(param_shape) - len(sharding.spec))
    kept = tuple(s if n == m else None for s, n, m in zip(spec, shape, param_shape))
    return NamedSharding(sharding.mesh, PartitionSpec(*kept))


def state_shardings(optimizer: GradientTransformation, params: Any) -> Any:
    """The sharding of every leaf of ``optimizer.init(params)``, as a tree like the state.

    ``params``: arrays placed as they will be (``jax.device_put(p, NamedSharding(...))``) or
    ``jax.ShapeDtypeStruct``s carrying a ``sharding``. A state leaf whose path ends with a
    parameter's path (the state's copy of the parameter tree) and whose shape is the
    parameter's gets that parameter's sharding; the rest is replicated.
    """
    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not param_leaves:
        raise ValueError("state_shardings needs at least one parameter")
    by_path: dict[Path, tuple[tuple[int, ...], Sharding]] = {}
    for path, leaf in param_leaves:
        sharding = _sharding_of(leaf)
        if sharding is None:
            raise ValueError(
                f"parameter {jax.tree_util.keystr(path)} has no sharding: pass placed arrays "
                "or jax.ShapeDtypeStruct(shape, dtype, sharding=...)"
            )
        by_path[tuple(path)] = (tuple(leaf.shape), sharding)
    everywhere = _replicated(param_leaves[0][1].sharding)
    shapes = jax.eval_shape(optimizer.init, params)

    def follow(path: Path, leaf: Any) -> Sharding:
        path = tuple(path)
        for start in range(len(path)):
            found = by_path.get(path[start:])
            if found is not None:
                param_shape, sharding = found
                return _reduced(sharding, param_shape, tuple(leaf.shape))
        return everywhere

    return jax.tree_util.tree_map_with_path(follow, shapes)


def init_sharded(optimizer: GradientTransformation, params: Any) -> Any:
    """``optimizer.init(params)`` created on the devices, each buffer sharded like its
    parameter (:func:`state_shardings`): one jitted call, nothing gathered or copied through
    the host. optax's equivalent is ``jax.jit(opt.init, out_shardings=...)``."""
    return jax.jit(optimizer.init, out_shardings=state_shardings(optimizer, params))(params)
