"""What the commands print: the console, JSON, the epoch table, progress, plots."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jopt.cli.flags import UsageError

__all__ = ["clean", "emit_json", "epoch_table", "finish", "fmt", "make_console", "progress_bar"]


def make_console(args: argparse.Namespace) -> Any:
    """rich's console on stdout, or on stderr when stdout is for ``--json``."""
    from rich.console import Console

    return Console(stderr=bool(args.json), highlight=False)


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, NumPy arrays lists, NumPy scalars numbers."""
    if hasattr(value, "tolist") and callable(value.tolist):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(clean(obj), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fmt(x: float | None) -> str:
    """A loss or a rate for a table: 4 significant digits, ``nan``, or ``-`` for none."""
    if x is None:
        return "-"
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def epoch_table(history: dict[str, Sequence[float]], first: int, every: int, title: str) -> Any:
    """Every ``every``-th epoch of ``history``, the first trained and the last."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("epoch", "train loss", "test loss", "test acc", "lr"):
        table.add_column(name, justify="right")
    total = len(history["train_loss"])
    for i in range(total):
        epoch = i + 1
        if epoch % every and epoch != total and epoch != first + 1:
            continue
        table.add_row(
            str(epoch),
            fmt(float(history["train_loss"][i])),
            fmt(float(history["test_loss"][i])),
            f"{history['test_accuracy'][i]:.3f}",
            f"{history['lr'][i]:.3g}",
        )
    return table


def progress_bar(console: Any, label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


def finish(
    args: argparse.Namespace, console: Any, summary: dict[str, Any], draw: Callable[[str], Any]
) -> int:
    """Draw ``--plot`` with ``draw(path)``, then print ``--json``'s ``summary``: a plot that
    cannot be written still leaves the run's numbers on stdout (``plot_error``), then exits 2
    with its one line."""
    failed = None
    if args.plot:
        try:
            draw(args.plot)
            console.print(f"wrote {args.plot}")
        except OSError as e:
            failed = f"cannot write plot {args.plot!r}: {e.strerror or e}"
            summary["plot_error"] = failed
    if args.json:
        emit_json(summary)
    if failed is not None:
        raise UsageError(failed)
    return 0
