"""The 10M-parameter single-leaf Adam step under XLA options and data layouts, vs torch fused.

Each variant runs in a fresh process (``XLA_FLAGS`` is read once, when the backend starts),
where the jopt step, the optax step and torch's fused Adam are timed interleaved, so every
variant carries its own optax and torch figures. Variants:

- ``default``: one 10M leaf, no flags;
- ``2 halves``: two 5M leaves (two independent loops XLA may run side by side);
- ``2 devices sharded``: ``--xla_force_host_platform_device_count=2``, the buffer sharded over
  the two host devices (one per core);
- one XLA:CPU option each: the concurrency-optimized scheduler, 512-bit vectors, the legacy
  (non-MLIR) fusion emitters, Eigen's thread pool off, fast math (which changes rounding, so it
  is not an option for jopt's torch parity; shown for scale);
- ``no donation``: the same step without ``donate_argnums``, so every step writes fresh
  buffers; and the same with glibc told to keep freed pages (``GLIBC_TUNABLES``): the first
  touch of fresh pages, not the arithmetic, is what a missing donation costs on CPU.

It also reports XLA's own count of the bytes the compiled step touches (``cost_analysis``):
without multi-output loop fusion on CPU, the step is three loops (m, v, then p reading the new
m and v: 10 arrays of traffic) where torch's fused kernel is one (7 arrays).

Run: ``python benchmarks/xla_cpu.py`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GLIBC_KEEP = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
VARIANTS: dict[str, tuple[dict[str, str], str]] = {  # name -> (environment, layout)
    "default": ({}, "1 leaf"),
    "2 halves": ({}, "2 leaves"),
    "2 devices sharded": ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, "sharded"),
    "concurrency scheduler": (
        {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"},
        "1 leaf",
    ),
    "512-bit vectors": ({"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"}, "1 leaf"),
    "legacy emitters": ({"XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"}, "1 leaf"),
    "no eigen pool": ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}, "1 leaf"),
    "fast math (not torch-exact)": ({"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}, "1 leaf"),
    "no donation": ({}, "no donation"),
    "no donation + glibc keeps pages": ({"GLIBC_TUNABLES": GLIBC_KEEP}, "no donation"),
}


def worker(layout: str, n: int, quick: bool) -> dict[str, Any]:
    """Time jopt / optax / torch fused Adam on ``n`` parameters laid out as ``layout``."""
    import jax
    import numpy as np
    import optax

    import jopt

    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n, dtype=np.float32)
    g0 = rng.standard_normal(n, dtype=np.float32) * 1e-2

    def place(x: np.ndarray) -> Any:
        if layout == "2 leaves":
            return {"a": jax.device_put(x[: n // 2]), "b": jax.device_put(x[n // 2 :])}
        if layout == "sharded":
            mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
            sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
            return jax.device_put(x, sharding)
        return jax.device_put(x)

    def contender(opt: optax.GradientTransformation) -> tuple[Any, dict[str, Any]]:
        def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        fn = jax.jit(step, donate_argnums=() if layout == "no donation" else (0, 1))
        holder = {"p": place(p0), "g": place(g0)}
        holder["s"] = jax.jit(opt.init)(holder["p"])
        compiled = fn.lower(holder["p"], holder["s"], holder["g"]).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        text = compiled.as_text()
        info = {
            "bytes_accessed": float(cost.get("bytes accessed", float("nan"))) if cost else None,
            "loop_fusions": text.count("kind=kLoop"),
        }

        def call() -> None:
            holder["p"], holder["s"] = fn(holder["p"], holder["s"], holder["g"])
            jax.block_until_ready(holder["p"])

        return call, info

    fns, info = {}, {}
    fns["jopt"], info["jopt"] = contender(jopt.adam(lr=1e-3))
    fns["optax"], info["optax"] = contender(optax.adam(1e-3))
    try:
        import torch
    except ImportError:
        pass
    else:
        device = common.torch_device()
        tp = torch.tensor(p0, device=device)
        tp.grad = torch.tensor(g0, device=device)
        topt = torch.optim.Adam([tp], lr=1e-3, fused=True)

        def torch_call() -> None:
            topt.step()
            common.torch_sync()

        fns["torch fused"] = torch_call
    timings = common.interleaved(
        fns, warmup=2, rounds=3 if quick else 12, per_round=2 if quick else 5
    )
    return {
        "timings": {k: t.summary() for k, t in timings.items()},
        "compiled": info,
        "devices": len(jax.devices()),
        "backend": jax.default_backend(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help=argparse_hidden())
    parser.add_argument("--params", type=int, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    n = args.params or (1 << 16 if args.quick else 10_000_000)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, n, args.quick)))
        return {}

    info = common.machine()
    print(f"# Adam, {n:,} float32 parameters, on {info['cpu']} ({info['cores']} cores)")
    print(f"# load {info['load_average_start']}; each variant in a fresh process")
    records, rows = {}, []
    for name in args.variants.split(","):
        env, layout = VARIANTS[name]
        flags = env.get("XLA_FLAGS", "")
        cmd = [
            __file__,
            "--worker",
            layout,
            "--params",
            str(n),
            *(["--quick"] if args.quick else []),
        ]
        proc = common.run_python(cmd, env={"XLA_FLAGS": flags, **env}, timeout=900)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            records[name] = {"env": env, "xla_flags": flags, "layout": layout}
            records[name]["error"] = proc.stderr[-2000:]
            continue
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        rec.update(env=env, xla_flags=flags, layout=layout, load_average=common.load_average())
        records[name] = rec
        t = {k: v["median_s"] for k, v in rec["timings"].items()}
        jopt_bytes = rec["compiled"]["jopt"]["bytes_accessed"]  # per device when sharded
        jopt_bytes = (
            jopt_bytes * rec["devices"] if jopt_bytes and layout == "sharded" else jopt_bytes
        )
        rows.append(
            {
                "variant": name,
                "jopt ms": common.ms(t["jopt"]),
                "optax ms": common.ms(t["optax"]),
                "torch fused ms": common.ms(t.get("torch fused", float("nan"))),
                "jopt / optax": t["jopt"] / t["optax"],
                "jopt / torch fused": t["jopt"] / t.get("torch fused", float("nan")),
                "jopt min / fused min": rec["timings"]["jopt"]["min_s"]
                / rec["timings"].get("torch fused", {}).get("min_s", float("nan")),
                "XLA arrays moved": jopt_bytes / (4 * n) if jopt_bytes else float("nan"),
            }
        )
        print(common.table(rows[-1:], list(rows[-1])), flush=True)
    print()
    print(common.table(rows, list(rows[0]) if rows else []))
    payload = {"machine": info, "params": n, "variants": records}
    if not args.no_json:
        print("wrote", common.write_json("xla_cpu", payload, args.out))
    return payload


def argparse_hidden() -> str:
    """Help text of the internal ``--worker`` option."""
    return "internal: run one variant in this process with the given layout"


if __name__ == "__main__":
    main()
