"""Iris end to end: the default ``jopt train`` recipe (4-16-3 MLP, Adam lr 0.01, 100 epochs of
batches of 16, l2 1e-3, test accuracy after every epoch), trained five ways in one process:

- ``jopt scan-fit``: :func:`jopt.train.fit`, the whole run one compiled ``lax.scan``;
- ``jopt step loop``: a Python loop over batches calling :func:`jopt.train.make_train_step`
  (forward, backward and ``jopt.adam`` in one jitted, donated call);
- ``jopt facade loop``: the same loop with ``jopt.optim.Adam(params).step(loss_fn, x, y)``;
- ``optax loop``: the step loop with ``optax.adam``;
- ``torch eager``: ``torch.optim.Adam`` and ``nn.Linear`` (``benchmarks/torch_iris.py``).

The loops draw batches from a NumPy permutation per epoch. Reported: steady-state microseconds
per optimizer step (a whole run's seconds / its 800 steps, median over repeats, after a warm-up
run), compile seconds (persistent cache off), and the whole ``jopt train`` process against
``python benchmarks/torch_iris.py``, with a cold and a warm compilation cache.

Run: ``python benchmarks/iris.py`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch_iris  # noqa: E402

import jopt  # noqa: E402
import jopt.optim  # noqa: E402
from jopt import train  # noqa: E402
from jopt.train.model import apply, loss_and_metrics  # noqa: E402

LR, BATCH, L2 = 0.01, 16, 1e-3
HERE = Path(__file__).resolve().parent


def model_and_data(seed: int = 0) -> tuple[Any, Any, train.Dataset]:
    data = train.load_iris()
    model = train.MLP(data.num_features, (16,), data.num_classes, rngs=nnx.Rngs(seed))
    graphdef, params = train.split_params(model)
    return graphdef, params, data


def batches(n: int, epoch: int, seed: int = 0) -> list[np.ndarray]:
    """The row indices of each batch of an epoch (NumPy permutation, last batch short)."""
    order = np.random.default_rng((seed, epoch)).permutation(n)
    return [order[i : i + BATCH] for i in range(0, n, BATCH)]


class ScanFit:
    """``jopt.train.fit`` with its trainer kept, so repeated runs reuse the compiled program."""

    def __init__(self, epochs: int) -> None:
        self.graphdef, self.params, self.data = model_and_data()
        self.epochs = epochs
        self.trainer = train.Trainer(
            self.graphdef, jopt.adam(lr=LR), num_train=len(self.data.x_train), batch_size=BATCH,
            l2=L2,
        )
        start = time.perf_counter()
        result = self.run()
        self.first_call_s = time.perf_counter() - start
        self.compile_s = result.compile_seconds

    def run(self) -> train.FitResult:
        params = jax.tree.map(jnp.copy, self.params)
        return train.fit(
            (self.graphdef, params),
            jopt.adam(lr=LR),
            self.data,
            epochs=self.epochs,
            batch_size=BATCH,
            l2=L2,
            trainer=self.trainer,
        )

    def __call__(self) -> float:
        return self.run().final("test_accuracy")


def _loss(graphdef: Any) -> Callable[..., jax.Array]:
    def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return loss_and_metrics(graphdef, params, x, y, None, L2)[0]

    return loss_fn


def _evaluate(graphdef: Any) -> Callable[..., jax.Array]:
    @jax.jit
    def evaluate(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean(jnp.argmax(apply(graphdef, params, x), -1) == y)

    return evaluate


class StepLoop:
    """A Python loop over batches around a jitted, donated train step (jopt or optax)."""

    def __init__(self, epochs: int, opt: optax.GradientTransformation) -> None:
        self.graphdef, self.params, self.data = model_and_data()
        self.epochs, self.opt = epochs, opt
        self.step = train.make_train_step(self.graphdef, opt, L2)
        self.evaluate = _evaluate(self.graphdef)
        x, y = self.data.x_train[:BATCH], self.data.y_train[:BATCH]
        state = opt.init(self.params)
        start = time.perf_counter()
        self.step.lower(self.params, state, x, y).compile()
        self.compile_s = time.perf_counter() - start

    def __call__(self) -> float:
        d = self.data
        params = jax.tree.map(jnp.copy, self.params)
        state = self.opt.init(params)
        accuracy = []
        for epoch in range(self.epochs):
            for rows in batches(len(d.x_train), epoch):
                params, state, _ = self.step(params, state, d.x_train[rows], d.y_train[rows])
            accuracy.append(self.evaluate(params, d.x_test, d.y_test))
        return float(accuracy[-1])


class FacadeLoop:
    """The torch-style loop: ``opt = jopt.optim.Adam(params); opt.step(loss_fn, x, y)``.

    One optimizer serves every timed run (each run trains it further), as one ``torch.optim``
    object serves a whole training script: its compiled steps are built once.
    """

    def __init__(self, epochs: int) -> None:
        self.graphdef, self.params, self.data = model_and_data()
        self.epochs = epochs
        self.loss_fn = _loss(self.graphdef)
        self.evaluate = _evaluate(self.graphdef)
        self.fresh()
        x, y = self.data.x_train[:BATCH], self.data.y_train[:BATCH]
        start = time.perf_counter()
        jax.block_until_ready(self.opt.step(self.loss_fn, x, y))
        first = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(self.opt.step(self.loss_fn, x, y))
        self.compile_s = first - (time.perf_counter() - start)  # first call minus a steady one
        self.fresh()

    def fresh(self) -> None:
        """A new optimizer on the initial parameters (its first steps compile)."""
        self.opt = jopt.optim.Adam(jax.tree.map(jnp.copy, self.params), lr=LR)

    def __call__(self) -> float:
        d, opt = self.data, self.opt
        accuracy = []
        for epoch in range(self.epochs):
            for rows in batches(len(d.x_train), epoch):
                opt.step(self.loss_fn, d.x_train[rows], d.y_train[rows])
            accuracy.append(self.evaluate(opt.params, d.x_test, d.y_test))
        return float(accuracy[-1])


class TorchLoop:
    """``benchmarks/torch_iris.py``'s training function, in this process.

    ``threads=None`` keeps torch's default thread count; ``1`` runs single-threaded (on a busy
    machine torch's OpenMP threads spin against other processes, and small models gain nothing
    from a second thread).
    """

    def __init__(self, epochs: int, threads: int | None = None) -> None:
        import torch

        self.torch = torch
        self.data = tuple(torch.from_numpy(a) for a in torch_iris.load_iris())
        self.epochs, self.threads = epochs, threads

    def __call__(self) -> float:
        default = self.torch.get_num_threads()
        if self.threads is not None:
            self.torch.set_num_threads(self.threads)
        try:
            return torch_iris.train(self.data, LR, self.epochs, BATCH, L2)["test_accuracy"]
        finally:
            self.torch.set_num_threads(default)


def compile_worker(epochs: int) -> dict[str, float]:
    """In a fresh process: seconds to trace + compile the Iris train step and the whole run."""
    graphdef, params, data = model_and_data()
    opt = jopt.adam(lr=LR)
    x, y = data.x_train[:BATCH], data.y_train[:BATCH]
    start = time.perf_counter()
    lowered = train.make_train_step(graphdef, opt, L2).lower(params, opt.init(params), x, y)
    traced = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    step_compile = time.perf_counter() - start
    trainer = train.Trainer(graphdef, opt, num_train=len(data.x_train), batch_size=BATCH, l2=L2)
    trainer.compile(trainer.init(params), data, epochs)
    return {
        "step_trace_lower_s": traced,
        "step_compile_s": step_compile,
        "step_total_s": traced + step_compile,
        "scan_fit_program_s": trainer.compile_seconds,
    }


def compile_times(epochs: int) -> dict[str, Any]:
    """``compile_worker`` in fresh processes: XLA's default flags, and the legacy CPU emitters."""
    out = {}
    variants = [("default flags", ""), ("legacy emitters", "--xla_cpu_use_fusion_emitters=false")]
    for label, flags in variants:
        cmd = [__file__, "--compile-worker", "--epochs", str(epochs)]
        proc = common.run_python(cmd, env={"XLA_FLAGS": flags, "JOPT_CACHE_DIR": ""}, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"compile worker failed:\n{proc.stderr[-3000:]}")
        out[label] = {"xla_flags": flags, **json.loads(proc.stdout.strip().splitlines()[-1])}
    return out


def process_times(epochs: int, repeats: int) -> dict[str, Any]:
    """Wall seconds of whole processes: ``jopt train`` (cold and warm cache) and torch's script."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {"JOPT_CACHE_DIR": cache}
        cmd = ["-m", "jopt", "train", "--epochs", str(epochs), "--json"]
        for label in ["cold cache", *["warm cache"] * repeats]:
            start = time.perf_counter()
            proc = common.run_python(cmd, env=env, timeout=600)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"jopt train failed:\n{proc.stderr[-3000:]}")
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            entry = out.setdefault(f"jopt train, {label}", {"wall_s": [], "report": None})
            entry["wall_s"].append(wall)
            entry["report"] = {
                k: report.get(k)
                for k in ("programs_compiled", "cache_hits", "compile_seconds", "train_seconds")
            }
            entry["report"]["test_accuracy"] = report.get("final", {}).get("test_accuracy")
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = common.run_python(
            [str(HERE / "torch_iris.py"), "--epochs", str(epochs)], timeout=600
        )
        walls.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"torch_iris.py failed:\n{proc.stderr[-3000:]}")
    out["torch script"] = {"wall_s": walls, "report": json.loads(proc.stdout.splitlines()[-1])}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-process", action="store_true", help="skip the CLI process timing")
    parser.add_argument("--no-compile", action="store_true", help="skip the fresh-process compiles")
    parser.add_argument("--compile-worker", action="store_true", help="internal")
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 7)
    if args.compile_worker:
        print(json.dumps(compile_worker(epochs)))
        return {}
    info = common.machine()
    print(f"# Iris, {epochs} epochs, batch {BATCH}, on {info['cpu']} ({info['cores']} cores)")
    print(f"# load {info['load_average_start']}, torch threads {info.get('torch_threads')}")

    contenders: dict[str, Callable[[], float]] = {
        "jopt scan-fit": ScanFit(epochs),
        "jopt step loop": StepLoop(epochs, jopt.adam(lr=LR)),
        "jopt facade loop": FacadeLoop(epochs),
        "optax loop": StepLoop(epochs, optax.adam(LR)),
    }
    with contextlib.suppress(ImportError):
        contenders["torch eager"] = TorchLoop(epochs)
        contenders["torch eager, 1 thread"] = TorchLoop(epochs, threads=1)
    steps = epochs * -(-len(train.load_iris().x_train) // BATCH)
    accuracy = {name: fn() for name, fn in contenders.items()}  # warm-up run, and a check
    timings = common.interleaved(contenders, warmup=0, rounds=repeats, per_round=1)
    torch_us = None
    if "torch eager" in timings:
        torch_us = common.us(timings["torch eager"].median) / steps
    rows, records = [], {}
    for name, timing in timings.items():
        per_step = common.us(timing.median) / steps
        compile_s = getattr(contenders[name], "compile_s", None)
        records[name] = {
            "run": timing.summary(),
            "us_per_step": per_step,
            "us_per_step_min": common.us(timing.min) / steps,
            "compile_s": compile_s,
            "test_accuracy": accuracy[name],
        }
        rows.append(
            {
                "contender": name,
                "us/step": per_step,
                "min us/step": common.us(timing.min) / steps,
                "torch eager / this": torch_us / per_step if torch_us else float("nan"),
                "compile s": compile_s,
                "test acc": accuracy[name],
            }
        )
    print(common.table(rows, list(rows[0])))
    scan = contenders["jopt scan-fit"]
    records["jopt scan-fit"]["first_call_s"] = scan.first_call_s
    print(
        f"\nscan-fit: the whole {epochs}-epoch program compiles in {scan.compile_s:.2f} s; "
        f"the single train step (jopt step loop) in {contenders['jopt step loop'].compile_s:.2f} s"
    )

    compiles = {} if args.no_compile else compile_times(epochs)
    if compiles:
        crow = [
            {"XLA flags": k, **{n: v for n, v in c.items() if n != "xla_flags"}}
            for k, c in compiles.items()
        ]
        print("\ncompile seconds in a fresh process (no persistent cache):")
        print(common.table(crow, list(crow[0])))

    processes = {} if args.no_process else process_times(epochs, 1 if args.quick else 3)
    if processes:
        prow = [
            {
                "process": name,
                "median wall s": float(np.median(v["wall_s"])),
                "min wall s": float(np.min(v["wall_s"])),
                "programs compiled": (v["report"] or {}).get("programs_compiled"),
                "cache hits": (v["report"] or {}).get("cache_hits"),
            }
            for name, v in processes.items()
        ]
        print()
        print(common.table(prow, list(prow[0])))
    payload = {
        "machine": info,
        "epochs": epochs,
        "steps_per_run": steps,
        "results": records,
        "compile": compiles,
        "processes": processes,
    }
    if not args.no_json:
        print("wrote", common.write_json("iris", payload, args.out))
    return payload


if __name__ == "__main__":
    jax.config.update("jax_enable_compilation_cache", False)  # compile times without it
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
