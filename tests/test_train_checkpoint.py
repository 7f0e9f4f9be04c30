"""Checkpoints: resume is bitwise, the last N are kept, bad checkpoints fail cleanly."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jopt.train.cache import CompileCounter
from jopt.train.checkpoint import CheckpointError, Checkpoints
from jopt.train.runner import RunConfig, Session

run = Session().run
CONFIG = RunConfig(epochs=30, schedule="cosine")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_same_history(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert len(a[k]) == CONFIG.epochs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = tmp_path_factory.mktemp("full")
    result = run(CONFIG, checkpoints=Checkpoints(directory, keep=2), checkpoint_every=10)
    return directory, result


def test_resume_is_bitwise_identical(finished, tmp_path):
    _, full = finished
    stopped = run(CONFIG, checkpoints=Checkpoints(tmp_path), checkpoint_every=10,
                  stop_after=17)
    assert stopped.checkpoints == [10]  # epochs 11-17 are lost, as in a crash
    resumed = run(CONFIG, checkpoints=Checkpoints(tmp_path), checkpoint_every=10, resume=True)
    assert resumed.resumed_from == 10
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_same_history(resumed.history, full.history)
    assert int(resumed.state.epoch) == 30


def test_keeps_the_last_n_and_no_temporary_names(finished):
    directory, result = finished
    assert Checkpoints(directory).epochs() == [20, 30] == result.checkpoints
    assert sorted(os.listdir(directory)) == [".jopt-lock", "epoch_20", "epoch_30"]


def test_unfinished_write_is_ignored(finished, tmp_path):
    directory, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    (copy / "epoch_40.orbax-checkpoint-tmp-1234").mkdir()  # a write that never finished
    assert Checkpoints(copy).latest() == 30


def test_resume_with_nothing_to_do_keeps_the_result(finished, tmp_path):
    directory, full = finished
    again = run(CONFIG, checkpoints=Checkpoints(directory, keep=2), resume=True)
    assert again.resumed_from == 30
    assert_same_history(again.history, full.history)


def test_mismatched_config_is_refused_and_files_stay(finished):
    directory, _ = finished
    before = snapshot(directory)
    other = dataclasses.replace(CONFIG, lr=0.5)
    with pytest.raises(CheckpointError, match="different run: lr is 0.01 there, 0.5 here"):
        run(other, checkpoints=Checkpoints(directory), resume=True)
    assert snapshot(directory) == before


def test_mismatched_state_is_refused(finished):
    directory, full = finished
    like = full.state._replace(epoch=np.zeros(2, np.int32))  # a state of another shape
    with pytest.raises(CheckpointError, match=r"different state: \.epoch is int32 \(\) there, "
                       r"int32 \(2,\) here"):
        Checkpoints(directory).restore(like, CONFIG.resume_record())


def test_existing_checkpoints_are_not_overwritten_without_resume(finished):
    directory, _ = finished
    before = snapshot(directory)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run(CONFIG, checkpoints=Checkpoints(directory))
    assert snapshot(directory) == before


def corrupt(checkpoint: Path) -> None:
    for path in (checkpoint / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "ocdbt" in str(path):
            path.write_bytes(b"\0garbage" * 8)


def test_no_readable_checkpoint_gives_one_clear_error(finished, tmp_path):
    directory, _ = finished
    copy = tmp_path / "corrupt"
    shutil.copytree(directory, copy)
    corrupt(copy / "epoch_30")
    (copy / "epoch_20" / "record" / "metadata").write_text("{not json")
    before = snapshot(copy)
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        run(CONFIG, checkpoints=Checkpoints(copy), resume=True)
    assert "\n" not in str(info.value) and "epoch_30" in str(info.value)
    assert snapshot(copy) == before


def test_only_jopts_own_folders_are_deleted(tmp_path):
    users = {"1": "a", "7": "b", "2023": "c", "epoch_2": "not a checkpoint", "notes.txt": None}
    for name, text in users.items():
        if text is None:
            (tmp_path / name).write_text("keep me")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "file").write_text(text)
    config = RunConfig(epochs=6)
    with pytest.raises(CheckpointError, match="epoch_2 exists and is not a jopt checkpoint"):
        run(config, checkpoints=Checkpoints(tmp_path, keep=1), checkpoint_every=2)
    shutil.rmtree(tmp_path / "epoch_2")
    del users["epoch_2"]
    result = run(config, checkpoints=Checkpoints(tmp_path, keep=1), checkpoint_every=1)
    assert result.checkpoints == [6]
    for name, text in users.items():
        path = tmp_path / name
        kept = path.read_text() if text is None else (path / "file").read_text()
        assert kept == (text or "keep me")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, ".jopt-lock", "epoch_6"])


def test_a_second_writer_is_refused_and_the_first_keeps_going(tmp_path):
    first, second = Checkpoints(tmp_path), Checkpoints(tmp_path)
    with first.writing():
        with pytest.raises(CheckpointError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            run(CONFIG, checkpoints=second, checkpoint_every=10)
        assert second.epochs() == []
    result = run(CONFIG, checkpoints=second, checkpoint_every=10)  # released: no stale lock
    assert result.checkpoints == [10, 20, 30]


def test_a_killed_writer_leaves_no_lock_behind(tmp_path):
    ckpt, errors = tmp_path / "ckpt", tmp_path / "holder.err"
    with errors.open("w") as err:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(ckpt)],
                                  stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        if holder.stdout.readline().strip() != "locked":
            holder.wait(timeout=60)
            pytest.fail(f"the lock holder exited {holder.returncode}: {errors.read_text()}")
        with pytest.raises(CheckpointError, match=f"in use by another run \\(pid {holder.pid}\\)"):
            run(CONFIG, checkpoints=Checkpoints(ckpt), checkpoint_every=10)
    finally:
        holder.kill()  # as kill -9 would: the OS releases the lock
        holder.wait()
    assert holder.returncode == -signal.SIGKILL, errors.read_text()  # killed, holding the lock
    assert run(CONFIG, checkpoints=Checkpoints(ckpt), checkpoint_every=10).checkpoints


HOLD_LOCK = """
import sys, time
from jopt.train.checkpoint import Checkpoints
with Checkpoints(sys.argv[1]).writing():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(finished, tmp_path):
    directory, full = finished
    copy = tmp_path / "fallback"
    shutil.copytree(directory, copy)
    corrupt(copy / "epoch_30")
    resumed = run(CONFIG, checkpoints=Checkpoints(copy, keep=2), checkpoint_every=10, resume=True)
    assert resumed.resumed_from == 20
    [note] = resumed.notes
    assert "skipped" in note and "epoch_30" in note
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_same_history(resumed.history, full.history)


def test_a_record_of_another_epoch_is_not_loaded(finished, tmp_path):
    directory, _ = finished
    copy = tmp_path / "swapped"
    shutil.copytree(directory, copy)
    shutil.rmtree(copy / "epoch_30" / "record")
    shutil.copytree(copy / "epoch_20" / "record", copy / "epoch_30" / "record")
    resumed = run(CONFIG, checkpoints=Checkpoints(copy, keep=2), checkpoint_every=10, resume=True)
    assert resumed.resumed_from == 20 and "epoch_30" in resumed.notes[0]


def test_resume_extends_a_finished_run_bitwise(tmp_path):
    short, longer = RunConfig(epochs=10), RunConfig(epochs=16)
    run(short, checkpoints=Checkpoints(tmp_path / "a"), checkpoint_every=5)
    extended = run(longer, checkpoints=Checkpoints(tmp_path / "a"), checkpoint_every=5,
                   resume=True)
    assert extended.resumed_from == 10 and len(extended.history["lr"]) == 16
    straight = run(longer)
    for a, b in zip(jax.tree.leaves(straight.state), jax.tree.leaves(extended.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for k in straight.history:
        np.testing.assert_array_equal(straight.history[k], extended.history[k])
    # cosine anneals over the total: another total is another run
    run(dataclasses.replace(short, schedule="cosine"), checkpoints=Checkpoints(tmp_path / "b"))
    with pytest.raises(CheckpointError, match="epochs is 10 there, 16 here"):
        run(dataclasses.replace(longer, schedule="cosine"), checkpoints=Checkpoints(tmp_path / "b"),
            resume=True)
    with pytest.raises(CheckpointError, match="at epoch 16, beyond this run's 10 epochs"):
        run(short, checkpoints=Checkpoints(tmp_path / "a"), resume=True)


def test_defaults_spelled_out_are_the_same_run(finished):
    directory, full = finished
    spelled = dataclasses.replace(CONFIG, lr=0.01, weight_decay=0.0)
    again = run(spelled, checkpoints=Checkpoints(directory, keep=2), resume=True)
    assert again.resumed_from == 30


def test_resume_from_nothing_says_so(tmp_path):
    result = run(RunConfig(epochs=2), checkpoints=Checkpoints(tmp_path / "new"), resume=True)
    assert result.resumed_from is None
    assert result.notes == [f"no checkpoint in {tmp_path / 'new'}: training from epoch 0"]


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_unusable_directory_is_refused_before_training(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = blocker if where == "file" else blocker / "ckpt"
    with CompileCounter() as counter, pytest.raises(CheckpointError, match=str(target)):
        run(CONFIG, checkpoints=Checkpoints(target))
    assert counter.stats.programs == 0
