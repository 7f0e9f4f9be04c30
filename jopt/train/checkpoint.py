"""Checkpoints of a ``TrainState`` with orbax-checkpoint: atomic, locked, the last N kept, checked.

A checkpoint is a folder ``epoch_<N>`` (``N`` finished epochs) holding the state's leaves
(orbax's array format) and a JSON record: the run's configuration, the history so far, and the
path, shape and dtype of every leaf. orbax writes each checkpoint under a temporary name and
renames it when complete, so a crash never leaves a half-written checkpoint under a real name.

Nothing but jopt's own checkpoints is ever deleted or overwritten: ``keep`` removes the oldest
folders that are named ``epoch_<N>`` *and* hold a readable jopt record; any other file or folder
in the directory (``runs/1``, a user's notes) is left alone, and a folder of that name that is
not a jopt checkpoint is refused rather than replaced. One writer at a time: a run holds an OS
lock on ``<directory>/.jopt-lock`` while it writes, released when it ends or dies, so a second
run on the same directory is refused at once and a killed run never blocks a later one.

Restoring checks the record against the run that asks for it before reading any array: a
different configuration, or a state of another shape, is a ``CheckpointError`` naming the first
difference; an unreadable checkpoint is an ``UnreadableCheckpoint`` (a ``CheckpointError``).
:meth:`Checkpoints.restore_latest` falls back from unreadable checkpoints to the newest good
one and says which it skipped. Nothing on disk is changed by a restore. Each array is restored
with the sharding of its leaf in ``like`` (a placed array or a ``jax.ShapeDtypeStruct`` with a
``sharding``), whatever mesh wrote it: a checkpoint of 8 devices resumes on 1, and back.

**Several processes** (after ``jax.distributed.initialize``, on a directory they all see):
every process calls every method, in the same order. Each process writes the shards its
devices hold (orbax's multi-process saving; nothing is gathered onto one host) and reads the
shards its devices need. The primary process (process 0) alone takes the lock, checks what is
in the directory, seals, deletes and verifies digests; its answer — a list of checkpoints, a
record, an error — is shared with the others, and an error on any process is raised on every
process, so that all of them resume from the same checkpoint or all stop with the same line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = ["CheckpointError", "Checkpoints", "UnreadableCheckpoint"]

FORMAT = "jopt.train/1"
PREFIX = "epoch_"
LOCK = ".jopt-lock"
DIGEST = "jopt-digest.json"

T = TypeVar("T")


class CheckpointError(Exception):
    """A checkpoint that cannot be used or written: unreadable, of a different run, in use."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read back as they were written."""


def _leaves(tree: Any) -> tuple[list[str], list[Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in flat], [leaf for _, leaf in flat]


def _dtype(leaf: Any) -> np.dtype:
    return np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)


def _describe(leaf: Any) -> list[Any]:
    return [list(np.shape(leaf)), str(_dtype(leaf))]


class Checkpoints:
    """The checkpoints of one run in ``directory`` (created on the first save)."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if not str(directory).strip():
            raise CheckpointError("the checkpoint directory must not be empty")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self._lock: Any = None  # the lock file, held by the primary process
        self._writing = False  # inside ``writing()``, on every process
        self._checkpointer: Any = None

    # -- what is there ----------------------------------------------------------------------

    def path(self, epoch: int) -> Path:
        return self.directory / f"{PREFIX}{epoch}"

    def epochs(self) -> list[int]:
        """The finished checkpoints, oldest first: ``epoch_<N>`` folders that orbax marked
        complete and jopt sealed with the digest of their files (temporary, unfinished writes
        are not listed). With several processes, the primary's list, on every process."""
        return _primary_says(self._epochs)

    def _epochs(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            number = entry.name.removeprefix(PREFIX)
            if (
                entry.name.startswith(PREFIX)
                and number.isdigit()
                and (entry / "_CHECKPOINT_METADATA").exists()
                and (entry / DIGEST).exists()
            ):
                found.append(int(number))
        return sorted(found)

    def latest(self) -> int | None:
        """The epoch of the newest finished checkpoint, or ``None``."""
        found = self.epochs()
        return found[-1] if found else None

    def _ours(self, path: Path) -> bool:
        """Whether ``path`` holds a record jopt wrote (what jopt may delete or replace)."""
        try:
            record = json.loads((path / "record" / "metadata").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("format") == FORMAT

    # -- one writer ---------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse, before any training, a directory that cannot hold checkpoints: a file, a
        path under a file, an unwritable place. Creates the directory. With several
        processes, every one of them must be able to write there."""
        _all_agree(self._check_writable)

    def _check_writable(self) -> None:
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} is a file")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".jopt-probe-{jax.process_index()}-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(
                f"cannot write checkpoints in {self.directory}: {e.strerror or e}"
            ) from None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the directory's lock: a second writer gets a ``CheckpointError`` at once.
        With several processes the primary holds it, for all of them."""
        if self._writing:  # held already, by this object
            yield
            return
        self.check_writable()
        _primary_says(self._take_lock)
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            if self._lock is not None:
                self._lock.close()  # releases the lock
                self._lock = None

    def _take_lock(self) -> None:
        import fcntl

        handle = open(self.directory / LOCK, "a+")  # noqa: SIM115 - held until released
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CheckpointError(
                f"checkpoint directory {self.directory} is in use by another run (pid {holder})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    # -- write --------------------------------------------------------------------------------

    def _orbax(self) -> Any:
        if self._checkpointer is None:
            import orbax.checkpoint as ocp  # slow to import: only when checkpoints are used

            self._ocp = ocp
            self._checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
            # Reads go to the handler itself: it has no barrier inside, so a process that
            # fails to read cannot leave the others waiting (they agree afterwards).
            self._reader = ocp.CompositeCheckpointHandler()
        return self._checkpointer

    def save(self, state: Any, config: dict[str, Any], history: dict[str, list[float]]) -> Path:
        """Write ``state`` (a ``TrainState``) as the checkpoint of epoch ``state.epoch``, then
        delete jopt's oldest checkpoints beyond ``keep``. With several processes every process
        calls it and writes its own shards of arrays that span processes."""
        checkpointer = self._orbax()
        ocp = self._ocp
        epoch = int(np.asarray(state.epoch))
        path = self.path(epoch)
        paths, leaves = _leaves(state)
        record = {
            "format": FORMAT,
            "epoch": epoch,
            "config": config,
            "history": history,
            "leaves": [[p, *_describe(x)] for p, x in zip(paths, leaves)],
        }
        arrays = {f"{i:04d}": x for i, x in enumerate(leaves)}
        with self.writing():
            _primary_says(lambda: self._check_replaceable(path))
            try:
                checkpointer.save(
                    path,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)
                    ),
                    force=True,
                )
            except OSError as e:
                reason = e.strerror or e
                raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None
            _primary_says(lambda: self._finish(path))  # and the others wait for it
        return path

    def _check_replaceable(self, path: Path) -> None:
        if path.exists() and not self._ours(path):
            raise CheckpointError(
                f"{path} exists and is not a jopt checkpoint: it is left as it is; "
                "choose another directory"
            )

    def _finish(self, path: Path) -> None:
        try:
            _seal(path)
        except OSError as e:
            raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
        self._prune()

    def _prune(self) -> None:
        ours = [e for e in self._epochs() if self._ours(self.path(e))]
        for epoch in ours[: max(len(ours) - self.keep, 0)]:
            doomed = self.path(epoch)
            aside = self.directory / f".{doomed.name}.deleting-{os.getpid()}"
            doomed.rename(aside)  # atomic: never a half-deleted checkpoint under its name
            shutil.rmtree(aside, ignore_errors=True)

    # -- read ---------------------------------------------------------------------------------

    def record(self, config: dict[str, Any], epoch: int | None = None) -> dict[str, Any]:
        """The JSON record of the checkpoint at ``epoch`` (the latest by default), checked
        against ``config``: a ``CheckpointError`` unless readable and written by that run.
        With several processes the primary verifies and reads it, for all of them."""
        epoch = self.latest() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        return _primary_says(lambda: self._record(config, epoch))

    def _record(self, config: dict[str, Any], epoch: int) -> dict[str, Any]:
        where = self.path(epoch)
        _verify(where)
        self._orbax()
        try:
            record = self._reader.restore(
                where, args=self._ocp.args.Composite(record=self._ocp.args.JsonRestore())
            )["record"]
        except Exception as e:  # orbax raises many kinds; all mean "unreadable"
            raise UnreadableCheckpoint(f"cannot read checkpoint {where}: {_reason(e)}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise UnreadableCheckpoint(f"{where} is not a jopt training checkpoint")
        if record.get("epoch") != epoch:
            raise UnreadableCheckpoint(
                f"checkpoint {where} holds the record of epoch {record.get('epoch')!r}"
            )
        _check_config(record.get("config", {}), config, where)
        return record

    def restore(
        self, like: Any, config: dict[str, Any], epoch: int | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The state saved at ``epoch`` (the latest by default) and its record.

        ``like`` is a state of the run restoring (its structure, shapes and dtypes are what the
        checkpoint must hold): arrays, or ``jax.ShapeDtypeStruct``s. Each array comes back
        with the sharding of its leaf in ``like`` (one device when the leaf has none),
        whatever devices wrote it. ``config`` must equal the saved configuration.
        """
        epoch = self.latest() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        where = self.path(epoch)
        record = self.record(config, epoch)
        paths, leaves = _leaves(like)
        want = [[p, *_describe(x)] for p, x in zip(paths, leaves)]
        if record.get("leaves") != want:
            raise CheckpointError(
                f"checkpoint {where} holds a different state: "
                f"{_first_difference(record.get('leaves', []), want)}"
            )
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = {
            f"{i:04d}": jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=_sharding(x) or here)
            for i, x in enumerate(leaves)
        }
        arrays = _all_agree(lambda: self._read(where, abstract))
        treedef = jax.tree.structure(like)
        state = jax.tree.unflatten(treedef, [arrays[f"{i:04d}"] for i in range(len(leaves))])
        saved_epoch = int(np.asarray(getattr(state, "epoch", epoch)))
        if saved_epoch != epoch:
            raise UnreadableCheckpoint(
                f"checkpoint {where} holds the state of epoch {saved_epoch}"
            )
        return state, record

    def _read(self, where: Path, abstract: dict[str, Any]) -> dict[str, Any]:
        self._orbax()
        ocp = self._ocp
        try:
            return self._reader.restore(
                where, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:
            raise UnreadableCheckpoint(f"cannot read checkpoint {where}: {_reason(e)}") from None

    def restore_latest(
        self, like: Any, config: dict[str, Any]
    ) -> tuple[Any, dict[str, Any], list[str]]:
        """The newest checkpoint that reads back, its record, and a line for each newer one
        skipped as unreadable. A checkpoint of a different run is not skipped but refused."""
        skipped: list[str] = []
        for epoch in reversed(self.epochs()):
            try:
                state, record = self.restore(like, config, epoch)
            except UnreadableCheckpoint as e:
                skipped.append(f"skipped {e}")
                continue
            return state, record, skipped
        raise UnreadableCheckpoint(
            f"no readable checkpoint in {self.directory}" + (f" ({skipped[0]})" if skipped else "")
        )


def _sharding(leaf: Any) -> jax.sharding.Sharding | None:
    sharding = getattr(leaf, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.Sharding) else None


# -- several processes: one answer for all of them ---------------------------------------------


def _primary_says(fn: Callable[[], T]) -> T:
    """``fn()`` on the primary process (process 0), its value on every process; its error is
    raised on every process. With one process, just ``fn()``."""
    if jax.process_count() == 1:
        return fn()
    return _agree(fn, primary_only=True)


def _all_agree(fn: Callable[[], T]) -> T:
    """``fn()`` on every process; an error on any of them is raised on all of them (a process
    that failed raises its own, the others the lowest failed process's). Its value is each
    process's own."""
    if jax.process_count() == 1:
        return fn()
    return _agree(fn, primary_only=False)


def _agree(fn: Callable[[], T], primary_only: bool) -> Any:
    """``fn()`` where it runs, then every process learns every other's outcome: the value
    of the primary's run (as JSON) when it runs alone, an error wherever one was raised."""
    runs = not primary_only or jax.process_index() == 0
    value: Any = None
    failure: BaseException | None = None
    said: dict[str, Any] = {}
    if runs:
        try:
            value = fn()
            said = {"value": value} if primary_only else {}
        except Exception as e:  # shared with the others before it is raised here
            failure = e
            kind = type(e).__name__ if isinstance(e, CheckpointError) else None
            said = {"error": kind, "message": str(e) if kind else _reason(e)}
    heard = [json.loads(text) for text in _allgather(json.dumps(said))]
    if failure is not None:
        raise failure
    for process, answer in enumerate(heard):
        if "error" in answer:
            message = answer["message"]
            if answer["error"] is None:  # not a CheckpointError: say where it happened
                raise CheckpointError(f"process {process}: {message}")
            kind = UnreadableCheckpoint if answer["error"] == "UnreadableCheckpoint" else (
                CheckpointError)
            raise kind(message)
    return value if runs else heard[0]["value"]


def _allgather(text: str) -> list[str]:
    """Every process's ``text``, in process order (two small collectives)."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    width = max(64, 1 << int(max(sizes) - 1).bit_length())  # few shapes, few compilations
    padded = np.zeros(width, np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [bytes(rows[i, : sizes[i]]).decode() for i in range(len(sizes))]


def _digests(path: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``path`` but the digest itself, by relative path."""
    found = {}
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.name != DIGEST:
            found[str(file.relative_to(path))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def _seal(path: Path) -> None:
    """Write the digest of a checkpoint orbax has finished: written last, and atomically, so
    a checkpoint without one is unfinished and never listed."""
    temporary = path / f".{DIGEST}.tmp"
    temporary.write_text(json.dumps(_digests(path)))
    os.replace(temporary, path / DIGEST)


def _verify(path: Path) -> None:
    """``UnreadableCheckpoint`` unless every file of the checkpoint is as it was written:
    corruption is found before orbax reads a byte."""
    try:
        sealed = json.loads((path / DIGEST).read_text())
        now = _digests(path)
    except (OSError, ValueError) as e:
        raise UnreadableCheckpoint(f"cannot read checkpoint {path}: {_reason(e)}") from None
    if not isinstance(sealed, dict):
        raise UnreadableCheckpoint(f"cannot read checkpoint {path}: its digest is not a table")
    for name in sorted(set(sealed) | set(now)):
        if sealed.get(name) != now.get(name):
            what = "is missing" if name not in now else (
                "was not written by jopt" if name not in sealed else "changed since it was written"
            )
            raise UnreadableCheckpoint(f"cannot read checkpoint {path}: {name} {what}")


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
