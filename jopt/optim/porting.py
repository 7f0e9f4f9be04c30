"""``from_torch``: a live ``torch.optim`` optimizer as a jopt one, in one call."""

from __future__ import annotations

import inspect
from typing import Any

from jopt.optim.optimizer import Optimizer
from jopt.optim.params import is_group_list, source_of
from jopt.optim.state_layout import plain

__all__ = ["from_torch"]


def _numpy(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach().cpu().numpy() if detach is not None else value


def _parameters(params: Any) -> tuple[list[Any], list[str] | None]:
    """The parameters as one ordered list (Variables where given), with their names where
    they have them: the order and names a jopt optimizer over ``params`` would use."""
    source = source_of(params)
    items = [v if v is not None else leaf for v, leaf in zip(source.variables, source.leaves)]
    return items, source.names


def from_torch(torch_optimizer: Any, params: Any) -> Optimizer:
    """The jopt counterpart of ``torch_optimizer`` over ``params``: same class, param groups,
    hyperparameters and state.

    ``params`` is what the jopt optimizer would take: an nnx module, named parameters, a tree,
    or param groups matching torch's groups one to one. Without groups, the parameters are dealt
    into torch's groups by name where both sides have names (torch's ``param_names``), else in
    order. Shapes must match torch's.
    """
    import jopt.optim

    name = type(torch_optimizer).__name__
    cls = getattr(jopt.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ValueError(f"jopt.optim has no optimizer {name}")
    state_dict = torch_optimizer.state_dict()
    saved_groups = state_dict["param_groups"]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    hyper = [
        {k: plain(v) for k, v in g.items() if k in accepted}
        for g in saved_groups
    ]
    if is_group_list(params):
        if len(params) != len(saved_groups):
            raise ValueError(
                f"torch's optimizer has {len(saved_groups)} parameter groups, "
                f"params has {len(params)}"
            )
        groups = [{**h, **dict(g)} for h, g in zip(hyper, params)]
    else:
        leaves, names = _parameters(params)
        total = sum(len(g["params"]) for g in saved_groups)
        if len(leaves) != total:
            raise ValueError(
                f"torch's optimizer has {total} parameters, params has {len(leaves)}"
            )
        torch_names = [g.get("param_names") for g in saved_groups]
        if names is not None and all(n is not None for n in torch_names):
            by_name = dict(zip(names, leaves))
            missing = [n for ns in torch_names for n in ns if n not in by_name]
            if missing:
                raise ValueError(
                    f"params has no parameter named {', '.join(map(repr, missing[:5]))}"
                )
            chunks = [[(n, by_name[n]) for n in ns] for ns in torch_names]
        else:
            chunks, start = [], 0
            for g in saved_groups:
                part = leaves[start : start + len(g["params"])]
                part_names = names[start : start + len(part)] if names is not None else None
                chunks.append(list(zip(part_names, part)) if part_names else part)
                start += len(part)
        groups = [{**h, "params": chunk} for h, chunk in zip(hyper, chunks)]
    defaults = {k: plain(v) for k, v in torch_optimizer.defaults.items() if k in accepted}
    if len(groups) == 1 and not is_group_list(params):  # one group: the structure given
        group = groups[0]
        optimizer = cls(group.pop("params"), **{**defaults, **group})
    else:
        optimizer = cls(groups, **defaults)
    state = {
        k: {name: _numpy(v) for name, v in entry.items()}
        for k, entry in state_dict["state"].items()
    }
    groups_sd = [{k: _numpy(v) for k, v in g.items()} for g in saved_groups]
    for g in groups_sd:
        if "param_names" in g and "param_names" not in optimizer.param_groups[0]:
            del g["param_names"]
    optimizer.load_state_dict({"state": state, "param_groups": groups_sd})
    return optimizer
