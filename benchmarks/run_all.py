"""Run every benchmark, each in its own process, then print the README's tables and targets.

    python benchmarks/run_all.py            # everything (about 30-40 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # tiny sizes, a minute or two
    python benchmarks/run_all.py --summary  # only the tables, from benchmarks/results/*.json

Each script writes ``benchmarks/results/<name>.json`` with the machine (CPU, cores, library
versions, XLA flags, torch threads) and the load average at its start and end; the summary
reads those files, so it can be re-printed without re-running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

HERE = Path(__file__).resolve().parent
SCRIPTS = ["step_throughput", "xla_cpu", "facade_steps", "iris", "sweep", "memory",
           "hypergradient_descent"]


def load(name: str, results: Path) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _load_text(payload: dict[str, Any]) -> str:
    m = payload.get("machine", {})
    return f"load average {m.get('load_average_start')} -> {m.get('load_average_end')}"


def summarize(results: Path) -> str:
    """The README section: machine, tables, and each target met or missed (from the JSON)."""
    out: list[str] = []
    targets: list[tuple[str, bool | None, str]] = []

    step = load("step_throughput", results)
    if step:
        m = step["machine"]
        out.append(
            f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib')} GiB; JAX "
            f"{m['jax']} ({m['jax_backend']}), optax {m['optax']}, torch {m.get('torch')} "
            f"({m.get('torch_threads')} threads), Python {m['python']}."
        )
        bw = step["bandwidth_bytes_per_s"]
        out.append(
            "\n### Optimizer step, float32, median ms per step "
            f"({_load_text(step)}; streaming bandwidth {bw['best'] / 1e9:.1f} GB/s)\n"
        )
        rows = []
        for rec in step["results"]:
            t = {k: v["median_s"] for k, v in rec["timings"].items()}
            row: dict[str, Any] = {"optimizer": rec["optimizer"], "params x leaves": rec["case"]}
            for k, v in t.items():
                row[k] = common.ms(v)
            row["bound"] = common.ms(rec["bound_s"])
            # jopt's fastest user-facing path: the functional step on the tree or on the flat
            # buffers, or the facade.
            fastest = min(t.get(k, float("inf")) for k in ("jopt", "jopt flat", "facade"))
            row["best jopt / optax"] = fastest / t["optax"] if "optax" in t else float("nan")
            row["best jopt / torch fused"] = (
                fastest / t["torch fused"] if "torch fused" in t else float("nan")
            )
            rows.append(row)
            if rec["case"] == "1Mx1000":
                ok = row["best jopt / optax"] <= 0.25 and row["best jopt / torch fused"] <= 0.5
                targets.append(
                    (
                        f"{rec['optimizer']} 1Mx1000: fastest jopt path <= 0.25x optax, "
                        "<= 0.5x torch fused",
                        ok,
                        f"{row['best jopt / optax']:.3f}x optax, "
                        f"{row['best jopt / torch fused']:.3f}x torch fused",
                    )
                )
            if rec["case"] == "10Mx1":
                ratio = t["jopt"] / t["optax"]
                targets.append(
                    (
                        f"{rec['optimizer']} 10Mx1: jopt <= 1.05x optax",
                        ratio <= 1.05,
                        f"{ratio:.3f}x optax, {t['jopt'] / t.get('torch fused', float('nan')):.2f}"
                        "x torch fused",
                    )
                )
        columns = list(dict.fromkeys(k for r in rows for k in r))
        out.append(common.table(rows, columns))

    xla = load("xla_cpu", results)
    if xla:
        out.append(f"\n### 10M-parameter Adam step under XLA:CPU options ({_load_text(xla)})\n")
        rows = []
        for name, rec in xla["variants"].items():
            if "error" in rec:
                rows.append({"variant": name, "XLA_FLAGS": rec["xla_flags"], "jopt ms": "failed"})
                continue
            t = {k: v["median_s"] for k, v in rec["timings"].items()}
            bytes_ = rec["compiled"]["jopt"]["bytes_accessed"] or float("nan")
            if rec["layout"] == "sharded":
                bytes_ *= rec["devices"]
            rows.append(
                {
                    "variant": name,
                    "jopt ms": common.ms(t["jopt"]),
                    "optax ms": common.ms(t["optax"]),
                    "torch fused ms": common.ms(t.get("torch fused", float("nan"))),
                    "jopt / torch fused": t["jopt"] / t.get("torch fused", float("nan")),
                    "arrays moved (XLA)": bytes_ / (4 * xla["params"]),
                }
            )
        out.append(common.table(rows, list(rows[0])))

    facade = load("facade_steps", results)
    if facade:
        out.extend(_facade_section(facade, targets))

    iris = load("iris", results)
    if iris:
        out.append(
            f"\n### Iris, {iris['epochs']} epochs x {iris['steps_per_run'] // iris['epochs']} "
            f"steps, batch 16 ({_load_text(iris)})\n"
        )
        res = iris["results"]
        torch_us = res.get("torch eager", {}).get("us_per_step")
        torch1_us = res.get("torch eager, 1 thread", {}).get("us_per_step")
        rows = [
            {
                "contender": name,
                "us/step (median)": r["us_per_step"],
                "torch eager / this": torch_us / r["us_per_step"] if torch_us else None,
                "torch 1-thread / this": torch1_us / r["us_per_step"] if torch1_us else None,
                "compile s": r.get("compile_s"),
                "test acc": r["test_accuracy"],
            }
            for name, r in res.items()
        ]
        out.append(common.table(rows, list(rows[0])))
        if iris.get("compile"):
            out.append("\nCompile seconds, fresh process, no persistent cache:\n")
            crow = [
                {"XLA flags": k, **{n: v for n, v in c.items() if n != "xla_flags"}}
                for k, c in iris["compile"].items()
            ]
            out.append(common.table(crow, list(crow[0])))
            c = iris["compile"]["default flags"]
            targets.append(
                (
                    "Iris train step compiles in <= 1 s (trace + lower + XLA, fresh process)",
                    c["step_total_s"] <= 1.0,
                    f"{c['step_total_s']:.2f} s ({c['step_compile_s']:.2f} s of it XLA)",
                )
            )
        if iris.get("processes"):
            out.append("\nWhole processes, wall seconds:\n")
            prow = [
                {
                    "process": k,
                    "median s": sorted(v["wall_s"])[len(v["wall_s"]) // 2],
                    "programs compiled": (v.get("report") or {}).get("programs_compiled"),
                    "cache hits": (v.get("report") or {}).get("cache_hits"),
                }
                for k, v in iris["processes"].items()
            ]
            out.append(common.table(prow, list(prow[0])))
            warm = iris["processes"].get("jopt train, warm cache", {}).get("report") or {}
            if "programs_compiled" in warm:
                targets.append(
                    (
                        "warm cache: the CLI's second run compiles nothing",
                        warm["programs_compiled"] == 0,
                        f"{warm['programs_compiled']} programs compiled",
                    )
                )
        for name, need in [("jopt scan-fit", 20.0), ("jopt facade loop", 3.0)]:
            if name in res and torch_us:
                ratio = torch_us / res[name]["us_per_step"]
                detail = f"{ratio:.1f}x torch eager"
                if torch1_us:
                    detail += f" ({torch1_us / res[name]['us_per_step']:.1f}x torch 1-thread)"
                targets.append((f"Iris {name} >= {need:g}x faster per step", ratio >= need, detail))

    sw = load("sweep", results)
    if sw:
        out.append(f"\n### Iris sweeps, {sw['epochs']} epochs ({_load_text(sw)})\n")
        rows = []
        for k, rec in sw["sweeps"].items():
            rows.append(
                {
                    "contender": f"jopt sweep K={k}",
                    "runs/s (steady)": rec["runs_per_s"],
                    "runs/s (whole call)": rec["runs_per_s_per_call"],
                    "compile s": rec["compile_s"],
                }
            )
            if k == "256":
                targets.append(
                    (
                        "256-run sweep >= 100 runs/s steady state",
                        rec["runs_per_s"] >= 100,
                        f"{rec['runs_per_s']:.0f} runs/s",
                    )
                )
        for name, rec in sw["torch"].items():
            rows.append({"contender": name, "runs/s (steady)": rec["runs_per_s"]})
        out.append(common.table(rows, list(rows[0])))
        if sw.get("processes"):
            prow = [
                {"process": k, "runs": v["runs"], "wall s": v["wall_s"]}
                for k, v in sw["processes"].items()
            ]
            out.append("\n" + common.table(prow, list(prow[0])))

    mem = load("memory", results)
    if mem:
        out.append(
            f"\n### Peak RSS of the {mem['params'] / 1e6:g}M-parameter Adam step "
            f"({_load_text(mem)})\n"
        )
        rows = []
        for name, r in mem["results"].items():
            pgs = r["params_grads_state"]
            rows.append(
                {
                    "contender": name,
                    "params+grads+state MiB": pgs / 2**20,
                    "peak - baseline MiB": (r["peak"] - r["baseline"]) / 2**20,
                    "x (params+grads+state)": (r["peak"] - r["baseline"]) / pgs,
                    "donated": r["donated"],
                }
            )
            if name == "jopt":
                ratio = (r["peak"] - r["baseline"]) / pgs
                targets.append(
                    ("10M Adam peak RSS <= 1.3x params+grads+state", ratio <= 1.3, f"{ratio:.2f}x")
                )
        out.append(common.table(rows, list(rows[0])))

    hd = load("hypergradient_descent", results)
    if hd:
        import hypergradient_descent

        out.append(
            f"\n### Hypergradient descent on Iris, {hd['epochs']} epochs, "
            f"{len(hd['seeds'])} seeds, final epoch, mean ± std ({_load_text(hd)})\n"
        )
        rows = hypergradient_descent.rows_of(hd["results"])
        out.append(common.table(rows, hypergradient_descent.COLUMNS))

    if targets:
        out.append("\n### Targets\n")
        trow = [
            {"target": t, "met": {True: "yes", False: "NO", None: "-"}[ok], "measured": d}
            for t, ok, d in targets
        ]
        out.append(common.table(trow, ["target", "met", "measured"]))
    return "\n".join(out)


FACADE_PATHS = ["step(loss_fn)", "backward+step", "step(grads)", "nnx module"]


def _facade_section(payload: dict[str, Any], targets: list) -> list[str]:
    """``facade_steps``: ms per step of every contender, the facade paths against optax (per
    step and first-call compile), and the targets: each path within 1.1x optax at every leaf
    count, compiles within 1.5x optax's time, the Iris module loop 3x faster than torch."""
    out = [f"\n### Facade paths, Adam, median ms per step ({_load_text(payload)})\n"]
    records = payload["results"]
    nan = float("nan")
    rows, ratio_rows = [], []
    for rec in records:
        c = rec["contenders"]
        t = {k.removeprefix("facade "): v["per_step"]["median_s"] for k, v in c.items()}
        r = rec["ratios"]
        row: dict[str, Any] = {"case": rec["case"], "params": f"{rec['params'] / 1e3:.4g}K"}
        row |= {k: common.ms(v) for k, v in t.items()}
        row["best facade / torch fused"] = r.get("best facade / torch fused", nan)
        rows.append(row)
        opt_c = c.get("optax", {}).get("compile_s", nan)
        ratio_row: dict[str, Any] = {"case": rec["case"]}
        ratio_row |= {f"{p} / optax": r.get(f"{p} / optax", nan) for p in FACADE_PATHS}
        ratio_row["optax compile s"] = opt_c
        ratio_row |= {
            f"{p} compile / optax": r.get(f"{p} compile / optax", nan) for p in FACADE_PATHS
        }
        ratio_rows.append(ratio_row)
    out.append(common.table(rows, list(dict.fromkeys(k for r in rows for k in r))))
    out.append("\nFacade / optax, per step and first-call compile (trace + compile + one step):\n")
    out.append(common.table(ratio_rows, list(ratio_rows[0])))

    leaf_records = [rec for rec in records if rec["kind"] == "leaves"]
    for p in FACADE_PATHS if leaf_records else []:
        worst = max(leaf_records, key=lambda rec: rec["ratios"].get(f"{p} / optax", nan))
        ratio = worst["ratios"].get(f"{p} / optax", nan)
        targets.append(
            (
                f"facade {p} <= 1.1x optax per step at every leaf count",
                ratio <= 1.1,
                f"worst {ratio:.2f}x ({worst['case']})",
            )
        )
    compiles = [
        (rec["ratios"].get(f"{p} compile / optax", nan), p, rec["case"])
        for rec in records
        for p in FACADE_PATHS
    ]
    compiles = [c for c in compiles if c[0] == c[0]]
    if compiles:
        ratio, p, case = max(compiles)
        targets.append(
            (
                "facade first-call compile <= 1.5x optax's (every path and case)",
                ratio <= 1.5,
                f"worst {ratio:.2f}x ({p}, {case})",
            )
        )
    for rec in records:
        ratio = rec["ratios"].get("best torch / nnx module")
        if rec["case"] == "iris mlp" and ratio is not None:
            targets.append(
                (
                    "Iris nnx-module facade step >= 3x faster than torch eager (foreach, fused)",
                    ratio >= 3.0,
                    f"{ratio:.1f}x the faster torch",
                )
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated scripts")
    parser.add_argument("--summary", action="store_true", help="only print the tables")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if not args.summary:
        for name in args.only.split(","):
            cmd = [str(HERE / f"{name}.py"), "--out", str(args.out)]
            cmd += ["--quick"] if args.quick else []
            print(f"## {name} (load {common.load_average()})", flush=True)
            start = time.perf_counter()
            proc = common.run_python(cmd, timeout=3600)
            print(proc.stdout[-6000:], flush=True)
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{name} failed")
            print(f"## {name}: {time.perf_counter() - start:.0f} s\n", flush=True)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
