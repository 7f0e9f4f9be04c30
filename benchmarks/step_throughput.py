"""Optimizer step throughput: jopt vs optax vs torch.optim, Adam and SGD with momentum, float32.

One step = read the parameters, gradients and state, write the new parameters and state. The
contenders, all timed in this process, interleaved:

- ``optax``: ``optax.adam`` / ``optax.sgd(momentum=0.9)`` in a jitted step, params and state
  donated (updated in place);
- ``jopt``: ``jopt.adam`` / ``jopt.sgd(momentum=0.9)``, the same jitted, donated step;
- ``jopt flat``: the same functional step on the flat buffers of
  :func:`jopt.flat_params` (``{"float32": f32[n]}`` for params, grads and state): what a
  train step gets when it keeps the parameters flat and differentiates the loss of
  ``layout.unflatten(flat)`` (the facade's storage, usable from the functional API);
- ``jopt+optax.flatten``: ``optax.flatten(jopt.adam(...))``: flat state, but the gradients are
  concatenated and the updates split in every step;
- ``facade``: ``jopt.optim.Adam(params).step(grads)`` with the gradients as a tree (the facade
  keeps params and state flat and concatenates the gradients inside its jitted step);
- ``torch foreach`` / ``torch fused``: ``torch.optim.Adam(..., foreach=True | fused=True)``;
- ``bound``: the bytes the step must move (Adam reads p, g, m, v and writes p, m, v: 7 arrays;
  SGD with momentum 5) over the measured streaming bandwidth.

Run: ``python benchmarks/step_throughput.py`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import gc
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import jopt  # noqa: E402
import jopt.optim  # noqa: E402

CASES = ["10Mx1", "10Mx100", "1Mx1000", "100Kx10"]
QUICK_CASES = ["20Kx1", "20Kx100"]
OPTIMIZERS = ["adam", "sgd_momentum"]
CONTENDERS = [
    "optax",
    "jopt",
    "jopt flat",
    "jopt+optax.flatten",
    "facade",
    "torch foreach",
    "torch fused",
]
ARRAYS_MOVED = {"adam": 7, "sgd_momentum": 5}  # arrays of n floats read + written per step
LR = 1e-3


def parse_case(case: str) -> tuple[int, int]:
    """``"10Mx100"`` -> (10_000_000, 100): total parameters and number of leaves."""
    m = re.fullmatch(r"(\d+)([KM]?)x(\d+)", case)
    if not m:
        raise ValueError(f"bad case {case!r}: want e.g. 10Mx100")
    scale = {"": 1, "K": 1_000, "M": 1_000_000}[m.group(2)]
    return int(m.group(1)) * scale, int(m.group(3))


def leaf_sizes(n: int, leaves: int) -> list[int]:
    """``leaves`` sizes summing to ``n``, as equal as possible."""
    base, extra = divmod(n, leaves)
    return [base + (i < extra) for i in range(leaves)]


def make_tree(n: int, leaves: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"p{i:04d}": rng.standard_normal(size, dtype=np.float32)
        for i, size in enumerate(leaf_sizes(n, leaves))
    }


def functional(name: str, lib: str) -> optax.GradientTransformation:
    if lib == "optax":
        return optax.adam(LR) if name == "adam" else optax.sgd(LR, momentum=0.9)
    return jopt.adam(lr=LR) if name == "adam" else jopt.sgd(lr=LR, momentum=0.9)


def jitted_step(opt: optax.GradientTransformation) -> Callable:
    """``(params, state, grads) -> (params, state)``, jitted, params and state donated."""

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


class JaxContender:
    """A donated functional step, holding its own params and state between calls."""

    def __init__(self, opt: optax.GradientTransformation, params: Any, grads: Any) -> None:
        self.step = jitted_step(opt)
        self.params = jax.device_put(params)
        self.state = opt.init(self.params)
        self.grads = jax.device_put(grads)
        jax.block_until_ready((self.params, self.state, self.grads))

    def __call__(self) -> None:
        self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready(self.params)

    def donates(self) -> bool:
        """Whether a step deletes (reuses) the buffers of its input params and state."""
        before = jax.tree.leaves((self.params, self.state))
        self()
        return all(x.is_deleted() for x in before if x.ndim > 0)


class FacadeContender:
    """``jopt.optim.Adam(params).step(grads)``, gradients given as a tree."""

    def __init__(self, name: str, params: Any, grads: Any) -> None:
        params = jax.device_put(params)
        if name == "adam":
            self.opt = jopt.optim.Adam(params, lr=LR)
        else:
            self.opt = jopt.optim.SGD(params, lr=LR, momentum=0.9)
        self.grads = jax.device_put(grads)

    def __call__(self) -> None:
        self.opt.step(self.grads)
        jax.block_until_ready(self._buffers())

    def _buffers(self) -> Any:
        """The optimizer's flat parameters and state (what a step writes)."""
        return [(g.flat, g.state) for g in self.opt._groups]

    def donates(self) -> bool:
        before = jax.tree.leaves(self._buffers())
        self()
        return all(x.is_deleted() for x in before if x.ndim > 0)


class TorchContender:
    """``torch.optim.Adam`` / ``SGD(momentum=0.9)`` with ``foreach`` or ``fused``."""

    def __init__(self, name: str, kind: str, params: Any, grads: Any) -> None:
        import torch

        device = common.torch_device()
        self.params = [torch.tensor(v, device=device) for v in params.values()]
        for p, g in zip(self.params, grads.values()):
            p.grad = torch.tensor(g, device=device)
        flag = {"foreach": True} if kind == "foreach" else {"fused": True}
        if name == "adam":
            self.opt = torch.optim.Adam(self.params, lr=LR, **flag)
        else:
            self.opt = torch.optim.SGD(self.params, lr=LR, momentum=0.9, **flag)

    def __call__(self) -> None:
        self.opt.step()
        common.torch_sync()


def build(contender: str, name: str, params: Any, grads: Any) -> Callable[[], None]:
    """The contender's one-step callable."""
    if contender == "optax":
        return JaxContender(functional(name, "optax"), params, grads)
    if contender == "jopt":
        return JaxContender(functional(name, "jopt"), params, grads)
    if contender == "jopt flat":
        flat, _ = jopt.flat_params(params)  # one buffer per dtype: {"float32": f32[n]}
        return JaxContender(functional(name, "jopt"), flat, jopt.flat_params(grads)[0])
    if contender == "jopt+optax.flatten":
        return JaxContender(optax.flatten(functional(name, "jopt")), params, grads)
    if contender == "facade":
        return FacadeContender(name, params, grads)
    if contender.startswith("torch"):
        return TorchContender(name, contender.split()[1], params, grads)
    raise ValueError(f"unknown contender {contender!r}")


def run_case(
    name: str, case: str, contenders: list[str], bandwidth: float, quick: bool
) -> dict[str, Any]:
    """Time every contender on one (optimizer, size) case; returns the JSON record."""
    n, leaves = parse_case(case)
    params, grads = make_tree(n, leaves, 0), make_tree(n, leaves, 1)
    for g in grads.values():
        g *= 1e-2
    fns: dict[str, Callable[[], None]] = {}
    donation: dict[str, bool] = {}
    for contender in contenders:
        if contender.startswith("torch"):
            try:
                import torch  # noqa: F401
            except ImportError:
                continue
        fns[contender] = build(contender, name, params, grads)
        if hasattr(fns[contender], "donates"):
            donation[contender] = fns[contender].donates()
    del params, grads
    gc.collect()
    # A round of each contender lasts ~0.1 s (at least 3 calls); 12 rounds.
    probe = {k: common.Timing(common.time_calls(f, 3)).median for k, f in fns.items()}
    per_round = max(3, min(200, math.ceil(0.1 / max(min(probe.values()), 1e-6))))
    timings = common.interleaved(
        fns,
        warmup=1,
        rounds=3 if quick else 12,
        per_round=2 if quick else per_round,
        budget_s=2 if quick else 60,
    )
    bound = ARRAYS_MOVED[name] * 4 * n / bandwidth
    record: dict[str, Any] = {
        "optimizer": name,
        "case": case,
        "params": n,
        "leaves": leaves,
        "bytes_moved": ARRAYS_MOVED[name] * 4 * n,
        "bound_s": bound,
        "donation": donation,
        "timings": {k: t.summary() for k, t in timings.items()},
    }
    del fns
    gc.collect()
    return record


def rows_for(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows: one per contender, with ratios to optax and torch fused."""
    t = {k: v["median_s"] for k, v in record["timings"].items()}
    rows = []
    for contender, summary in record["timings"].items():
        med = summary["median_s"]
        rows.append(
            {
                "optimizer": record["optimizer"],
                "case": record["case"],
                "contender": contender,
                "median ms": common.ms(med),
                "min ms": common.ms(summary["min_s"]),
                "x optax": med / t["optax"] if "optax" in t else float("nan"),
                "x torch fused": med / t["torch fused"] if "torch fused" in t else float("nan"),
                "x bound": med / record["bound_s"],
            }
        )
    rows.append(
        {
            "optimizer": record["optimizer"],
            "case": record["case"],
            "contender": "bound",
            "median ms": common.ms(record["bound_s"]),
            "x optax": record["bound_s"] / t["optax"] if "optax" in t else float("nan"),
            "x torch fused": (
                record["bound_s"] / t["torch fused"] if "torch fused" in t else float("nan")
            ),
            "x bound": 1.0,
        }
    )
    return rows


COLUMNS = ["optimizer", "case", "contender", "median ms", "min ms", "x optax", "x torch fused"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help=f"comma-separated, default {CASES}")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    args = parser.parse_args(argv)
    cases = (args.cases or ",".join(QUICK_CASES if args.quick else CASES)).split(",")
    info = common.machine()
    bw = common.streaming_bandwidth(1 << 16 if args.quick else 1 << 24, 3 if args.quick else 20)
    print(
        f"# step throughput on {info['cpu']} ({info['cores']} cores), JAX {info['jax_backend']}, "
        f"torch threads {info.get('torch_threads')}, load {info['load_average_start']}"
    )
    print("# streaming bandwidth GB/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in bw.items()))
    records, rows = [], []
    for name in args.optimizers.split(","):
        for case in cases:
            record = run_case(name, case, args.contenders.split(","), bw["best"], args.quick)
            records.append(record)
            rows.extend(rows_for(record))
            print(common.table(rows_for(record), ["x bound", *COLUMNS]), flush=True)
    print()
    print(common.table(rows, [*COLUMNS, "x bound"]))
    payload = {"machine": info, "bandwidth_bytes_per_s": bw, "results": records}
    if not args.no_json:
        print("wrote", common.write_json("step_throughput", payload, args.out))
    return payload


if __name__ == "__main__":
    main()
