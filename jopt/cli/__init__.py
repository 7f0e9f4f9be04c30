"""The ``jopt`` command: train, compare and sweep the Iris recipe, and find its learning rate.

    jopt train --optimizer adam --epochs 100 --plot run.png
    jopt compare --optimizers sgd,momentum,rmsprop,adam --plot curves.png
    jopt sweep --optimizer adam --lr-min 1e-4 --lr-max 1 --runs 256 --json
    jopt lr-find --optimizer sgd --plot lr.png

Every command takes ``--json``: the last line of stdout is then one JSON object, and the human
output (progress bar, tables) goes to stderr. Bad input exits with status 2 and one line on
stderr. The persistent compilation cache (``$JOPT_CACHE_DIR``, default ``~/.cache/jopt/xla``)
makes a second identical run load its programs instead of compiling them.

A new subcommand is a function ``add(subparsers)`` that registers its parser with
``set_defaults(handler=...)``, listed in ``COMMANDS``; the handler takes the parsed arguments
and returns the exit status. The recipe's flags are generated from the fields of
``jopt.train.config.RunConfig`` (:mod:`jopt.cli.flags`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jopt.cli import compare, lr_find, sweep, train
from jopt.cli.flags import Parser, UsageError
from jopt.train.names import suggest

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

COMMANDS: dict[str, Callable[[Any], None]] = {
    "train": train.add,
    "compare": compare.add,
    "sweep": sweep.add,
    "lr-find": lr_find.add,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="jopt", description="PyTorch's optimizers rebuilt for JAX: "
                     "train an MLP on Iris with them.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jopt`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        if command is not None and command not in COMMANDS:
            raise UsageError(suggest(command, COMMANDS, "command"))
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except KeyboardInterrupt:
        print("jopt: interrupted (checkpoints already written are complete)", file=sys.stderr)
        return 130
    except UsageError as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else "bad input"
        if not message.startswith("jopt"):
            message = f"jopt {args.command}: {message}" if args else f"jopt: {message}"
        print(f"{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
