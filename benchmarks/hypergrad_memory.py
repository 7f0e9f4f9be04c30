"""Memory of an unrolled hypergradient: d(test loss after T steps of Adam on Iris) / d(lr, betas).

The Iris MLP (4-16-3, torch's initialisation) trains full batch on the 120 training rows for
``T`` steps (default 1,000) of ``jopt.adam`` inside :func:`jopt.unroll`; the meta-loss is the
cross-entropy on the 30 test rows, differentiated with respect to ``lr`` and ``betas`` by
``jax.grad``. One compiled program per rematerialisation:

- ``none``: a plain scan, every step's residuals kept (memory linear in T);
- ``step``: ``jax.checkpoint`` per step (one carry per step kept, each step recomputed once);
- ``sqrt``: blocks of ``ceil(sqrt(T))`` steps, a checkpoint per block (``sqrt(T)`` carries
  and one block's residuals kept; one more forward pass);
- ``truncate=K``: gradient through the last ``K`` steps only (``--truncate``, default 32).

What is measured is XLA's own accounting of each compiled program: ``temp`` (scratch the
program allocates: residuals live here), ``argument`` and ``output`` bytes, from
``jax.jit(f).lower(...).compile().memory_analysis()``; where the device reports it
(GPU, TPU), also the device's peak bytes in use while the program runs. Plus the compile
seconds and the median seconds of a call, and the hypergradient itself (every variant but the
truncated one must give the same numbers).

Run: ``python benchmarks/hypergrad_memory.py`` (``--steps``, ``--quick`` for a tiny smoke run);
unchanged on CPU, GPU and TPU.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import jopt  # noqa: E402
from jopt.train import MLP, load_iris  # noqa: E402
from jopt.train.model import apply, cross_entropy, split_params  # noqa: E402


def problem() -> tuple[Any, Any, Any]:
    """(params, train loss, test loss) of the Iris recipe's MLP."""
    data = load_iris()
    x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in data.arrays())
    graphdef, params = split_params(MLP(4, (16,), 3, rngs=nnx.Rngs(0)))

    def train_loss(p: Any) -> jax.Array:
        return cross_entropy(apply(graphdef, p, x_train), y_train)

    def test_loss(p: Any) -> jax.Array:
        return cross_entropy(apply(graphdef, p, x_test), y_test)

    return params, train_loss, test_loss


def variants(truncate: int) -> dict[str, dict[str, Any]]:
    return {
        "none": {"remat": None},
        "step": {"remat": "step"},
        "sqrt": {"remat": "sqrt"},
        f"truncate={truncate}": {"remat": "sqrt", "truncate": truncate},
    }


def device_peak() -> int | None:
    """The device's peak bytes in use so far (None where the backend does not say: CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(steps: int, options: dict[str, Any], repeats: int) -> dict[str, Any]:
    params, train_loss, test_loss = problem()
    hyper = {"lr": jnp.asarray(1e-2), "betas": (jnp.asarray(0.9), jnp.asarray(0.999))}

    def meta(h: dict[str, Any]) -> jax.Array:
        run = jopt.unroll(jopt.adam(**h), train_loss, params, steps, **options)
        return test_loss(run.params)

    fn = jax.jit(jax.value_and_grad(meta))
    start = time.perf_counter()
    compiled = fn.lower(hyper).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    value, grads = common.block(compiled(hyper))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        common.block(compiled(hyper))
        times.append(time.perf_counter() - start)
    return {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "device_peak_bytes": device_peak(),
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "test_loss": float(value),
        "d_lr": float(grads["lr"]),
        "d_beta1": float(grads["betas"][0]),
        "d_beta2": float(grads["betas"][1]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="T (default 1000)")
    parser.add_argument("--truncate", type=int, default=None, help="K (default 32)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    steps = args.steps or (16 if args.quick else 1000)
    truncate = args.truncate or (4 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 3)
    info = common.machine()
    print(f"# Unrolled Iris hypergradient, Adam, {steps} steps, on {jax.default_backend()} "
          f"({info['cpu']}, {info['cores']} cores); load {info['load_average_start']}")
    results = {}
    for name, options in variants(truncate).items():
        # Each in turn, so that the device's peak (where it has one) belongs to that program.
        results[name] = measure(steps, options, repeats)
    base = results["none"]["temp_bytes"]
    rows = [
        {
            "remat": name,
            "temp MiB": rec["temp_bytes"] / 2**20,
            "x none": rec["temp_bytes"] / base if base else float("nan"),
            "device peak MiB": (
                rec["device_peak_bytes"] / 2**20 if rec["device_peak_bytes"] else None
            ),
            "compile s": rec["compile_s"],
            "ms per call": common.ms(rec["median_s"]),
            "d test loss / d lr": rec["d_lr"],
        }
        for name, rec in results.items()
    ]
    print(common.table(rows, rows[0].keys()))
    exact = [rec["d_lr"] for name, rec in results.items() if not name.startswith("truncate")]
    spread = (max(exact) - min(exact)) / abs(exact[0]) if exact[0] else 0.0
    print(f"d/d lr of none, step and sqrt agree to {spread:.1e} relative")
    payload = {
        "machine": info,
        "steps": steps,
        "truncate": truncate,
        "results": results,
        "remat_relative_spread": spread,
    }
    if not args.no_json:
        print(f"wrote {common.write_json('hypergrad_memory', payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
