"""What every command does before training: check the output paths, start the compilation
cache and its counters, load the data and check the recipe against it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from jopt.cli.flags import UsageError

__all__ = ["Setup", "check_optimizer", "load_data", "start"]


@dataclasses.dataclass
class Setup:
    """The persistent cache's directory (``None`` when off) and the compile counter."""

    cache: Path | None
    counter: Any

    def report(self) -> dict[str, Any]:
        """Compilation seconds, programs compiled and cache hits since :func:`start`."""
        stats = self.counter.stop()
        return {
            "compile_seconds": stats.seconds,
            "xla_compile_seconds": stats.compile_seconds,
            "programs_compiled": stats.cache_misses if self.cache else stats.programs,
            "cache_hits": stats.cache_hits,
            "cache_dir": str(self.cache) if self.cache else None,
        }


def start(args: argparse.Namespace) -> Setup:
    """Checks needing no JAX (a writable ``--plot``), then the devices asked for, the
    compilation cache and counter."""
    devices = getattr(args, "devices", 1)
    processes = _processes(args)
    if devices > 1:
        _host_devices(devices // processes)
    if args.plot is not None:
        from jopt.train.plots import check_writable

        try:
            check_writable(args.plot)
        except OSError as e:
            raise UsageError(str(e)) from None
    if processes > 1:
        _join(args)
    if devices > 1:
        import jax

        if jax.device_count() < devices:
            raise UsageError(
                f"--devices {devices}: {jax.device_count()} available on "
                f"{jax.default_backend()}"
            )
    from jopt.train.cache import CompileCounter, enable_compile_cache

    cache = None if args.no_cache else enable_compile_cache()
    return Setup(cache, CompileCounter().start())


def _processes(args: argparse.Namespace) -> int:
    """The number of processes the flags ask for (1 without them), checked together."""
    given = [getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id")]
    if all(v is None for v in given):
        return 1
    if any(v is None for v in given):
        raise UsageError("--coordinator, --num-processes and --process-id go together")
    coordinator, processes, process_id = given
    if process_id >= processes:
        raise UsageError(f"--process-id {process_id} is not below --num-processes {processes}")
    devices = getattr(args, "devices", 1)
    if devices % processes:
        raise UsageError(f"--devices {devices} does not split over {processes} processes")
    return processes


def _join(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` with the flags; on CPUs, collectives over gloo."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id, initialization_timeout=120)
    except Exception as e:  # the coordinator unreachable, a bad address: one line
        raise UsageError(f"--coordinator {args.coordinator}: {str(e).splitlines()[0]}") from None


def _host_devices(n: int) -> None:
    """Make ``n`` CPU devices when JAX starts (XLA's host platform device count), unless the
    environment already says how many: a CPU machine then runs ``--devices n`` as it would run
    on n accelerators. Accelerators are counted as they are. (XLA reads the flag when the
    first computation starts its backend, which no command has done yet.)"""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def load_data(config: Any) -> Any:
    """The configuration's Iris split; its test size and batch size checked against it."""
    from jopt.train.data import load_iris

    try:
        data = load_iris(config.test_size, config.split_seed)
    except ValueError as e:
        raise UsageError(f"--test-size: {e}") from None
    n = len(data.x_train)
    if config.batch_size > n:
        raise UsageError(
            f"--batch-size {config.batch_size} is larger than the training set ({n} rows)"
        )
    return data


def check_optimizer(config: Any) -> None:
    """The optimizer's own checks (torch's messages) as usage errors."""
    from jopt.train.recipes import make_optimizer

    try:
        make_optimizer(config.optimizer, config.lr, config.weight_decay)
    except ValueError as e:
        raise UsageError(f"{config.optimizer}: {e}") from None
