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


@pytest.mark.parametrize("name", ["adam", pytest.param("sgd", marks=pytest.mark.slow)])
def test_two_processes_train_data_parallel_as_one(name):
    """2 processes x 4 CPU devices joined by ``jax.distributed.initialize`` on a loopback
    port: 104 data-parallel steps over the 8 devices equal a one-process, one-device run."""
    import json

    from flax import nnx

    from jopt.train import MLP, fit, load_iris

    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker = str(HERE / "multiprocess_worker.py")
    procs = [
        subprocess.Popen([sys.executable, worker, str(i), "2", port, name], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:  # nothing outlives the test
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        line = next(line for line in out.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    one = fit(MLP(4, (16,), 3, rngs=nnx.Rngs(0)), getattr(jopt, name)(lr=0.01), load_iris(),
              epochs=13, batch_size=16)
    for r in results:
        np.testing.assert_allclose(r["train_loss"], one.history["train_loss"], rtol=1e-5)


@pytest.mark.slow
def test_cli_runs_as_two_processes():
    """``jopt train --devices 8 --coordinator ... --num-processes 2 --process-id I`` in two
    processes (4 host devices each) reports the one-process numbers."""
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    recipe = ["train", "--optimizer", "adam", "--epochs", "3", "--json", "--no-cache"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jopt", *recipe, "--devices", "8", "--coordinator",
             f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    one = _final(_jopt(*recipe))
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        import json

        mine = json.loads(out.strip().splitlines()[-1])
        np.testing.assert_allclose(
            mine["history"]["train_loss"], one["history"]["train_loss"], rtol=1e-5
        )


def test_cli_refuses_incomplete_process_flags():
    for argv, message in [
        (("train", "--num-processes", "2"), "go together"),
        (("train", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"),
         "--process-id 2 is not below --num-processes 2"),
    ]:
        done = _jopt(*argv)
        assert done.returncode == 2 and message in done.stderr, done.stderr
