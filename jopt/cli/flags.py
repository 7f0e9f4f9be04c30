"""The commands' flags: generated from the fields of a config dataclass, plus their own.

Every field of :class:`~jopt.train.config.RunConfig` declares its flag (help, parser,
metavar; a ``bool`` is a switch), so :func:`add_config` writes ``--batch-size`` from
``batch_size`` and :func:`config_of` reads the parsed flags back into a config: a new setting
of the recipe is one field, and touches nothing here. Nothing here imports JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jopt.train.config import RunConfig, Setting, choice, number
from jopt.train.names import OPTIMIZERS

__all__ = ["Parser", "UsageError", "add_config", "add_output", "config_of", "flag", "typed",
           "optimizer_list"]


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def typed(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its ``ValueError`` becomes argparse's message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


def add_config(
    parser: argparse.ArgumentParser,
    config: type = RunConfig,
    skip: Iterable[str] = (),
    helps: Mapping[str, str] | None = None,
) -> None:
    """A flag for every field of the dataclass ``config`` but those in ``skip``; ``helps``
    replaces the help of some (a command's own words for what a field does there)."""
    skipped = set(skip)
    helps = dict(helps or {})
    unknown = sorted(set(helps) - {f.name for f in dataclasses.fields(config)})
    if unknown:
        raise ValueError(f"helps names fields that {config.__name__} does not have: {unknown}")
    for field in dataclasses.fields(config):
        setting: Setting | None = field.metadata.get("setting")
        if setting is None or field.name in skipped:
            continue
        text = helps.get(field.name, setting.help)
        if setting.parse is None:  # a switch
            parser.add_argument(flag(field.name), action="store_true", default=field.default,
                                dest=field.name, help=text)
        else:
            parser.add_argument(flag(field.name), type=typed(setting.parse, flag(field.name)),
                                default=field.default, dest=field.name,
                                metavar=setting.metavar, help=text)


def config_of(args: argparse.Namespace, config: type = RunConfig, **overrides: Any) -> Any:
    """The ``config`` the parsed flags describe (``overrides`` win; fields without a flag keep
    their defaults), checked: a ``ValueError`` of its checks is a ``UsageError``."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config)
              if hasattr(args, f.name)}
    values.update(overrides)
    made = config(**values)
    try:
        made.check()
    except ValueError as e:
        raise UsageError(str(e)) from None
    return made


def add_output(parser: argparse.ArgumentParser) -> None:
    """The flags every command has besides the recipe's."""
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="save a figure")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line of stdout")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not use the persistent compilation cache")
    group = parser.add_argument_group(
        "several processes (jax.distributed; give all three, the same in every process)")
    group.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                       help="address of process 0, which coordinates the others")
    group.add_argument("--num-processes", type=positive(int, "--num-processes"), default=None,
                       metavar="N", help="processes in the run")
    group.add_argument("--process-id", type=typed(number(int, 0), "--process-id"),
                       default=None, metavar="I", help="this process, 0..N-1")


def optimizer_list(text: str) -> tuple[str, ...]:
    """Comma-separated optimizer names, or ``all``."""
    if text.strip() == "all":
        return OPTIMIZERS
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("needs at least one optimizer name")
    one = typed(choice(OPTIMIZERS, "optimizer"), "optimizer")
    return tuple(one(n) for n in names)


def positive(kind: type, name: str) -> Callable[[str], Any]:
    """A flag's type: a positive ``int`` or ``float``."""
    return typed(number(kind, 0, strict=True), name)
