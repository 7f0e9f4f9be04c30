"""``jopt train``: one optimizer, with progress, a table, a plot and checkpoints."""

from __future__ import annotations

import argparse
from typing import Any

from jopt.cli.common import (
    UsageError,
    add_common,
    add_lr,
    add_optimizer,
    check_optimizer,
    compile_report,
    emit_json,
    epoch_table,
    fmt,
    load_data,
    make_console,
    number,
    progress_bar,
    run_config,
    start,
    steps_per_epoch,
    weight_decay_of,
    write_plot,
)


def add(sub: Any) -> None:
    p = sub.add_parser("train", help="train the MLP on Iris with one optimizer",
                       description="Train the 4-16-3 MLP on Iris with one optimizer.")
    add_optimizer(p)
    add_lr(p)
    add_common(p)
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save checkpoints here (orbax)")
    p.add_argument("--checkpoint-every", type=number(int, "--checkpoint-every", 0, True),
                   default=25, help="epochs between checkpoints (default 25; and the last)")
    p.add_argument("--keep", type=number(int, "--keep", 0, strict=True), default=3,
                   help="checkpoints kept (default 3)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--log-every", type=number(int, "--log-every", 0, strict=True),
                   default=10, metavar="N", help="epochs between rows of the table (default 10)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.resume and args.checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint-dir")
    setup = start(args)
    data = load_data(args)
    config = run_config(args)
    check_optimizer(config)

    from jopt.train.checkpoint import CheckpointError, Checkpoints
    from jopt.train.recipes import DEFAULT_LR
    from jopt.train.runner import run

    console = make_console(args)
    checkpoints = None
    if args.checkpoint_dir is not None:
        checkpoints = Checkpoints(args.checkpoint_dir, keep=args.keep)
        try:  # fail before compiling anything: a wrong directory is a usage error
            if args.resume and checkpoints.latest() is not None:
                checkpoints.record(config.as_record())
            elif not args.resume and checkpoints.epochs():
                raise CheckpointError(
                    f"{checkpoints.directory} already holds checkpoints (epochs "
                    f"{', '.join(map(str, checkpoints.epochs()))}); pass --resume to continue "
                    "them or choose another --checkpoint-dir"
                )
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    lr = config.lr if config.lr is not None else DEFAULT_LR[config.optimizer]
    progress = progress_bar(console, f"{config.optimizer} lr={lr:g}")
    with progress:
        task = progress.add_task("train", total=config.epochs, status="")

        def on_start(first: int) -> None:
            progress.update(task, completed=first)

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            status = f"loss {fmt(row['train_loss'])}  acc {row['test_accuracy']:.3f}"
            progress.update(task, completed=epoch, status=status)

        try:
            result = run(config, checkpoints=checkpoints,
                         checkpoint_every=args.checkpoint_every, resume=args.resume,
                         on_epoch=on_epoch, on_start=on_start)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    report = compile_report(setup)
    first = result.resumed_from or 0
    title = f"{config.optimizer}, lr {lr:g}, schedule {config.schedule}, batch {config.batch_size}"
    console.print(epoch_table(result.history, first, args.log_every, title))
    steps = (config.epochs - first) * steps_per_epoch(data, config)
    summary = {
        "command": "train",
        "optimizer": config.optimizer,
        "lr": lr,
        "schedule": config.schedule,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "weight_decay": weight_decay_of(config),
        "l2": config.l2,
        "hidden": list(config.hidden),
        "seed": config.seed,
        "final_train_loss": result.final("train_loss"),
        "final_test_loss": result.final("test_loss"),
        "test_accuracy": result.final("test_accuracy"),
        "train_accuracy": result.final("train_accuracy"),
        "final_lr": result.final("lr"),
        "train_seconds": result.train_seconds,
        "steps": steps,
        "us_per_step": 1e6 * result.train_seconds / steps if steps else None,
        **report,
        "resumed_from": result.resumed_from,
        "checkpoints": result.checkpoints,
        "plot": args.plot,
        "history": result.history,
    }
    console.print(
        f"test accuracy {summary['test_accuracy']:.3f}, test loss "
        f"{fmt(summary['final_test_loss'])}; trained in {result.train_seconds:.3f} s "
        f"after {report['compile_seconds']:.2f} s of compilation"
        + (f" ({report['cache_hits']} programs from the cache)" if report["cache_hits"] else "")
    )
    if args.plot:
        from jopt.train.plots import plot_history

        write_plot(lambda: plot_history(result.history, args.plot, title), args.plot, console)
    if args.json:
        emit_json(summary)
    return 0
