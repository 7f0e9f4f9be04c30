"""Peak resident memory of a 10M-parameter Adam step against the bytes of params + grads + state.

Each contender runs in a fresh process. There, after the imports (and, for JAX, after the step
is compiled ahead of time from shapes alone, so that compiler memory is not counted), the
resident set is the baseline; the inputs are allocated (params, grads, and for JAX the
optimizer state); the peak-RSS mark is reset to the current RSS (``/proc/self/clear_refs``, so
temporaries of making the inputs do not count); a number of steps run; the peak is read from
``VmHWM``. The ratio ``(peak - baseline) / (params + grads + state)`` is
1.0 for a step that updates in place, and about 1.75 for one that keeps a second copy of the
params and state (no donation).

Contenders: ``jopt`` (jitted, donated), ``jopt no-donate``, ``optax`` (donated), the
``facade`` (``jopt.optim.Adam(params).step(grads)``) and ``torch fused`` (in place).

Run: ``python benchmarks/memory.py`` (``--quick`` for a tiny smoke run). Host memory is read
from ``/proc/self/status`` (Linux; elsewhere ``getrusage``'s peak, without the reset); on a GPU
or TPU the device's own ``peak_bytes_in_use`` is recorded as well.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CONTENDERS = ["jopt", "jopt no-donate", "optax", "facade", "torch fused"]
STEPS = 10


def _status(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss() -> int:
    """Resident set size now, in bytes."""
    value = _status("VmRSS")
    if value is None:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return value


def peak() -> int:
    """Peak resident set size since the last reset, in bytes."""
    value = _status("VmHWM")
    if value is None:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return value


def reset_peak() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(contender: str, n: int) -> dict[str, Any]:
    """Measure one contender in this process."""
    if contender.startswith("torch"):
        return torch_worker(n)
    import jax
    import jax.numpy as jnp
    import optax

    import jopt
    import jopt.optim

    opt = optax.adam(1e-3) if contender == "optax" else jopt.adam(lr=1e-3)

    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    donate = () if contender == "jopt no-donate" else (0, 1)
    fn = jax.jit(step, donate_argnums=donate)
    make = jax.jit(lambda key, scale: scale * jax.random.normal(key, (n,), jnp.float32))
    spec = jax.ShapeDtypeStruct((n,), jnp.float32)
    # Compile everything first, from shapes: the compiler's memory is not the step's.
    compiled = fn.lower(spec, jax.eval_shape(opt.init, spec), spec).compile()
    make.lower(jax.random.key(0), 1.0).compile()
    jax.jit(opt.init).lower(spec).compile()
    if contender == "facade":  # compile the facade's step on a tiny tree of the same kind
        jopt.optim.Adam({"w": jnp.zeros(8)}, lr=1e-3).step({"w": jnp.ones(8)})
    baseline = rss()

    params = make(jax.random.key(0), 1.0)
    grads = make(jax.random.key(1), 1e-2)
    if contender == "facade":
        opt_f = jopt.optim.Adam({"w": params}, lr=1e-3)
        del params
        jax.block_until_ready(([g.flat for g in opt_f._groups], grads))
        after_inputs = rss()
        reset = reset_peak()
        for _ in range(STEPS):
            opt_f.step({"w": grads})
        jax.block_until_ready([g.flat for g in opt_f._groups])
        state_bytes = sum(x.nbytes for x in jax.tree.leaves([g.state for g in opt_f._groups]))
        donated = None
    else:
        state = jax.jit(opt.init)(params)
        jax.block_until_ready((params, grads, state))
        state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
        after_inputs = rss()
        reset = reset_peak()
        for _ in range(STEPS):
            old = params
            params, state = compiled(params, state, grads)
        jax.block_until_ready(params)
        donated = old.is_deleted()
    high = peak()
    device_stats = jax.devices()[0].memory_stats() or {}  # accelerators: their own memory
    return {
        "device_peak_bytes": device_stats.get("peak_bytes_in_use"),
        "baseline": baseline,
        "after_inputs": after_inputs,
        "peak": high,
        "peak_reset": reset,
        "params_grads_state": 2 * 4 * n + state_bytes,
        "donated": donated,
        "compiled_temp_bytes": _temp_bytes(compiled),
    }


def _temp_bytes(compiled: Any) -> int | None:
    """XLA's own figure for the scratch memory of a compiled step."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def torch_worker(n: int) -> dict[str, Any]:
    import torch

    torch.optim.Adam([torch.zeros(8, requires_grad=True)], lr=1e-3, fused=True)
    baseline = rss()
    p = torch.randn(n)
    p.grad = torch.randn(n).mul_(1e-2)
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    after_inputs = rss()  # torch allocates its state in the first step
    reset = reset_peak()
    for _ in range(STEPS):
        opt.step()
    state_bytes = sum(
        v.nbytes for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    return {
        "baseline": baseline,
        "after_inputs": after_inputs,
        "peak": peak(),
        "peak_reset": reset,
        "params_grads_state": 2 * 4 * n + state_bytes,
        "donated": None,
        "compiled_temp_bytes": None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help="internal: measure one contender here")
    parser.add_argument("--params", type=int, default=None)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    args = parser.parse_args(argv)
    n = args.params or (1 << 20 if args.quick else 10_000_000)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, n)))
        return {}

    info = common.machine()
    print(f"# peak RSS of an Adam step on {n:,} float32 parameters; load {common.load_average()}")
    records, rows = {}, []
    for contender in args.contenders.split(","):
        proc = common.run_python([__file__, "--worker", contender, "--params", str(n)], timeout=600)
        if proc.returncode != 0:
            if "No module named 'torch'" in proc.stderr:
                continue
            raise RuntimeError(f"{contender} failed:\n{proc.stderr[-3000:]}")
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        records[contender] = rec
        mib = 2**20
        pgs = rec["params_grads_state"]
        rows.append(
            {
                "contender": contender,
                "params+grads+state MiB": pgs / mib,
                "baseline MiB": rec["baseline"] / mib,
                "peak - baseline MiB": (rec["peak"] - rec["baseline"]) / mib,
                "x (params+grads+state)": (rec["peak"] - rec["baseline"]) / pgs,
                "peak - after inputs MiB": (rec["peak"] - rec["after_inputs"]) / mib,
                "donated": rec["donated"],
            }
        )
    print(common.table(rows, list(rows[0]) if rows else []))
    payload = {"machine": info, "params": n, "steps": STEPS, "results": records}
    if not args.no_json:
        print("wrote", common.write_json("memory", payload, args.out))
    return payload


if __name__ == "__main__":
    main()
