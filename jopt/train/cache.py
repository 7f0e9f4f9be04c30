"""The persistent XLA compilation cache, and counters of what JAX compiled.

``enable_compile_cache`` points JAX's persistent cache at ``$JOPT_CACHE_DIR`` (default
``~/.cache/jopt/xla``, or under ``$XDG_CACHE_HOME``) with the size and compile-time thresholds
at zero, so even the small programs of an Iris run are kept: a second identical run loads its
executables from disk instead of compiling them.

``CompileCounter`` listens to JAX's monitoring events and measures, between ``start()`` and
``stop()``, the seconds spent tracing, lowering and compiling (or loading from the cache), the
programs compiled, and the cache's hits and misses.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import jax

__all__ = [
    "CompileCounter",
    "CompileStats",
    "default_cache_dir",
    "enable_compile_cache",
]

_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_HIT = "/jax/compilation_cache/cache_hits"


def default_cache_dir() -> Path | None:
    """``$JOPT_CACHE_DIR`` (``""``, ``0`` or ``off`` turn the cache off), else the user cache."""
    value = os.environ.get("JOPT_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "none") else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jopt" / "xla"


def enable_compile_cache(directory: str | os.PathLike[str] | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``directory`` and cache every program.

    Returns the directory, or ``None`` when it is turned off or cannot be created (JAX then
    compiles as usual). Call it before the first compilation of the process.
    """
    path = Path(directory) if directory is not None else default_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


@dataclasses.dataclass
class CompileStats:
    """Totals of one measured span."""

    trace_seconds: float = 0.0
    lower_seconds: float = 0.0
    compile_seconds: float = 0.0
    programs: int = 0
    cache_requests: int = 0
    cache_hits: int = 0

    @property
    def cache_misses(self) -> int:
        return self.cache_requests - self.cache_hits

    @property
    def seconds(self) -> float:
        """Tracing + lowering + compiling (or loading): the time a run spends before it runs."""
        return self.trace_seconds + self.lower_seconds + self.compile_seconds


_totals = CompileStats()
_lock = threading.Lock()
_registered = False


def _on_duration(event: str, duration: float, **_: object) -> None:
    with _lock:
        if event == _TRACE:
            _totals.trace_seconds += duration
        elif event == _LOWER:
            _totals.lower_seconds += duration
        elif event == _COMPILE:
            _totals.compile_seconds += duration
            _totals.programs += 1


def _on_event(event: str, **_: object) -> None:
    with _lock:
        if event == _REQUEST:
            _totals.cache_requests += 1
        elif event == _HIT:
            _totals.cache_hits += 1


def _register() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _registered = True


class CompileCounter:
    """What JAX compiled between ``start()`` and ``stop()`` (a context manager too)."""

    def __init__(self) -> None:
        _register()
        self._start = CompileStats()
        self.stats = CompileStats()

    def start(self) -> CompileCounter:
        with _lock:
            self._start = dataclasses.replace(_totals)
        return self

    def stop(self) -> CompileStats:
        with _lock:
            now = dataclasses.replace(_totals)
        self.stats = CompileStats(
            *(getattr(now, f.name) - getattr(self._start, f.name)
              for f in dataclasses.fields(CompileStats))
        )
        return self.stats

    def __enter__(self) -> CompileCounter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

