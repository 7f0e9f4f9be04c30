"""``jopt compare``: several optimizers from the same start, curves on one figure."""

from __future__ import annotations

import argparse
from typing import Any

from jopt.cli.common import (
    add_common,
    add_lr,
    check_optimizer,
    compile_report,
    emit_json,
    fmt,
    load_data,
    make_console,
    optimizer_list,
    progress_bar,
    run_config,
    start,
    write_plot,
)


def add(sub: Any) -> None:
    p = sub.add_parser("compare", help="train several optimizers and compare their curves",
                       description="Train the Iris MLP with several optimizers, same seed.")
    p.add_argument("--optimizers", type=optimizer_list, metavar="NAMES",
                   default=("sgd", "momentum", "rmsprop", "adam"),
                   help="comma-separated, or all (default sgd,momentum,rmsprop,adam)")
    add_lr(p)
    add_common(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    setup = start(args)
    load_data(args)  # checks --test-size and --batch-size against the data
    configs = [run_config(args, optimizer=name) for name in args.optimizers]
    for config in configs:
        check_optimizer(config)

    from rich.table import Table

    from jopt.train.recipes import DEFAULT_LR
    from jopt.train.runner import run

    console = make_console(args)
    results = []
    with progress_bar(console, "compare") as progress:
        task = progress.add_task("compare", total=len(configs) * args.epochs, status="")
        for config in configs:
            done = progress.tasks[0].completed

            def on_epoch(epoch: int, row: dict[str, float], done: float = done,
                         name: str = config.optimizer) -> None:
                progress.update(task, completed=done + epoch, status=name)

            results.append(run(config, on_epoch=on_epoch))
    report = compile_report(setup)
    table = Table(title=f"Iris, {args.epochs} epochs, batch {args.batch_size}",
                  title_justify="left")
    for name in ("optimizer", "lr", "train loss", "test loss", "test acc", "train s"):
        table.add_column(name, justify="right")
    summaries = []
    for config, result in zip(configs, results):
        lr = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
        summary = {
            "optimizer": config.optimizer,
            "lr": lr,
            "epochs": config.epochs,
            "final_train_loss": result.final("train_loss"),
            "final_test_loss": result.final("test_loss"),
            "test_accuracy": result.final("test_accuracy"),
            "train_seconds": result.train_seconds,
            "compile_seconds": result.compile_seconds,
        }
        summaries.append(summary)
        table.add_row(config.optimizer, f"{lr:g}", fmt(summary["final_train_loss"]),
                      fmt(summary["final_test_loss"]), f"{summary['test_accuracy']:.3f}",
                      f"{result.train_seconds:.3f}")
    console.print(table)
    if args.plot:
        from jopt.train.plots import plot_compare

        histories = {c.optimizer: r.history for c, r in zip(configs, results)}
        write_plot(lambda: plot_compare(histories, args.plot, title="Iris"), args.plot, console)
    if args.json:
        emit_json({"command": "compare", "results": summaries, **report})
    return 0
