"""``jopt compare``: several optimizers from the same start, curves on one figure."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from jopt.cli.flags import add_config, add_output, config_of, optimizer_list
from jopt.cli.output import finish, fmt, make_console, progress_bar
from jopt.cli.setup import check_optimizer, load_data, start


def add(sub: Any) -> None:
    p = sub.add_parser("compare", help="train several optimizers and compare their curves",
                       description="Train the Iris MLP with several optimizers, same seed.")
    p.add_argument("--optimizers", type=optimizer_list, metavar="NAMES",
                   default=("sgd", "momentum", "rmsprop", "adam"),
                   help="comma-separated, or all (default sgd,momentum,rmsprop,adam)")
    p.add_argument("--sparsities", type=fractions, metavar="S", default=None,
                   help="comma-separated fractions in [0, 1): train each optimizer at each "
                        "sparsity (0: dense; the others with --prune, default l1)")
    add_config(p, skip=["optimizer", "quantize"])
    add_output(p)
    p.set_defaults(handler=run)


def fractions(text: str) -> tuple[float, ...]:
    """Comma-separated sparsities: ``0,0.5,0.9``."""
    try:
        values = tuple(float(p) for p in text.replace(" ", ",").split(",") if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"must be fractions in [0, 1), got {text!r}")
    return values


def _configs(args: argparse.Namespace) -> list[Any]:
    """One configuration per optimizer, or per optimizer and sparsity."""
    if args.sparsities is None:
        return [config_of(args, optimizer=name) for name in args.optimizers]
    method = args.prune if args.prune != "none" else "l1"
    return [
        config_of(args, optimizer=name, prune=method if s > 0 else "none",
                  sparsity=s if s > 0 else None,
                  prune_schedule=args.prune_schedule if s > 0 else "oneshot")
        for name in args.optimizers
        for s in args.sparsities
    ]


def run(args: argparse.Namespace) -> int:
    base = config_of(args)
    setup = start(args)
    data = load_data(base)
    configs = _configs(args)
    for config in configs:
        check_optimizer(config)

    from rich.table import Table

    from jopt.train.compress import compression_report
    from jopt.train.runner import Session

    console = make_console(args)
    session = Session()
    results = []
    with progress_bar(console, "compare") as progress:
        task = progress.add_task("compare", total=len(configs) * base.epochs, status="")
        for config in configs:
            done = progress.tasks[0].completed

            def on_epoch(epoch: int, row: dict[str, float], done: float = done,
                         name: str = config.optimizer) -> None:
                progress.update(task, completed=done + epoch, status=name)

            results.append(session.run(config, data=data, on_epoch=on_epoch))
    report = setup.report()
    table = Table(title=f"Iris, {base.epochs} epochs, batch {base.batch_size}",
                  title_justify="left")
    columns = ("optimizer", "sparsity", "lr", "train loss", "test loss", "test acc", "train s")
    for name in columns:
        table.add_column(name, justify="right")
    summaries = []
    for config, result in zip(configs, results):
        sparsity = compression_report(result.graphdef, result.params, data)["sparsity"]
        summary = {
            "optimizer": config.optimizer,
            "prune": config.prune,
            "sparsity": sparsity,
            "lr": config.base_lr,
            "epochs": config.epochs,
            "final_train_loss": result.final("train_loss"),
            "final_test_loss": result.final("test_loss"),
            "test_accuracy": result.final("test_accuracy"),
            "train_seconds": result.train_seconds,
            "compile_seconds": result.compile_seconds,
        }
        summaries.append(summary)
        table.add_row(config.optimizer, f"{sparsity:.1%}", f"{config.base_lr:g}",
                      fmt(summary["final_train_loss"]),
                      fmt(summary["final_test_loss"]), f"{summary['test_accuracy']:.3f}",
                      f"{result.train_seconds:.3f}")
    console.print(table)
    from jopt.train.plots import plot_compare

    histories = {_label(c, args): r.history for c, r in zip(configs, results)}
    summary = {"command": "compare", "results": summaries, **report,
               "config": dataclasses.asdict(base) | {"optimizer": list(args.optimizers)}}
    return finish(args, console, summary,
                  lambda path: plot_compare(histories, path, title="Iris"))


def _label(config: Any, args: argparse.Namespace) -> str:
    """A curve's name: the optimizer, and its sparsity when several are compared."""
    if args.sparsities is None:
        return config.optimizer
    return f"{config.optimizer}, {config.sparsity or 0:g} sparse"
