"""Sharded optimizer steps and sharded sweeps against one device, in one run.

- **Adam step, fully sharded**: ``--params`` float32 parameters in 8 matrices, gradients and
  Adam's state split over N devices (``jopt.init_sharded``; the update is local to each
  shard), against the same step on one device; ms per step and the bytes one device holds;
- **Iris sweep**: K learning rates of the default recipe (``jopt.train.sweep``), the K runs
  split over N devices (``Placement``) against all K on one device; runs/s of the compiled
  training program.

Every device JAX finds is used (N = ``jax.device_count()``): on a GPU or TPU machine, its
accelerators. On a CPU, give ``--host-devices N`` to split the cores into N devices (XLA's
``--xla_force_host_platform_device_count``); CPU "devices" share the same cores and memory
bandwidth, so there the figures show the cost of sharding, not a speed-up.

Run: ``python benchmarks/sharded.py`` (``--quick`` for tiny sizes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def _host_devices_from_argv() -> None:
    """``--host-devices N`` must reach XLA before JAX starts its backend."""
    if "--host-devices" in sys.argv:
        n = sys.argv[sys.argv.index("--host-devices") + 1]
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


_host_devices_from_argv()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import jopt  # noqa: E402
from jopt import train  # noqa: E402


def _adam_step(params: dict, mesh: Mesh | None, rounds: int) -> dict[str, Any]:
    opt = jopt.adam(lr=1e-3)
    if mesh is None:
        placed = jax.device_put(params, jax.devices()[0])
        state = opt.init(placed)
        step = jax.jit(lambda p, s, g: _update(opt, p, s, g), donate_argnums=(0, 1))
    else:
        axis = mesh.axis_names[0]
        where = NamedSharding(mesh, PartitionSpec(axis))
        placed = jax.device_put(params, where)
        state = jopt.init_sharded(opt, placed)
        shardings = (jax.tree.map(lambda p: p.sharding, placed),
                     jopt.state_shardings(opt, placed))
        step = jax.jit(lambda p, s, g: _update(opt, p, s, g), donate_argnums=(0, 1),
                       in_shardings=(*shardings, shardings[0]), out_shardings=shardings)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), placed)
    carry = [placed, state]

    def call() -> None:
        carry[0], carry[1] = common.block(step(carry[0], carry[1], grads))

    timing = common.interleaved({"step": call}, warmup=3, rounds=rounds, per_round=5)["step"]
    per_device = sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(carry)
        for shard in leaf.addressable_shards
        if shard.device == jax.devices()[0]
    )
    return {"ms_per_step": common.ms(timing.median), "mib_on_device_0": per_device / 2**20,
            "timing": timing}


def _update(opt: Any, params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    updates, state = opt.update(grads, state, params)
    return jopt.apply_updates(params, updates), state


def _sweep(k: int, epochs: int, placement: Any, repeats: int) -> dict[str, Any]:
    data = train.load_iris()
    lrs = np.geomspace(1e-4, 1.0, k)
    first = train.sweep(jopt.adam, data, lrs, epochs=epochs, l2=1e-3, placement=placement)
    best = float("inf")
    trainer = None
    for _ in range(repeats):
        result = train.sweep(jopt.adam, data, lrs, epochs=epochs, l2=1e-3, placement=placement,
                             trainer=trainer)
        best = min(best, result.train_seconds)
    return {"runs_per_s": k / best, "compile_s": first.compile_seconds,
            "final_test_loss": float(np.nanmean(result.history["test_loss"][:, -1]))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--host-devices", type=int, default=None,
                        help="on a CPU: split it into this many devices")
    parser.add_argument("--params", type=int, default=None, help="Adam's parameters")
    parser.add_argument("--runs", type=int, default=None, help="sweep K")
    args = parser.parse_args(argv)
    n = jax.device_count()
    size = args.params or (1 << 16 if args.quick else 10_000_000)
    k = args.runs or (n * 2 if args.quick else 256)
    epochs = 3 if args.quick else 100
    rounds = 2 if args.quick else 10
    k -= k % n
    info = common.machine()
    print(f"# {n} {jax.default_backend()} devices on {info['cpu']}; load "
          f"{info['load_average_start']}")
    rows_per = -(-size // 8 // n) * n  # 8 matrices of rows_per x 1, rows divisible by n
    rng = np.random.default_rng(0)
    params = {f"w{i}": rng.normal(size=(rows_per, 1)).astype(np.float32) for i in range(8)}
    mesh = Mesh(np.array(jax.devices()), ("data",))
    one = _adam_step(params, None, rounds)
    sharded = _adam_step(params, mesh, rounds)
    step_rows = [
        {"contender": "1 device", "params": 8 * rows_per, **one},
        {"contender": f"{n} devices, fully sharded", "params": 8 * rows_per, **sharded},
    ]
    sweep_one = _sweep(k, epochs, None, 2 if args.quick else 3)
    sweep_n = _sweep(k, epochs, train.Placement(train.make_mesh()), 2 if args.quick else 3)
    sweep_rows = [{"contender": "1 device", "runs": k, **sweep_one},
                  {"contender": f"{n} devices", "runs": k, **sweep_n}]
    print("\n#### Adam step over sharded state\n")
    print(common.table(step_rows, ["contender", "params", "ms_per_step", "mib_on_device_0"]))
    print(f"\n#### Iris sweep, {epochs} epochs\n")
    print(common.table(sweep_rows, ["contender", "runs", "runs_per_s", "compile_s"]))
    payload = {"machine": info, "devices": n, "backend": jax.default_backend(),
               "step": step_rows, "sweep": sweep_rows}
    if not args.no_json:
        print("\nwrote", common.write_json("sharded", payload, args.out))
    return payload


if __name__ == "__main__":
    main()
