"""The benchmark scripts run, at tiny sizes, and what they report is what they measured.

No timing is asserted here (timings belong to ``benchmarks/``); what is asserted are facts:
the contenders of a benchmark do the same work (the same parameters or losses after the same
steps, the accuracy :func:`jopt.train.fit` gives for the same recipe), the printed tables hold
the numbers of the JSON, every JAX contender donates its buffers, changing a learning rate
never recompiles, a compiled Iris run is compiled once and reused.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import RTOL, assert_tree_close

import jopt
import jopt.optim
from jopt.train import RunConfig, Session, fit
from jopt.train.cache import CompileCounter

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
# Reading what a script printed
# --------------------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return line.strip().strip("|").split("|")


def _is_separator(line: str) -> bool:
    return line.startswith("|-") and set(line) <= {"|", "-"}


def tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables in ``text`` (``common.table``'s layout; one may follow another
    without a blank line), each a list of rows ``{column: cell}``; every line of a table as
    long as its header, the separator's dashes as wide as the header's cells."""
    lines = [*text.splitlines(), ""]
    found = []
    for i, separator in enumerate(lines):
        if not (i and _is_separator(separator) and lines[i - 1].startswith("|")):
            continue
        header, body = lines[i - 1], []
        for line in lines[i + 1 :]:
            if not line.startswith("|") or _is_separator(line):
                break
            body.append(line)
        if body and _is_separator(lines[i + 1 + len(body)]):
            body.pop()  # the next table's header
        block = [header, separator, *body]
        assert {len(x) for x in block} == {len(header)}, "\n".join(block)
        assert [len(c) for c in _cells(separator)] == [len(c) for c in _cells(header)]
        columns = [c.strip() for c in _cells(header)]
        found.append([dict(zip(columns, (c.strip() for c in _cells(b)))) for b in body])
    return found


def rows(text: str, **match: str) -> list[dict[str, str]]:
    """The table rows in ``text`` whose cells read as ``match`` says (at least one)."""
    found = [r for t in tables(text) for r in t if all(r.get(k) == v for k, v in match.items())]
    assert found, f"no row {match} in:\n{text}"
    return found


def holds(cell: str, value: Any) -> bool:
    """Whether a table cell shows ``value``: ``-`` for none or NaN, a number to the 3
    significant digits ``common.table`` prints, anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell == "-"
    if isinstance(value, float):
        try:
            shown = float(cell.replace(",", ""))
        except ValueError:
            return False
        return bool(np.isclose(shown, value, rtol=5e-3, atol=0.5 if abs(value) >= 1e4 else 0))
    return cell == str(value)


def assert_rows_hold(found: list[dict[str, str]], values: dict[str, Any]) -> None:
    """Every row of ``found`` shows ``values`` in their columns."""
    for cells in found:
        for column, value in values.items():
            assert holds(cells[column], value), (cells, column, value)


# --------------------------------------------------------------------------------------------
# What jopt.train.fit gives for the benchmarks' recipe
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe():
    """``accuracy(lr)``: the test accuracy after one epoch of ``jopt train``'s default recipe
    (its trainer, from ``RunConfig``) trained by :func:`jopt.train.fit` at learning rate
    ``lr``, one compiled program for every rate; and the untrained model's accuracy."""
    data, trainer, params = Session().build(RunConfig(epochs=1))
    graphdef = trainer.graphdef
    done: dict[float, float] = {}

    def accuracy(lr: float) -> float:
        if lr not in done:
            state = trainer.init(params, RunConfig().seed, lr=lr)
            result = fit(
                (graphdef, params), trainer.optimizer, data, epochs=1, trainer=trainer, state=state
            )
            done[lr] = result.final("test_accuracy")
        return done[lr]

    untrained = accuracy(0.0)  # a rate of 0 leaves the parameters where they start
    return accuracy, untrained


# --------------------------------------------------------------------------------------------
# The scripts run, and report what they measured
# --------------------------------------------------------------------------------------------


def _final_params(contender: str, fn: Any, like: dict[str, np.ndarray]) -> dict[str, Any]:
    """A step_throughput contender's parameters, as a tree like ``like``."""
    if contender.startswith("torch"):
        return {k: t.cpu().numpy() for k, t in zip(like, fn.params)}
    if contender == "facade":
        return fn.opt.params
    if contender == "jopt flat":
        return jopt.flat_params(like)[1](fn.params)
    return fn.params


def test_step_throughput_runs_and_writes_json(tmp_path: Path, capsys, monkeypatch) -> None:
    built: dict[tuple[str, str], Any] = {}

    def build(contender: str, name: str, params: Any, grads: Any) -> Any:
        fn = original(contender, name, params, grads)

        class Counted(type(fn)):
            """The contender, counting its steps."""

            steps = 0

            def __call__(self) -> None:
                self.steps += 1
                super().__call__()

        fn.__class__ = Counted
        built[name, contender] = fn
        return fn

    original = step_throughput.build
    monkeypatch.setattr(step_throughput, "build", build)
    payload = step_throughput.main(
        ["--quick", "--cases", "2Kx10", "--optimizers", "adam,sgd_momentum"]
        + ["--out", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "step_throughput.json").read_text())
    assert written["benchmark"] == "step_throughput"
    assert written["results"] == json.loads(json.dumps(payload["results"]))
    assert written["machine"]["load_average_end"] is not None
    expected = {"optax", "jopt", "jopt flat", "jopt+optax.flatten", "facade"}
    if HAS_TORCH:
        expected |= {"torch foreach", "torch fused"}
    assert [(r["optimizer"], r["case"]) for r in payload["results"]] == [
        ("adam", "2Kx10"),
        ("sgd_momentum", "2Kx10"),
    ]
    for record in payload["results"]:
        name = record["optimizer"]
        assert (record["params"], record["leaves"]) == step_throughput.parse_case(record["case"])
        assert set(record["donation"]) == expected - {"torch foreach", "torch fused"}
        assert all(record["donation"].values()), record["donation"]
        assert set(record["timings"]) == expected
        # Every contender it timed did the same work: after as many steps (torch, which has
        # no donation check, takes its missing one now), the same parameters.
        ran = {c: fn for (n, c), fn in built.items() if n == name}
        assert set(ran) == expected
        steps = max(fn.steps for fn in ran.values())
        assert steps >= 3
        start = step_throughput.make_tree(record["params"], record["leaves"], 0)
        final = {}
        for contender, fn in ran.items():
            while fn.steps < steps:
                fn()
            final[contender] = _final_params(contender, fn, start)
        reference = final["torch foreach" if HAS_TORCH else "optax"]
        for contender, tree in final.items():
            assert_tree_close(tree, reference, RTOL["float32"], contender, scale=start)
        assert not np.allclose(reference["p0000"], start["p0000"])
        # The table shows the JSON's medians and their ratios to optax and to the bound.
        optax_s = record["timings"]["optax"]["median_s"]
        for contender, timing in record["timings"].items():
            assert_rows_hold(
                rows(printed, optimizer=name, contender=contender),
                {"median ms": timing["median_s"] * 1e3, "min ms": timing["min_s"] * 1e3,
                 "x optax": timing["median_s"] / optax_s,
                 "x bound": timing["median_s"] / record["bound_s"]},
            )  # fmt: skip


def test_facade_steps_runs_and_compiles_each_path_once(tmp_path: Path, capsys, monkeypatch) -> None:
    built: list[tuple[str, str, Any]] = []

    def build(name: str, case: Any) -> Any:
        contender = original(name, case)
        built.append((case.name, name, contender))
        return contender

    original = facade_steps.build
    monkeypatch.setattr(facade_steps, "build", build)
    payload = facade_steps.main(
        ["--quick", "--leaves", "3", "--models", "iris", "--out", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "facade_steps.json").read_text())
    assert written["benchmark"] == "facade_steps"
    assert written["results"] == json.loads(json.dumps(payload["results"]))
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
        # Same start, same batches: every JAX contender does the same work, and so does torch
        # on the same arrays (the leaves case), on the first step and on the last it timed.
        same = list(programs)
        if HAS_TORCH and record["kind"] == "leaves":
            same += list(facade_steps.TORCH)
        first = [contenders[name]["first_loss"] for name in same]
        np.testing.assert_allclose(first, first[0], rtol=1e-5, err_msg=record["case"])
        ran = {name: fn for case, name, fn in built if case == record["case"]}
        assert {fn.i for fn in ran.values()} == {ran["optax"].i} and ran["optax"].i > 2
        last = [float(ran[name].loss.detach() if hasattr(ran[name].loss, "detach")
                      else ran[name].loss) for name in same]  # fmt: skip
        np.testing.assert_allclose(last, last[0], rtol=1e-5, err_msg=record["case"])
        assert last[0] != first[0]
        assert {"step(loss_fn) / optax", "nnx module compile / optax"} <= set(record["ratios"])
        for name, r in contenders.items():
            assert_rows_hold(
                rows(printed, case=record["case"], contender=name),
                {"ms/step": r["per_step"]["median_s"] * 1e3, "first loss": r["first_loss"]},
            )


@pytest.fixture(scope="module")
def iris_run():
    """``iris.main`` for one epoch, what it printed, and the contenders it built."""
    built: dict[str, Any] = {}

    def keep(cls):
        class Kept(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                built.setdefault(cls.__name__, self)

        return Kept

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        for cls in (iris.ScanFit, iris.FacadeLoop):
            patch.setattr(iris, cls.__name__, keep(cls))
        argv = ["--quick", "--epochs", "1", "--no-process", "--no-compile", "--no-json"]
        payload = iris.main(argv)
    return payload, out.getvalue(), built


def test_iris_runs(iris_run, recipe) -> None:
    payload, printed, _ = iris_run
    accuracy, untrained = recipe
    results = payload["results"]
    assert {"jopt scan-fit", "jopt step loop", "jopt facade loop", "optax loop"} <= set(results)
    got = {name: record["test_accuracy"] for name, record in results.items()}
    # The scan-fit is jopt.train.fit of `jopt train`'s recipe; the loops draw the same batches
    # from the same start and take the same steps; torch's run does not depend on its threads.
    assert got["jopt scan-fit"] == accuracy(iris.LR)
    assert got["jopt step loop"] == got["jopt facade loop"] == got["optax loop"]
    assert min(got["jopt step loop"], got["jopt scan-fit"]) > untrained
    if HAS_TORCH:
        assert got["torch eager"] == got["torch eager, 1 thread"]
    for name, record in results.items():
        assert_rows_hold(
            rows(printed, contender=name),
            {"us/step": record["us_per_step"], "test acc": record["test_accuracy"],
             "compile s": record["compile_s"]},
        )  # fmt: skip


def test_sweep_runs(recipe, capsys) -> None:
    payload = sweep.main(
        ["--ks", "2", "--epochs", "1", "--repeats", "1", "--torch-runs", "1"]
        + ["--no-process", "--no-json"]
    )
    printed = capsys.readouterr().out
    record = payload["sweeps"]["2"]
    assert record["runs"] == 2
    # Its runs are those jopt.train.fit trains one by one at the same rates.
    accuracy, _ = recipe
    lrs = np.geomspace(sweep.LR_MIN, sweep.LR_MAX, 2).astype(np.float32)
    assert record["best_test_accuracy"] == max(accuracy(float(lr)) for lr in lrs)
    assert record["runs_per_s"] == record["runs"] / record["train_s"]["median_s"]
    best_torch = max((r["runs_per_s"] for r in payload["torch"].values()), default=math.nan)
    for rate in payload["torch"].values():
        assert rate["runs"] == 1 and rate["runs_per_s"] == rate["runs"] / rate["seconds"]
    assert_rows_hold(
        rows(printed, contender="jopt sweep, K=2"),
        {"runs/s": record["runs_per_s"], "x best torch": record["runs_per_s"] / best_torch,
         "compile s": record["compile_s"]},
    )  # fmt: skip


def test_xla_cpu_worker_runs() -> None:
    record = xla_cpu.worker("2 leaves", 4096, quick=True)
    assert {"jopt", "optax"} <= set(record["timings"])
    # jopt's compiled step moves the bytes optax's does (a few scalars aside).
    compiled = record["compiled"]
    assert compiled["jopt"]["loop_fusions"] > 0
    assert abs(compiled["jopt"]["bytes_accessed"] - compiled["optax"]["bytes_accessed"]) <= 64


def test_memory_worker_donates() -> None:
    record = memory.worker("jopt", 1 << 14)
    assert record["donated"] is True
    # p, g, m, v in float32 (and the step counts)
    assert 4 * 4 * (1 << 14) <= record["params_grads_state"] < 4 * 4 * (1 << 14) + 64
    assert memory.worker("jopt no-donate", 1 << 10)["donated"] is False


def test_table_and_timing_helpers() -> None:
    samples = [3.0, 1.0, 2.0, 7.5]
    timing = common.Timing(samples)
    assert (timing.median, timing.min) == (float(np.median(samples)), min(samples))
    summary = timing.summary()
    assert (summary["q1_s"], summary["q3_s"]) == tuple(np.percentile(samples, [25, 75]))
    table_rows = [
        {"name": "a", "x": 1.23456, "y": None, "z": 12345.678},
        {"name": "bb", "x": float("nan"), "y": 7, "z": -0.000123456},
    ]
    (parsed,) = tables(common.table(table_rows, ["name", "x", "y", "z"]))
    assert [list(r) for r in parsed] == [["name", "x", "y", "z"]] * 2
    for cells, values in zip(parsed, table_rows, strict=True):
        assert_rows_hold([cells], values)
    assert step_throughput.parse_case("10Mx100") == (10_000_000, 100)
    sizes = step_throughput.leaf_sizes(1003, 10)
    assert sum(sizes) == 1003 and len(sizes) == 10 and max(sizes) - min(sizes) <= 1


# --------------------------------------------------------------------------------------------
# Facts the figures rely on
# --------------------------------------------------------------------------------------------


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


def test_iris_run_compiles_once(iris_run, recipe) -> None:
    """The scan-fit iris.py timed: run again, it compiles nothing and repeats its run."""
    payload, _, built = iris_run
    fit = built["ScanFit"]
    seconds = fit.trainer.compile_seconds
    assert seconds > 0
    with CompileCounter() as counter:
        first, second = fit(), fit()
    assert counter.stats.programs == 0
    assert first == second == payload["results"]["jopt scan-fit"]["test_accuracy"]
    assert fit.trainer.compile_seconds == seconds


def test_facade_loop_compiles_once_per_batch_shape(iris_run) -> None:
    """The facade loop iris.py timed: the full batches and the short last one, one compiled
    step each, and nothing more when it trains again."""
    loop = iris_run[2]["FacadeLoop"]
    traces = loop.opt.compile_count
    loop()
    shapes = {len(rows) for rows in iris.batches(len(loop.data.x_train), 0)}
    assert loop.opt.compile_count == traces == len(shapes) == 2


def test_torch_script_matches_the_jax_split() -> None:
    pytest.importorskip("torch")
    import torch_iris

    from jopt.train import load_iris

    x_train, y_train, x_test, y_test = torch_iris.load_iris()
    data = load_iris()
    np.testing.assert_allclose(x_train, data.x_train, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y_test, data.y_test)
