"""``jopt train``: one optimizer, with progress, a table, a plot and checkpoints."""

from __future__ import annotations

import argparse
from typing import Any

from jopt.cli.flags import UsageError, add_config, add_output, config_of, positive
from jopt.cli.output import epoch_table, finish, fmt, make_console, progress_bar
from jopt.cli.setup import check_optimizer, load_data, start


def add(sub: Any) -> None:
    p = sub.add_parser("train", help="train the MLP on Iris with one optimizer",
                       description="Train the 4-16-3 MLP on Iris with one optimizer.")
    add_config(p)
    add_output(p)
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save checkpoints here (orbax), as folders epoch_<N>; jopt deletes or "
                        "replaces only the epoch_<N> folders it wrote, nothing else in DIR, and "
                        "refuses a DIR another run is writing; with several processes, a DIR "
                        "they all see (each writes its own shards)")
    p.add_argument("--checkpoint-every", type=positive(int, "--checkpoint-every"), default=25,
                   help="epochs between checkpoints (default 25; and the last)")
    p.add_argument("--keep", type=positive(int, "--keep"), default=3,
                   help="checkpoints kept (default 3)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--log-every", type=positive(int, "--log-every"), default=10, metavar="N",
                   help="epochs between rows of the table (default 10)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.resume and args.checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint-dir")
    config = config_of(args)
    setup = start(args)
    data = load_data(config)
    check_optimizer(config)

    from jopt.train.checkpoint import CheckpointError, Checkpoints
    from jopt.train.runner import check_checkpoints, run

    console = make_console(args)
    checkpoints = None
    try:
        if args.checkpoint_dir is not None:
            checkpoints = Checkpoints(args.checkpoint_dir, keep=args.keep)
            check_checkpoints(checkpoints, config, args.resume)  # before the progress bar
        progress = progress_bar(console, f"{config.optimizer} lr={config.base_lr:g}")
        with progress:
            task = progress.add_task("train", total=config.epochs, status="")

            def on_start(first: int) -> None:
                progress.update(task, completed=first)

            def on_epoch(epoch: int, row: dict[str, float]) -> None:
                status = f"loss {fmt(row['train_loss'])}  acc {row['test_accuracy']:.3f}"
                progress.update(task, completed=epoch, status=status)

            result = run(config, data=data, checkpoints=checkpoints,
                         checkpoint_every=args.checkpoint_every, resume=args.resume,
                         on_epoch=on_epoch, on_start=on_start)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    report = setup.report()
    for note in result.notes:
        console.print(f"jopt train: {note}", style="yellow")
    first = result.resumed_from or 0
    title = (f"{config.optimizer}, lr {config.base_lr:g}, schedule {config.schedule}, "
             f"batch {config.batch_size}")
    console.print(epoch_table(result.history, first, args.log_every, title))
    from jopt.train.compress import compression_report, dense_epochs

    dense = dense_epochs(config)
    before = float(result.history["test_accuracy"][dense - 1]) if dense else None
    compression = compression_report(result.graphdef, whole(result.params), data,
                                     config.quantize, before)
    if config.prune != "none" or config.quantize != "none":
        console.print(compression_table(compression, config))
    steps = (config.epochs - first) * result_steps(data, config)
    summary = {
        "command": "train",
        "optimizer": config.optimizer,
        "lr": config.base_lr,
        "schedule": config.schedule,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "weight_decay": config.decay,
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
        "notes": result.notes,
        "plot": args.plot,
        **compression,
        "history": result.history,
    }
    console.print(
        f"test accuracy {summary['test_accuracy']:.3f}, test loss "
        f"{fmt(summary['final_test_loss'])}; trained in {result.train_seconds:.3f} s "
        f"after {report['compile_seconds']:.2f} s of compilation"
        + (f" ({report['cache_hits']} programs from the cache)" if report["cache_hits"] else "")
    )
    from jopt.train.plots import plot_history

    return finish(args, console, summary, lambda path: plot_history(result.history, path, title))


def compression_table(report: dict[str, Any], config: Any) -> Any:
    """Sparsity, bytes and test accuracy of the trained model, and of its int8 copy."""
    from rich.table import Table

    from jopt.train.compress import dense_epochs

    pruning = "dense" if config.prune == "none" else (
        f"{config.prune} {config.resolved().sparsity:g}, {config.prune_schedule}")
    table = Table(title="compression", title_justify="left")
    for name in ("model", "weights pruned", "bytes", "test acc"):
        table.add_column(name, justify="right")
    if report["dense_test_accuracy"] is not None:
        table.add_row(f"float32, epoch {dense_epochs(config)} (before pruning)", "0.0%",
                      str(report["model_bytes"]), f"{report['dense_test_accuracy']:.3f}")
    table.add_row(f"float32 ({pruning})", f"{report['sparsity']:.1%}",
                  str(report["model_bytes"]), f"{report['float_test_accuracy']:.3f}")
    if report["quantized_model_bytes"] is not None:
        table.add_row(config.quantize, f"{report['sparsity']:.1%}",
                      str(report["quantized_model_bytes"]),
                      f"{report['quantized_test_accuracy']:.3f}")
    return table


def whole(params: Any) -> Any:
    """``params`` with every array whole on this process: the report evaluates the trained
    model here, and with several processes a fully sharded parameter is split over them."""
    import jax

    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def result_steps(data: Any, config: Any) -> int:
    """Optimizer steps per epoch of ``config`` on ``data``."""
    from jopt.train.data import num_batches

    return num_batches(len(data.x_train), config.batch_size, config.drop_last)
