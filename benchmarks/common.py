"""Timing, machine description, tables and JSON for the benchmark scripts.

Every script times its contenders in the same process, interleaved round by round (A, B, C,
A, B, C, ...), so a change of machine load between rounds hits every contender alike; figures
are medians (and minima) of many single calls, each ended by ``block_until_ready`` (JAX) or
by the call returning (torch on CPU, which runs eagerly).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of one contender: all samples and their summary."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    def summary(self) -> dict[str, float]:
        """Median, min, interquartile range (seconds) and the number of samples."""
        if not self.samples:
            return {"median_s": float("nan"), "min_s": float("nan"), "n": 0}
        q1, q3 = np.percentile(self.samples, [25, 75])
        return {
            "median_s": self.median,
            "min_s": self.min,
            "q1_s": float(q1),
            "q3_s": float(q3),
            "n": len(self.samples),
        }


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """Time ``n`` calls of ``fn`` one by one; ``fn`` must block until its work is done."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved(
    contenders: dict[str, Callable[[], Any]],
    *,
    warmup: int = 3,
    rounds: int = 10,
    per_round: int = 5,
    budget_s: float | None = None,
) -> dict[str, Timing]:
    """Time each contender ``rounds x per_round`` times, one round of each after the other.

    ``warmup`` untimed calls of each come first (compilation, caches, allocator). With
    ``budget_s``, rounds stop early once that much time has passed (at least two rounds run).
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing() for name in contenders}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in contenders.items():
            timings[name].samples.extend(time_calls(fn, per_round))
        if budget_s is not None and r >= 1 and time.perf_counter() - start > budget_s:
            break
    return timings


def block(tree: Any) -> Any:
    """``jax.block_until_ready`` on a tree (imported lazily)."""
    import jax

    return jax.block_until_ready(tree)


# --------------------------------------------------------------------------------------------
# Memory bandwidth
# --------------------------------------------------------------------------------------------


def streaming_bandwidth(n: int = 1 << 24, repeats: int = 20) -> dict[str, float]:
    """Measured streaming bandwidth (bytes/s): bytes named in the kernel / median time.

    The kernel is the access pattern of an optimizer step, an in-place update that reads two
    arrays and writes one it has just read (``a <- a + s * b``: 3 arrays of ``n`` float32, 64 MiB
    each at the default, far above any cache), in NumPy (one thread), in JAX (jitted, ``a``
    donated; whatever backend JAX runs on) and, where installed, in torch with its default
    threads (``a.add_(b, alpha=s)``). ``best`` is the fastest of them: the bound.
    """
    import jax
    import jax.numpy as jnp

    out: dict[str, float] = {}
    a, b = np.full(n, 1.0, np.float32), np.full(n, 2.0, np.float32)
    t = Timing(time_calls(lambda: np.add(a, b, out=a), repeats + 2)[2:])
    out["numpy_axpy"] = 3 * 4 * n / t.median

    axpy = jax.jit(lambda a, b: a + 0.5 * b, donate_argnums=0)
    arrays = [jnp.ones(n, jnp.float32), jnp.full(n, 2.0, jnp.float32)]

    def jax_axpy() -> None:
        arrays[0] = axpy(*arrays)
        arrays[0].block_until_ready()

    t = Timing(time_calls(jax_axpy, repeats + 2)[2:])
    out["jax_axpy"] = 3 * 4 * n / t.median
    try:
        import torch
    except ImportError:
        pass
    else:
        ta, tb = torch.full((n,), 1.0), torch.full((n,), 2.0)
        t = Timing(time_calls(lambda: ta.add_(tb, alpha=0.5), repeats + 2)[2:])
        out["torch_axpy"] = 3 * 4 * n / t.median
    out["best"] = max(out.values())
    return out


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """What the figures ran on: CPU, cores, memory, backend, library versions, load."""
    import jax

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_start": load_average(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for name in ("optax", "flax", "torch", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    return info


def torch_device() -> str:
    """``cuda`` where torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync() -> None:
    """Wait for torch's queued GPU work (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def write_json(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``payload`` (with the machine and the closing load average) to ``<name>.json``."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **payload,
    }
    payload.setdefault("machine", {})["load_average_end"] = load_average()
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Timing):
        return value.summary()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns``; floats in 3 significant digits."""
    columns = list(columns)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(b) for b in body)])


def us(seconds: float) -> float:
    """Seconds to microseconds."""
    return seconds * 1e6


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1e3


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every script takes: ``--quick`` (tiny sizes, for the smoke test), ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--no-json", action="store_true", help="print only")
    return parser


def run_python(code_or_args: list[str], env: dict[str, str] | None = None, **kw: Any):
    """Run ``python <args>`` with this interpreter; returns the completed process."""
    return subprocess.run(
        [sys.executable, *code_or_args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        **kw,
    )
