"""Checkpoints: resume is bitwise, the last N are kept, bad checkpoints fail cleanly."""

import dataclasses
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

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
    assert sorted(os.listdir(directory)) == ["20", "30"]


def test_unfinished_write_is_ignored(finished, tmp_path):
    directory, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    (copy / "40.orbax-checkpoint-tmp-1234").mkdir()  # a write that never finished
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
    with pytest.raises(CheckpointError, match="different run: lr is None there, 0.5 here"):
        run(other, checkpoints=Checkpoints(directory), resume=True)
    assert snapshot(directory) == before


def test_mismatched_state_is_refused(finished):
    directory, full = finished
    like = full.state._replace(epoch=np.zeros(2, np.int32))  # a state of another shape
    with pytest.raises(CheckpointError, match=r"different state: \.epoch is int32 \(\) there, "
                       r"int32 \(2,\) here"):
        Checkpoints(directory).restore(like, CONFIG.as_record())


def test_existing_checkpoints_are_not_overwritten_without_resume(finished):
    directory, _ = finished
    before = snapshot(directory)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        run(CONFIG, checkpoints=Checkpoints(directory))
    assert snapshot(directory) == before


def test_corrupt_checkpoint_gives_one_clear_error(finished, tmp_path):
    directory, _ = finished
    copy = tmp_path / "corrupt"
    shutil.copytree(directory, copy)
    for path in (copy / "30" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "ocdbt" in str(path):
            path.write_bytes(b"\0garbage" * 8)
    before = snapshot(copy)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        run(CONFIG, checkpoints=Checkpoints(copy), resume=True)
    assert "\n" not in str(info.value)
    assert snapshot(copy) == before

    record = copy / "30" / "record" / "metadata"
    record.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        run(CONFIG, checkpoints=Checkpoints(copy), resume=True)
