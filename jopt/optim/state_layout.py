"""torch's optimizer state layout, read from and written into jopt's chain states.

torch keeps per-parameter state under fixed names (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``square_avg``, ``grad_avg``, ``sum``). jopt's state
NamedTuples use the same field names, so the mapping is by name: a field holding a flat
per-parameter buffer is a torch state entry, and the ``count`` of a preconditioner is torch's
``step``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np

from jopt.optim.flat import Flat, Layout
from jopt.transforms import ScaleByAdagradState, ScaleByAdamState, ScaleByRmsState, TraceState

__all__ = ["from_torch", "plain", "torch_view", "transplant"]

# States whose ``count`` is torch's per-parameter "step".
_STEP_STATES = (ScaleByAdamState, ScaleByRmsState, ScaleByAdagradState)


def plain(value: Any) -> Any:
    """A hyperparameter from a state dict as a Python value (torch may store tensors)."""
    if isinstance(value, tuple | list):
        return tuple(plain(v) for v in value)
    if isinstance(value, bool | str | None | numbers.Number):
        return value
    array = np.asarray(value)
    return array.item() if array.size == 1 else value


def _substates(state: Any) -> Iterable[Any]:
    """The NamedTuple states inside a (nested) chain state."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        yield state
        for value in state:
            yield from _substates(value)
    elif isinstance(state, tuple | list):
        for value in state:
            yield from _substates(value)


def _map_substates(state: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return fn(state)
    if isinstance(state, tuple | list):
        return type(state)(_map_substates(v, fn) for v in state)
    return state


def torch_view(state: Any, layout: Layout) -> tuple[int | None, dict[str, Flat]]:
    """torch's "step" (None where torch keeps none) and named per-parameter buffers."""
    step, buffers = None, {}
    for sub in _substates(state):
        if isinstance(sub, _STEP_STATES):
            step = int(sub.count)
        if isinstance(sub, TraceState) and int(sub.count) == 0:
            continue  # torch's momentum_buffer does not exist before the first step
        for name, value in zip(sub._fields, sub):
            if layout.is_flat(value):
                buffers[name] = value
    if step == 0:
        return None, {}
    return step, buffers


def from_torch(template: Any, entries: list[dict[str, Any]], layout: Layout) -> Any:
    """Fill a fresh state with torch-named per-parameter entries."""
    if not any(entries):
        return template
    steps = {float(np.asarray(e["step"])) for e in entries if "step" in e}
    if len(steps) > 1:
        raise ValueError("parameters of one group have different 'step' values")
    step = int(steps.pop()) if steps else None

    def gather(name: str, like: Flat) -> Flat:
        leaves = []
        for j, entry in enumerate(entries):
            value = entry.get(name)
            if value is None:
                raise ValueError(f"state of parameter {j} in its group has no '{name}'")
            slot = layout.slots[j]
            leaves.append(np.asarray(value, dtype=layout.dtypes[slot.bucket]).reshape(slot.shape))
        return layout.flatten_leaves(leaves)

    def fill(sub: Any) -> Any:
        values = {}
        for name, value in zip(sub._fields, sub):
            absent = isinstance(sub, TraceState) and not _has(entries, name)
            if layout.is_flat(value) and not absent:
                values[name] = gather(name, value)
        if isinstance(sub, TraceState):
            values["count"] = jnp.asarray(int(_has(entries, "momentum_buffer")), jnp.int32)
        elif "count" in sub._fields:
            values["count"] = jnp.asarray(step or 0, jnp.int32)
        return sub._replace(**values)

    return _map_substates(template, fill)


def _has(entries: list[dict[str, Any]], name: str) -> bool:
    return any(entry.get(name) is not None for entry in entries)


def transplant(old: Any, new: Any) -> Any:
    """Keep the parts of ``old`` whose state type ``new`` still has."""
    available = {type(sub): sub for sub in _substates(old)}
    return _map_substates(new, lambda sub: available.get(type(sub), sub))
