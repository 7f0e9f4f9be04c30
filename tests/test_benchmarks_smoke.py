"""The benchmark scripts run, at tiny sizes, and what they rely on holds.

No timing is asserted here (timings belong to ``benchmarks/``); what is asserted are facts:
every JAX contender donates its buffers, changing a learning rate never recompiles, a compiled
Iris run is compiled once and reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jopt
import jopt.optim

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import facade_steps  # noqa: E402
import iris  # noqa: E402
import memory  # noqa: E402
import step_throughput  # noqa: E402
import sweep  # noqa: E402
import xla_cpu  # noqa: E402

HAS_TORCH = True
try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - CI installs torch
    HAS_TORCH = False


# --------------------------------------------------------------------------------------------
# The scripts run
# --------------------------------------------------------------------------------------------


def test_step_throughput_runs_and_writes_json(tmp_path: Path) -> None:
    payload = step_throughput.main(
        ["--quick", "--cases", "2Kx10", "--optimizers", "adam", "--out", str(tmp_path)]
    )
    written = json.loads((tmp_path / "step_throughput.json").read_text())
    assert written["benchmark"] == "step_throughput"
    assert written["machine"]["load_average_end"] is not None
    (record,) = payload["results"]
    assert (record["optimizer"], record["case"], record["leaves"]) == ("adam", "2Kx10", 10)
    assert all(record["donation"].values()), record["donation"]
    expected = {"optax", "jopt", "jopt flat", "jopt+optax.flatten", "facade"}
    if HAS_TORCH:
        expected |= {"torch foreach", "torch fused"}
    assert set(record["timings"]) == expected


def test_facade_steps_runs_and_compiles_each_path_once(tmp_path: Path) -> None:
    payload = facade_steps.main(
        ["--quick", "--leaves", "3", "--models", "iris", "--out", str(tmp_path)]
    )
    written = json.loads((tmp_path / "facade_steps.json").read_text())
    assert written["benchmark"] == "facade_steps"
    # The programs each JAX contender compiles for its whole loop: one train step; for
    # backward+step, the backward program and the update from the accumulated gradients.
    programs = {
        "optax": 1,
        "facade step(loss_fn)": 1,
        "facade backward+step": 2,
        "facade step(grads)": 1,
        "facade nnx module": 1,
    }
    expected = set(programs) | (set(facade_steps.TORCH) if HAS_TORCH else set())
    assert [r["case"] for r in payload["results"]] == ["3 leaves", "iris mlp"]
    for record in payload["results"]:
        contenders = record["contenders"]
        assert set(contenders) == expected
        for name, n in programs.items():
            assert contenders[name]["compile_count"] == {"first": n, "end": n}, (
                record["case"],
                name,
            )
        # Same start, same first batch: every JAX contender does the same work.
        losses = [contenders[name]["first_loss"] for name in programs]
        np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
        if HAS_TORCH and record["kind"] == "leaves":  # the same arrays in torch
            for name in facade_steps.TORCH:
                np.testing.assert_allclose(contenders[name]["first_loss"], losses[0], rtol=1e-5)
        assert {"step(loss_fn) / optax", "nnx module compile / optax"} <= set(record["ratios"])


def test_iris_runs() -> None:
    payload = iris.main(["--quick", "--epochs", "1", "--no-process", "--no-compile", "--no-json"])
    results = payload["results"]
    assert {"jopt scan-fit", "jopt step loop", "jopt facade loop", "optax loop"} <= set(results)
    # Every contender trains the same recipe: after one epoch all are well above chance (1/3).
    for name, record in results.items():
        assert record["test_accuracy"] > 0.4, name


def test_sweep_runs() -> None:
    payload = sweep.main(
        ["--ks", "2", "--epochs", "1", "--repeats", "1", "--torch-runs", "1"]
        + ["--no-process", "--no-json"]
    )
    assert payload["sweeps"]["2"]["runs"] == 2
    assert payload["sweeps"]["2"]["runs_per_s"] > 0


def test_xla_cpu_worker_runs() -> None:
    record = xla_cpu.worker("2 leaves", 4096, quick=True)
    assert {"jopt", "optax"} <= set(record["timings"])
    assert record["compiled"]["jopt"]["loop_fusions"] > 0


def test_memory_worker_donates() -> None:
    record = memory.worker("jopt", 1 << 14)
    assert record["donated"] is True
    # p, g, m, v in float32 (and the step counts)
    assert 4 * 4 * (1 << 14) <= record["params_grads_state"] < 4 * 4 * (1 << 14) + 64
    assert memory.worker("jopt no-donate", 1 << 10)["donated"] is False


def test_table_and_timing_helpers() -> None:
    timing = common.Timing([3.0, 1.0, 2.0])
    assert timing.median == 2.0 and timing.min == 1.0
    text = common.table([{"a": 1.23456, "b": None}], ["a", "b"])
    assert "1.23" in text and "-" in text
    assert step_throughput.parse_case("10Mx100") == (10_000_000, 100)
    assert sum(step_throughput.leaf_sizes(1003, 10)) == 1003


# --------------------------------------------------------------------------------------------
# Facts the figures rely on
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["jopt", "optax"])
@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_functional_step_donates(lib: str, name: str) -> None:
    params, grads = step_throughput.make_tree(256, 4, 0), step_throughput.make_tree(256, 4, 1)
    contender = step_throughput.JaxContender(step_throughput.functional(name, lib), params, grads)
    assert contender.donates()


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_facade_step_donates(name: str) -> None:
    params, grads = step_throughput.make_tree(256, 4, 0), step_throughput.make_tree(256, 4, 1)
    contender = step_throughput.FacadeContender(name, params, grads)
    assert contender.donates()


def test_functional_lr_change_does_not_recompile() -> None:
    opt = jopt.inject_hyperparams(jopt.adam)(lr=1e-3)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = {"w": jnp.ones(8), "b": jnp.zeros(3)}
    grads = jax.tree.map(jnp.ones_like, params)
    state = opt.init(params)
    for lr in (1e-3, 1e-2, 0.5, 3.0):
        state.hyperparams["lr"] = lr
        params, state = step(params, state, grads)
    assert len(traces) == 1
    assert float(state.hyperparams["lr"]) == 3.0


def test_facade_lr_change_does_not_recompile() -> None:
    opt = jopt.optim.Adam({"w": jnp.ones(8), "b": jnp.zeros(3)}, lr=1e-3)
    grads = {"w": jnp.ones(8), "b": jnp.ones(3)}
    opt.step(grads)
    traces = opt.compile_count
    for lr in (1e-2, 0.5, 3.0):
        opt.param_groups[0]["lr"] = lr
        opt.step(grads)
    assert opt.compile_count == traces


def test_iris_run_compiles_once() -> None:
    fit = iris.ScanFit(epochs=2)  # its first call compiles
    compiled, seconds = len(fit.trainer._compiled), fit.trainer.compile_seconds
    assert compiled >= 1 and seconds > 0
    first, second = fit(), fit()
    assert first == second  # same start, same batches: the same run
    assert len(fit.trainer._compiled) == compiled
    assert fit.trainer.compile_seconds == seconds


def test_facade_loop_compiles_once_per_batch_shape() -> None:
    loop = iris.FacadeLoop(epochs=1)
    loop()
    traces = loop.opt.compile_count
    loop()
    assert loop.opt.compile_count == traces
    # The full batches and the short last one: one compiled step each.
    assert traces == 2


def test_torch_script_matches_the_jax_split() -> None:
    pytest.importorskip("torch")
    import torch_iris

    from jopt.train import load_iris

    x_train, y_train, x_test, y_test = torch_iris.load_iris()
    data = load_iris()
    np.testing.assert_allclose(x_train, data.x_train, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y_test, data.y_test)
