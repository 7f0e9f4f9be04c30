"""Learning-rate sweeps on Iris: K runs of the default recipe (Adam, 100 epochs, batch 16).

- ``jopt sweep``: :func:`jopt.train.sweep`, K runs ``vmap``-ed in one compiled program, called
  again on the same trainer; steady-state runs/s = K / the seconds of the compiled training
  program (``SweepResult.train_seconds``); "per call" = K / the wall seconds of the whole
  ``sweep()`` call, which also builds and initialises the K models;
- ``torch, one after another``: ``benchmarks/torch_iris.py``'s training function, run after
  run (default threads, and one thread); its runs/s does not depend on K, so it is measured on
  ``--torch-runs`` runs (default 16) and holds for any K;
- processes: ``jopt sweep --runs K`` (warm compilation cache) against
  ``python benchmarks/torch_iris.py --runs K``, wall seconds.

Run: ``python benchmarks/sweep.py`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch_iris  # noqa: E402

import jopt  # noqa: E402
from jopt import train  # noqa: E402

BATCH, L2, LR_MIN, LR_MAX = 16, 1e-3, 1e-4, 1.0
HERE = Path(__file__).resolve().parent


def jopt_sweep(k: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Compile once, then time ``repeats`` sweeps of K runs on the same trainer."""
    data = train.load_iris()
    lrs = np.geomspace(LR_MIN, LR_MAX, k)
    model = train.MLP(data.num_features, (16,), data.num_classes, rngs=nnx.Rngs(0))
    graphdef = train.split_params(model)[0]
    trainer = train.Trainer(
        graphdef,
        jopt.inject_hyperparams(jopt.adam)(lr=float(lrs[0])),
        num_train=len(data.x_train),
        batch_size=BATCH,
        l2=L2,
    )

    def once() -> train.SweepResult:
        return train.sweep(
            jopt.adam, data, lrs, epochs=epochs, batch_size=BATCH, l2=L2, trainer=trainer
        )

    start = time.perf_counter()
    first = once()
    first_wall = time.perf_counter() - start
    walls, inner = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = once()
        walls.append(time.perf_counter() - start)
        inner.append(result.train_seconds)
    return {
        "runs": k,
        "first_call_s": first_wall,
        "compile_s": first.compile_seconds,
        "wall_s": common.Timing(walls).summary(),
        "train_s": common.Timing(inner).summary(),
        "runs_per_s": k / float(np.median(inner)),
        "runs_per_s_per_call": k / float(np.median(walls)),
        "best_test_accuracy": float(np.max(result.history["test_accuracy"][:, -1])),
    }


def torch_rate(runs: int, epochs: int, threads: int | None) -> dict[str, Any]:
    """Runs per second of torch runs one after another, on ``runs`` log-spaced rates."""
    import torch

    data = tuple(torch.from_numpy(a) for a in torch_iris.load_iris())
    default = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch_iris.train(data, 0.01, min(epochs, 5), BATCH, L2)  # warm-up
        start = time.perf_counter()
        for lr in np.geomspace(LR_MIN, LR_MAX, runs):
            torch_iris.train(data, float(lr), epochs, BATCH, L2)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(default)
    return {"runs": runs, "seconds": seconds, "runs_per_s": runs / seconds}


def processes(ks: list[int], epochs: int, torch_max: int) -> dict[str, Any]:
    """Wall seconds of ``jopt sweep --runs K`` (warm cache) and torch's script with ``--runs K``."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        for k in ks:
            cmd = ["-m", "jopt", "sweep", "--runs", str(k), "--epochs", str(epochs), "--json"]
            for label in ("cold cache", "warm cache"):
                start = time.perf_counter()
                proc = common.run_python(cmd, env={"JOPT_CACHE_DIR": cache}, timeout=900)
                wall = time.perf_counter() - start
                if proc.returncode != 0:
                    raise RuntimeError(f"jopt sweep failed:\n{proc.stderr[-3000:]}")
                report = json.loads(proc.stdout.strip().splitlines()[-1])
                out[f"jopt sweep K={k}, {label}"] = {
                    "runs": k,
                    "wall_s": wall,
                    "runs_per_s_in_process": report.get("runs_per_second"),
                    "programs_compiled": report.get("programs_compiled"),
                }
    for k in ks:
        if k > torch_max:
            continue
        script = [str(HERE / "torch_iris.py"), "--runs", str(k), "--epochs", str(epochs)]
        script += ["--lr-min", str(LR_MIN), "--lr-max", str(LR_MAX)]
        start = time.perf_counter()
        proc = common.run_python(script, timeout=3600)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"torch_iris.py failed:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        out[f"torch script K={k}"] = {
            "runs": k,
            "wall_s": wall,
            "runs_per_s_in_process": report["runs_per_second"],
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--ks", default=None, help="comma-separated K (default 16,256)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--torch-runs", type=int, default=None)
    parser.add_argument(
        "--torch-process-max",
        type=int,
        default=16,
        help="run torch's script as a process only for K up to this (256 runs take minutes)",
    )
    parser.add_argument("--no-process", action="store_true", help="skip the process timings")
    args = parser.parse_args(argv)
    ks = [int(k) for k in (args.ks or ("4,8" if args.quick else "16,256")).split(",")]
    epochs = args.epochs or (3 if args.quick else 100)
    repeats = args.repeats or (1 if args.quick else 5)
    torch_runs = args.torch_runs or (2 if args.quick else 16)
    info = common.machine()
    print(f"# Iris sweeps, {epochs} epochs, on {info['cpu']} ({info['cores']} cores)")
    print(f"# load {info['load_average_start']}, torch threads {info.get('torch_threads')}")

    sweeps = {k: jopt_sweep(k, epochs, repeats) for k in ks}
    torch_runs_rate: dict[str, Any] = {}
    try:
        torch_runs_rate["torch, one after another"] = torch_rate(torch_runs, epochs, None)
        torch_runs_rate["torch, one after another, 1 thread"] = torch_rate(torch_runs, epochs, 1)
    except ImportError:
        pass
    best_torch = max((v["runs_per_s"] for v in torch_runs_rate.values()), default=float("nan"))
    rows = []
    for k, rec in sweeps.items():
        rows.append(
            {
                "contender": f"jopt sweep, K={k}",
                "runs/s": rec["runs_per_s"],
                "x best torch": rec["runs_per_s"] / best_torch,
                "runs/s per call": rec["runs_per_s_per_call"],
                "compile s": rec["compile_s"],
                "first call s": rec["first_call_s"],
            }
        )
    for name, rec in torch_runs_rate.items():
        rows.append(
            {
                "contender": f"{name} ({rec['runs']} runs)",
                "runs/s": rec["runs_per_s"],
                "x best torch": rec["runs_per_s"] / best_torch,
            }
        )
    columns = [
        "contender",
        "runs/s",
        "x best torch",
        "runs/s per call",
        "compile s",
        "first call s",
    ]
    print(common.table(rows, columns))
    procs = {} if args.no_process else processes(ks, epochs, args.torch_process_max)
    if procs:
        prow = [
            {"process": name, "runs": v["runs"], "wall s": v["wall_s"], **v}
            for name, v in procs.items()
        ]
        print()
        print(common.table(prow, ["process", "runs", "wall s", "programs_compiled"]))
    payload = {
        "machine": info,
        "epochs": epochs,
        "sweeps": {str(k): v for k, v in sweeps.items()},
        "torch": torch_runs_rate,
        "processes": procs,
    }
    if not args.no_json:
        print("wrote", common.write_json("sweep", payload, args.out))
    return payload


if __name__ == "__main__":
    jax.config.update("jax_enable_compilation_cache", False)  # compile times without it
    main()
