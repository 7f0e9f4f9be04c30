"""Sharded optimizer state (``jopt.state_shardings``, ``jopt.init_sharded``) and sharded
training, on 8 CPU devices in a process of their own (JAX fixes the device count when it
starts): the checks are in ``sharded_checks.py``; this file runs them and reports each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import jopt

HERE = Path(__file__).parent


def _run_checks(marker: str) -> None:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
         str(HERE / "sharded_checks.py")],
        env=env, capture_output=True, text=True, timeout=540, check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


def test_the_eight_device_checks_pass_in_their_own_process():
    _run_checks("not slow")


@pytest.mark.slow
def test_the_long_eight_device_tables_pass_in_their_own_process():
    _run_checks("slow")


def test_state_shardings_on_one_device_follow_the_parameters():
    """The same rule on one device (a SingleDeviceSharding): every leaf placed there."""
    device = jax.devices()[0]
    params = jax.device_put({"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, device)
    state = jopt.init_sharded(jopt.adam(), params)
    assert all(leaf.sharding.device_set == {device} for leaf in jax.tree.leaves(state))


def test_state_shardings_name_a_parameter_without_one():
    params = {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}
    with pytest.raises(ValueError, match=r"parameter \['w'\] has no sharding"):
        jopt.state_shardings(jopt.sgd(0.1), params)
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("fsdp",))
    placed = {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32,
                                         sharding=NamedSharding(mesh, PartitionSpec("fsdp")))}
    shardings = jopt.state_shardings(jopt.sgd(0.1, momentum=0.9), placed)
    spec = jax.tree.leaves(shardings)[1].spec
    assert spec == PartitionSpec("fsdp")


def _jopt(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "jopt", *argv, "--no-cache"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def _final(done: subprocess.CompletedProcess) -> dict:
    import json

    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cli_trains_on_four_devices_and_resumes_on_one(tmp_path):
    """``--devices 4`` makes 4 host devices on a CPU; its checkpoint resumes on one device
    (where a run executes is not part of the recipe) and lands where a one-device run does."""
    recipe = ("train", "--optimizer", "sgd", "--epochs", "4", "--json")
    one = _final(_jopt(*recipe))
    ckpt = str(tmp_path / "ckpt")
    first = _jopt("train", "--optimizer", "sgd", "--epochs", "2", "--json", "--devices", "4",
                  "--fsdp", "--checkpoint-dir", ckpt, "--checkpoint-every", "1")
    assert _final(first)["checkpoints"] == [1, 2]
    resumed = _final(_jopt(*recipe, "--checkpoint-dir", ckpt, "--resume"))
    assert resumed["resumed_from"] == 2
    np.testing.assert_allclose(
        resumed["history"]["train_loss"], one["history"]["train_loss"], rtol=1e-5
    )


def test_cli_refuses_devices_it_cannot_use():
    for argv, message in [
        (("train", "--devices", "3"), "batch size 16 does not split over 3 devices"),
        (("train", "--fsdp"), "--fsdp shards over several devices"),
        (("sweep", "--devices", "4", "--runs", "6"), "--runs 6 does not split over 4 devices"),
    ]:
        done = _jopt(*argv)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workers(*argvs: list[str], timeout: float = 240) -> list[dict]:
    """Run ``multiprocess_worker.py`` once per ``argv``, side by side; what each printed.
    Nothing outlives the call."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker = str(HERE / "multiprocess_worker.py")
    procs = [
        subprocess.Popen([sys.executable, worker, *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    return results


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """``launch(name, fsdp)``: 2 processes x 4 CPU devices joined by
    ``jax.distributed.initialize`` on a loopback port, each printing its results
    (``multiprocess_worker.py``: a data-parallel ``fit``, then ``jopt train``'s run with a
    checkpoint every epoch into a directory of its own); each launch runs once per module."""
    launched: dict = {}

    def launch(name: str, fsdp: bool) -> tuple[Path, list[dict]]:
        if (name, fsdp) not in launched:
            directory = tmp_path_factory.mktemp(f"two-{name}-{'fsdp' if fsdp else 'dp'}") / "ckpt"
            port = str(_free_port())
            common = ["--processes", "2", "--port", port, "--optimizer", name,
                      "--checkpoint-dir", str(directory), *(["--fsdp"] if fsdp else ["--fit"])]
            results = _workers(*(["--process-id", str(i), *common] for i in range(2)))
            launched[name, fsdp] = directory, results
        return launched[name, fsdp]

    return launch


@pytest.mark.parametrize("name", ["adam", pytest.param("sgd", marks=pytest.mark.slow)])
def test_two_processes_train_data_parallel_as_one(name, two_processes):
    """2 processes x 4 CPU devices: 104 data-parallel steps over the 8 devices equal a
    one-process, one-device run."""
    from flax import nnx

    from jopt.train import MLP, fit, load_iris

    _, results = two_processes(name, False)
    one = fit(MLP(4, (16,), 3, rngs=nnx.Rngs(0)), getattr(jopt, name)(lr=0.01), load_iris(),
              epochs=13, batch_size=16)
    for r in results:
        np.testing.assert_allclose(r["fit_loss"], one.history["train_loss"], rtol=1e-5)


def _assert_same_run(got: dict, want, epochs: int) -> None:
    """A run's history (its first ``epochs`` epochs) and, for a whole run, its final
    parameters equal ``want``'s (a ``RunResult``) within 1e-5."""
    for k, v in want.history.items():
        np.testing.assert_allclose(got["history"][k], np.asarray(v)[:epochs], rtol=1e-5,
                                   atol=1e-6, err_msg=k)
    if epochs == len(want.history["train_loss"]):
        ref = [np.ravel(np.asarray(p)) for p in jax.tree.leaves(want.params)]
        assert len(got["params"]) == len(ref)
        for a, b in zip(got["params"], ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["data-parallel", "fsdp"])
def test_a_checkpoint_of_two_processes_resumes_on_one_process(fsdp, two_processes, tmp_path):
    """Every process of a 2 x 4 device run writes its own shards of each checkpoint; the same
    processes fall back together from a damaged newest checkpoint; and the checkpoint resumes
    in one process on 8 devices and on 1, each ending where an uninterrupted run ends."""
    import shutil

    from jopt.train.checkpoint import Checkpoints
    from jopt.train.runner import RunConfig, Session

    directory, results = two_processes("adam", fsdp)
    config = RunConfig(optimizer="adam", epochs=4, schedule="cosine")
    straight = Session().run(config)

    # the interrupted run: epochs 1-3, the last 2 checkpoints kept, nothing else in the folder
    for r in results:
        assert r["stopped"]["checkpoints"] == [2, 3]
        _assert_same_run(r["stopped"], straight, 3)
    assert sorted(os.listdir(directory)) == [".jopt-lock", "epoch_2", "epoch_3"]
    state = directory / "epoch_3" / "state"
    for process in (0, 1):  # each process wrote shards of its own
        shards = [p for p in (state / f"ocdbt.process_{process}").rglob("*") if p.is_file()]
        assert len(shards) > 1, sorted(os.listdir(state))
    # as orbax describes the arrays: the first kernel (4, 16) and its two Adam moments are
    # split over the 8 devices with --fsdp, replicated without; either way each device
    # writes an eighth (its shard, or its slice of a replicated array)
    import orbax.checkpoint as ocp
    from etils import epath

    described = ocp.StandardCheckpointHandler().metadata(epath.Path(state))
    kernels = [m for m in described.values() if tuple(m.shape) == (4, 16)]
    assert len(kernels) == 3
    for m in kernels:
        assert tuple(m.sharding.partition_spec) == ((None, "data") if fsdp else ())
        assert tuple(m.storage.write_shape) == (4, 2)

    # the same two processes resume a copy whose epoch 3 has a damaged shard: both fall back
    for r in results:
        again = r["again"]
        assert again["resumed_from"] == 2 and again["checkpoints"] == [3, 4]
        [note] = again["notes"]
        assert "skipped" in note and "epoch_3" in note and "ocdbt.process_1" in note
        _assert_same_run(again, straight, 4)

    # one process, 8 devices (the same placement) and 1 device
    eight, one = tmp_path / "eight", tmp_path / "one"
    shutil.copytree(directory, eight)
    shutil.copytree(directory, one)
    [resumed] = _workers(["--local-devices", "8", "--checkpoint-dir", str(eight), "--resume",
                          *(["--fsdp"] if fsdp else [])])
    assert resumed["resumed"]["resumed_from"] == 3
    _assert_same_run(resumed["resumed"], straight, 4)
    alone = Session().run(config, checkpoints=Checkpoints(one, keep=2), checkpoint_every=1,
                          resume=True)
    assert alone.resumed_from == 3 and alone.checkpoints == [3, 4]
    _assert_same_run({"history": alone.history,
                      "params": [np.ravel(np.asarray(p)) for p in jax.tree.leaves(alone.params)]},
                     straight, 4)


def _jopt_two_processes(*argv: str) -> list[subprocess.CompletedProcess]:
    """``jopt ARGV --devices 8`` as 2 processes of 4 host devices each, side by side."""
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    commands = [
        [sys.executable, "-m", "jopt", *argv, "--devices", "8", "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
        for i in range(2)
    ]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [subprocess.CompletedProcess(c, p.returncode, out, err)
            for c, p, (out, err) in zip(commands, procs, outputs)]


@pytest.mark.slow
def test_cli_runs_as_two_processes(tmp_path):
    """``jopt train --devices 8 --coordinator ... --num-processes 2 --process-id I`` in two
    processes (4 host devices each) reports the one-process numbers; with ``--fsdp`` and
    ``--checkpoint-dir`` both save, and one process resumes what they wrote. A directory
    another run holds is refused by both processes with the same line."""
    from jopt.train.checkpoint import Checkpoints

    recipe = ["train", "--optimizer", "adam", "--epochs", "3", "--json", "--no-cache"]
    ckpt = tmp_path / "ckpt"
    saving = (*recipe, "--fsdp", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1")
    with Checkpoints(ckpt).writing():
        refused = _jopt_two_processes(*saving)
    for done in refused:
        assert done.returncode == 2, done.stderr[-3000:]
        assert f"in use by another run (pid {os.getpid()})" in done.stderr.strip().splitlines()[-1]
    one = _final(_jopt(*recipe))
    for done in _jopt_two_processes(*saving):
        mine = _final(done)
        assert mine["checkpoints"] == [1, 2, 3]
        np.testing.assert_allclose(
            mine["history"]["train_loss"], one["history"]["train_loss"], rtol=1e-5
        )
    resumed = _final(_jopt(*recipe, "--checkpoint-dir", str(ckpt), "--resume"))
    assert resumed["resumed_from"] == 3
    np.testing.assert_allclose(
        resumed["history"]["test_loss"], one["history"]["test_loss"], rtol=1e-5
    )


def test_cli_refuses_incomplete_process_flags():
    for argv, message in [
        (("train", "--num-processes", "2"), "go together"),
        (("train", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"),
         "--process-id 2 is not below --num-processes 2"),
    ]:
        done = _jopt(*argv)
        assert done.returncode == 2 and message in done.stderr, done.stderr
