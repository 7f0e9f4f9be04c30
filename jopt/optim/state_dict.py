"""torch's ``state_dict`` / ``load_state_dict`` for :class:`jopt.optim.Optimizer`: the state of
each group written per parameter under torch's names (:mod:`jopt.optim.state_layout`), and read
back by name or order, all checked before anything changes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jopt.optim import state_layout

__all__ = ["StateDict", "match"]


class StateDict:
    """torch's state-dict methods of :class:`~jopt.optim.Optimizer` (a mixin over its groups)."""

    # ---------------------------------------------------------------------------------------
    # torch's state_dict
    # ---------------------------------------------------------------------------------------

    @property
    def state(self) -> dict[int, dict[str, Any]]:
        """Per-parameter state, keyed by parameter index: ``state_dict()["state"]``."""
        return self.state_dict()["state"]

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``{"state": {index: {name: value}}, "param_groups": [...]}``.

        Indices number the parameters group after group, in each group's order; state names
        are torch's (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``,
        ``momentum_buffer``, ``square_avg``, ``grad_avg``, ``sum``). A parameter that has not
        stepped has no entry. Groups of named parameters carry ``param_names``.
        """
        state: dict[int, dict[str, Any]] = {}
        groups = []
        start = 0
        for g, group in zip(self._groups, self.param_groups):
            for j, entry in enumerate(state_layout.entries(g.state, g.layout)):
                if entry:
                    state[start + j] = entry
            groups.append({**group, "params": list(range(start, start + len(g.layout)))})
            start += len(g.layout)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict made by :meth:`state_dict` or by ``torch.optim`` (same layout).

        Parameters are matched by name where both sides have ``param_names``, else by order.
        Everything is checked before anything changes: a refused load leaves the optimizer
        as it was.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for saved, g in zip(saved_groups, self._groups):
            if len(saved["params"]) != len(g.layout):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    "of optimizer's group"
                )
        saved_state = {int(k): v for k, v in state_dict["state"].items()}
        new_groups, new_states, new_args = [], [], []
        for i, (saved, g) in enumerate(zip(saved_groups, self._groups)):
            ids = match(saved, self.param_groups[i])
            group = {k: state_layout.plain(v) for k, v in saved.items() if k != "params"}
            if "param_names" in self.param_groups[i]:  # matched by name: ours keep their order
                group["param_names"] = self.param_groups[i]["param_names"]
            missing = [k for k in self._keys() if k not in group]
            if missing:
                raise ValueError(
                    f"loaded state dict's parameter group {i} has no {missing[0]!r}, which "
                    f"{type(self).__name__} reads"
                )
            static, dynamic = self._split(group)
            self.functional(**static, **dynamic)  # torch's checks, on the values as saved
            arrays = jax.tree.map(lambda v: jnp.asarray(float(v)), dynamic)
            transform = self.functional(**static, **arrays)
            template = transform.init(self._state_input(g))
            entries = [saved_state.get(int(p), {}) for p in ids]
            new_states.append(state_layout.load(template, entries, g.layout))
            new_groups.append(group)
            new_args.append(tuple(sorted(static.items())))
        for i, g in enumerate(self._groups):
            self.param_groups[i] = new_groups[i]
            g.state, g.built, g.args = new_states[i], new_args[i], None
        self._grad = None



def match(saved: dict[str, Any], group: dict[str, Any]) -> list[Any]:
    """The saved parameter ids in the order of the group's parameters: by name when both
    sides are named, else as saved."""
    names, saved_names = group.get("param_names"), saved.get("param_names")
    if names is None or saved_names is None or list(names) == list(saved_names):
        return list(saved["params"])
    by_name = dict(zip(saved_names, saved["params"]))
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"loaded state dict has no parameter named {', '.join(map(repr, missing[:5]))} "
            "in the corresponding parameter group"
        )
    return [by_name[n] for n in names]
