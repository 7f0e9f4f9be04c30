"""Checkpoints of a ``TrainState`` with orbax-checkpoint: atomic, the last N kept, checked.

A checkpoint is a directory named by the number of finished epochs, holding the state's leaves
(orbax's array format) and a JSON record: the run's configuration, the history so far, and the
path, shape and dtype of every leaf. orbax writes each checkpoint under a temporary name and
renames it when complete, so a crash never leaves a half-written checkpoint under a real name;
``keep`` bounds how many stay.

Restoring checks the record against the run that asks for it before reading any array: a
different configuration, or a state of another shape, is a ``CheckpointError`` naming the first
difference; an unreadable checkpoint is a ``CheckpointError`` too. Nothing on disk is changed
by a failed restore.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "Checkpoints"]

FORMAT = "jopt.train/1"


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, or written by a different run."""


def _leaves(tree: Any) -> tuple[list[str], list[Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in flat], [leaf for _, leaf in flat]


def _describe(leaf: Any) -> list[Any]:
    return [
        list(np.shape(leaf)),
        str(np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype),
    ]


class Checkpoints:
    """The checkpoints of one run in ``directory`` (created on the first save)."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self._manager: Any = None

    def _open(self) -> Any:
        if self._manager is None:
            import orbax.checkpoint as ocp  # slow to import: only when checkpoints are used

            self._ocp = ocp
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, create=True, enable_async_checkpointing=False
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def epochs(self) -> list[int]:
        """The finished checkpoints, oldest first (temporary, unfinished ones are not listed)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            if entry.name.isdigit() and (entry / "_CHECKPOINT_METADATA").exists():
                found.append(int(entry.name))
        return sorted(found)

    def latest(self) -> int | None:
        """The epoch of the newest finished checkpoint, or ``None``."""
        found = self.epochs()
        return found[-1] if found else None

    def save(self, state: Any, config: dict[str, Any], history: dict[str, list[float]]) -> Path:
        """Write ``state`` (a ``TrainState``) as the checkpoint of epoch ``state.epoch``."""
        manager = self._open()
        ocp = self._ocp
        epoch = int(state.epoch)
        paths, leaves = _leaves(state)
        record = {
            "format": FORMAT,
            "epoch": epoch,
            "config": config,
            "history": history,
            "leaves": [[p, *_describe(x)] for p, x in zip(paths, leaves)],
        }
        arrays = {f"{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
        manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)
            ),
            force=True,
        )
        manager.wait_until_finished()
        return self.directory / str(epoch)

    def record(self, config: dict[str, Any], epoch: int | None = None) -> dict[str, Any]:
        """The JSON record of the checkpoint at ``epoch`` (the latest by default), checked
        against ``config``: a ``CheckpointError`` unless readable and written by that run."""
        epoch = self.latest() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        where = self.directory / str(epoch)
        manager = self._open()
        ocp = self._ocp
        try:
            record = manager.restore(
                epoch, args=ocp.args.Composite(record=ocp.args.JsonRestore())
            )["record"]
        except Exception as e:  # orbax raises many kinds; all mean "unreadable"
            raise CheckpointError(f"cannot read checkpoint {where}: {_reason(e)}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CheckpointError(f"{where} is not a jopt training checkpoint")
        _check_config(record.get("config", {}), config, where)
        return record

    def restore(
        self, like: Any, config: dict[str, Any], epoch: int | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The state saved at ``epoch`` (the latest by default) and its record.

        ``like`` is a state of the run restoring (its structure, shapes and dtypes are what the
        checkpoint must hold); ``config`` must equal the saved configuration.
        """
        epoch = self.latest() if epoch is None else epoch
        where = self.directory / str(epoch)
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        manager = self._open()
        ocp = self._ocp
        try:
            record = manager.restore(epoch, args=ocp.args.Composite(record=ocp.args.JsonRestore()))[
                "record"
            ]
        except Exception as e:  # orbax raises many kinds; all mean "unreadable"
            raise CheckpointError(f"cannot read checkpoint {where}: {_reason(e)}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CheckpointError(f"{where} is not a jopt training checkpoint")
        _check_config(record.get("config", {}), config, where)
        paths, leaves = _leaves(like)
        want = [[p, *_describe(x)] for p, x in zip(paths, leaves)]
        if record.get("leaves") != want:
            raise CheckpointError(
                f"checkpoint {where} holds a different state: "
                f"{_first_difference(record.get('leaves', []), want)}"
            )
        abstract = {
            f"{i:04d}": jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
            for i, x in enumerate(leaves)
        }
        try:
            arrays = manager.restore(
                epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {where}: {_reason(e)}") from None
        treedef = jax.tree.structure(like)
        state = jax.tree.unflatten(treedef, [arrays[f"{i:04d}"] for i in range(len(leaves))])
        return state, record


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def _check_config(saved: dict[str, Any], config: dict[str, Any], where: Path) -> None:
    for key in sorted(set(saved) | set(config)):
        if saved.get(key) != config.get(key):
            raise CheckpointError(
                f"checkpoint {where} was written by a different run: {key} is "
                f"{saved.get(key)!r} there, {config.get(key)!r} here"
            )


def _first_difference(saved: list[Any], want: list[Any]) -> str:
    def show(leaf: list[Any]) -> str:
        return f"{leaf[2]} {tuple(leaf[1])}"

    for got, exp in zip(saved, want):
        if got[0] != exp[0]:
            return f"{got[0]} there where {exp[0]} is here"
        if got != exp:
            return f"{exp[0] or 'the state'} is {show(got)} there, {show(exp)} here"
    return f"{len(saved)} arrays there, {len(want)} here"
