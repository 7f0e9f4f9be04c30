"""What an optimizer is given: trees of arrays, nnx modules, named parameters, param groups.

torch's optimizer holds the model's own ``Parameter`` objects, so what the model and the
optimizer see is one thing. The JAX counterpart of a Parameter is an ``nnx.Variable``: a
parameter given as a Variable (a module's ``nnx.Param``, one from :func:`named_parameters`, or
one inside a tree) is *shared*: the optimizer reads its value before each step and writes the
new value into it after. A parameter given as an array is owned by the optimizer (JAX arrays
are immutable), which shows the current values as ``Optimizer.params``.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx

__all__ = ["named_parameters"]


def is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def named_parameters(module: nnx.Module, prefix: str = "") -> list[tuple[str, nnx.Variable]]:
    """The module's ``nnx.Param`` Variables with torch-style dotted names, as torch's
    ``model.named_parameters()``: in the order the attributes were set (torch's registration
    order), each Variable once, e.g. ``("h.0.attn.c_attn.kernel", Param(...))``.
    """
    found: list[tuple[str, nnx.Variable]] = []
    seen: set[int] = set()

    def walk(node: Any, name: str) -> None:
        if id(node) in seen:
            return
        if isinstance(node, nnx.Variable):
            seen.add(id(node))
            if isinstance(node, nnx.Param):
                found.append((name, node))
            return
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list | tuple):
            items = list(enumerate(node))
        elif isinstance(node, nnx.Pytree):
            seen.add(id(node))
            items = [(k, v) for k, v in vars(node).items() if not k.startswith("_pytree__")]
        else:
            return
        for key, child in items:
            walk(child, f"{name}.{key}" if name else str(key))

    walk(module, prefix)
    return found


@dataclass
class Source:
    """One group's parameters: their values, the Variables among them, names and structure."""

    leaves: list[Any]
    """The current values, in the group's order (torch's parameter order)."""
    variables: list[nnx.Variable | None]
    """Per leaf, the Variable it is shared with (None: an array the optimizer owns)."""
    names: list[str] | None
    """torch's ``param_names``, where the parameters came with names."""
    treedef: Any
    """The structure the user gave (a tree, a list, a module's Param state), Variables as
    leaves."""
    order: list[int] | None
    """The group's leaf for each leaf of ``treedef`` (None: the same order)."""
    paths: list[str]
    """A name per leaf for messages (the name, or the tree path)."""
    kind: str = "tree"
    """``"module"`` (a module's Params), ``"named"`` (named parameters) or ``"tree"``."""
    pure: Any = None
    """A module's: the structure of its Param state as a pure dict (``nnx.to_pure_dict``,
    what :mod:`jopt.prune` and ``jopt.train`` give), taken by :meth:`unview` too."""

    @property
    def shared(self) -> bool:
        return any(v is not None for v in self.variables)

    def view(self, values: list[Any]) -> Any:
        """Leaf values in the structure the user gave; a Variable in a tree or module state
        becomes a Variable of the same type holding the value (as ``nnx.state`` gives)."""
        if self.kind != "named":
            values = [
                v.replace(value=x) if v is not None else x
                for v, x in zip(self.variables, values)
            ]
        if self.order is not None:
            values = [values[i] for i in self.order]
        return self.treedef.unflatten(values)

    def unview(self, tree: Any) -> list[Any]:
        """The inverse of :meth:`view` (a tree of arrays or of Variables; for a module, its
        Param state or that state as a pure dict)."""
        try:
            items = self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError):
            if self.pure is None or isinstance(tree, nnx.State):
                raise
            items = self.pure.flatten_up_to(tree)
        items = [_value(x) for x in items]
        if self.order is None:
            return items
        leaves: list[Any] = [None] * len(items)
        for position, i in enumerate(self.order):
            leaves[i] = items[position]
        return leaves


def _is_named(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)


def _is_named_list(params: Any) -> bool:
    """Whether ``params`` is torch's list of ``(name, parameter)`` pairs (all or none)."""
    if not isinstance(params, list | tuple) or not params:
        return False
    named = [_is_named(p) for p in params]
    if any(named) and not all(named):
        raise ValueError(
            "all optimizer params should be with/without names. Some param names are missing"
        )
    return all(named)


def is_sparse(x: Any) -> bool:
    """A sparse array (``jax.experimental.sparse``, torch's sparse tensors' counterpart)."""
    module = sys.modules.get("jax.experimental.sparse")
    return module is not None and isinstance(x, module.JAXSparse)


def _is_leaf(x: Any) -> bool:
    return is_variable(x) or is_sparse(x)


def is_group_list(params: Any) -> bool:
    return (
        isinstance(params, list | tuple)
        and len(params) > 0
        and all(isinstance(g, dict) and "params" in g for g in params)
    )


def check_iterable(params: Any) -> None:
    """torch's refusal of a bare tensor (or number, or None) as ``params``."""
    if params is None:
        raise TypeError("'NoneType' object is not iterable")
    if isinstance(params, jax.Array | np.ndarray | numbers.Number | nnx.Variable):
        raise TypeError(
            "params argument given to the optimizer should be an iterable of Tensors or "
            f"dicts, but got {_torch_type_name(params)}"
        )


def _torch_type_name(x: Any) -> str:
    if isinstance(x, jax.Array | np.ndarray | nnx.Variable):
        return "torch.FloatTensor"
    return type(x).__name__


def _value(x: Any) -> Any:
    return x.get_value() if isinstance(x, nnx.Variable) else x


def source_of(params: Any) -> Source:
    """The :class:`Source` of one group's ``params``."""
    if isinstance(params, nnx.Module):
        named = named_parameters(params)
        variables = [v for _, v in named]
        state = nnx.state(params, nnx.Param)
        state_vars, treedef = jax.tree.flatten(state, is_leaf=is_variable)
        position = {id(v): i for i, v in enumerate(variables)}
        order = [position[id(v)] for v in state_vars]
        names = [n for n, _ in named]
        leaves = [v.get_value() for v in variables]
        pure = jax.tree.structure(nnx.to_pure_dict(state))
        return Source(leaves, list(variables), names, treedef, order, names, "module", pure)
    if _is_named_list(params):
        names = [n for n, _ in params]
        items = [p for _, p in params]
        variables = [p if is_variable(p) else None for p in items]
        treedef = jax.tree.structure([0] * len(items))
        return Source([_value(p) for p in items], variables, names, treedef, None, names, "named")
    items, treedef = jax.tree.flatten(params, is_leaf=_is_leaf)
    paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_leaf)[0]
    ]
    variables = [p if is_variable(p) else None for p in items]
    return Source([_value(p) for p in items], variables, None, treedef, None, paths)


def groups_of(params: Any) -> list[dict[str, Any]]:
    """The param groups given: a list of groups, or one group of everything else."""
    check_iterable(params)
    groups = list(params) if is_group_list(params) else [{"params": params}]
    for group in groups:
        if not isinstance(group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(group).__name__}")
    return groups


def warn_duplicates(source: Source) -> None:
    ids = [id(v) if v is not None else id(leaf) for v, leaf in zip(source.variables, source.leaves)]
    if len(set(ids)) != len(ids):
        warnings.warn(
            "optimizer contains a parameter group with duplicate parameters; "
            "in future, this will cause an error; see "
            "github.com/pytorch/pytorch/issues/40967 for more information",
            UserWarning,
            stacklevel=4,
        )
