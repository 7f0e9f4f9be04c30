"""``RunConfig``: every choice of an Iris run, each field declaring its own command-line flag.

A field is made with :func:`setting`: its default, its help text, and a parser that turns the
flag's text into the value or raises ``ValueError`` with the message the user sees. The command
line (:mod:`jopt.cli.flags`) generates its flags from these fields, so a new setting is one
field here. :meth:`RunConfig.check` holds the checks that involve several fields. Like
:mod:`jopt.train.names`, this module imports no JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from jopt.train.names import (
    ACTIVATIONS,
    DEFAULT_LR,
    INITS,
    OPTIMIZERS,
    PRUNE_METHODS,
    PRUNE_SCHEDULES,
    QUANTIZE,
    SCHEDULES,
    WEIGHT_DECAY,
    suggest,
)

__all__ = ["RunConfig", "Setting", "choice", "integers", "number", "setting"]

Parse = Callable[[str], Any]

FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: XLA:CPU flushes below it
SEED_MAX = 2**32 - 1
WIDTH_MAX = 1 << 16
DEVICES_MAX = 1 << 12
PLACEMENT = ("devices", "fsdp")
"""The fields that say where a run executes, not what it computes: a run resumes on another
number of devices."""
EPOCHS_MAX = 10**6
"""The widest hidden layer a run takes (a million-unit layer would hang the machine)."""
HORIZON_FREE = ("none", "step", "multistep", "exponential", "plateau", "inverse-sqrt")
"""Schedules whose rate at an epoch does not depend on the total number of epochs (once their
defaults are resolved): a run with one of them can be resumed with more epochs."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a config field declares for the command line: help, parser, metavar; a ``bool``
    field is a switch (``--drop-last``) and needs no parser."""

    help: str
    parse: Parse | None = None
    metavar: str | None = None


def setting(default: Any, help: str, parse: Parse | None = None, metavar: str | None = None) -> Any:
    """A config field with its flag: ``lr: float | None = setting(None, "learning rate", ...)``."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, parse, metavar)})


def choice(choices: Sequence[str], what: str) -> Parse:
    """One of ``choices`` (``-`` and ``_`` alike), else ``unknown {what} ... (did you mean``."""

    def parse(text: str) -> str:
        name = text.strip().lower()
        for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
            if candidate in choices:
                return candidate
        raise ValueError(suggest(text, choices, what))

    return parse


def number(
    kind: type, minimum: float | None = None, strict: bool = False, maximum: float | None = None
) -> Parse:
    """An ``int`` or a ``float`` a float32 holds (finite; not flushed to 0), at least
    (``strict``: above) ``minimum`` and at most ``maximum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise ValueError(f"must be {noun}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise ValueError(f"must be finite, got {text!r}")
        if kind is float and value != 0 and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
            raise ValueError(f"must be 0 or between {FLOAT32_TINY:.3g} and {FLOAT32_MAX:.3g} "
                             f"in size (a float32), got {text}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}, got {text}")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            if minimum == 0:
                bound = "positive" if strict else "non-negative"
            else:
                bound = f"> {minimum}" if strict else f">= {minimum}"
            raise ValueError(f"must be {bound}, got {text}")
        return value

    return parse


def integers(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers: ``16,16``."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"must be positive integers, got {text!r}")
    if any(v > WIDTH_MAX for v in values):
        raise ValueError(f"must be at most {WIDTH_MAX}, got {text!r}")
    return values


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The recipe: ``RunConfig()`` is the default Iris run (Adam, 100 epochs, batch 16)."""

    optimizer: str = setting(
        "adam", ", ".join(OPTIMIZERS) + " (default adam)", choice(OPTIMIZERS, "optimizer"), "NAME"
    )
    lr: float | None = setting(
        None, "learning rate (default: the recipe's for the optimizer)", number(float, 0.0)
    )
    weight_decay: float | None = setting(
        None, "the optimizer's weight_decay (default: torch's for the optimizer)",
        number(float, 0.0),
    )
    schedule: str = setting(
        "none",
        "learning-rate schedule, counted in epochs (onecycle: in steps): " + ", ".join(SCHEDULES),
        choice(SCHEDULES, "schedule"),
        "NAME",
    )
    gamma: float | None = setting(
        None, "decay factor of step/multistep/exponential/plateau", number(float, 0.0, True)
    )
    step_size: int | None = setting(
        None, "epochs between decays of 'step' (default epochs // 3)",
        number(int, 0, True, maximum=EPOCHS_MAX),
    )
    milestones: tuple[int, ...] | None = setting(
        None, "epochs of the decays of 'multistep' (default 50%%,75%% of epochs)", integers,
        "EPOCHS",
    )
    epochs: int = setting(
        100, "training epochs (default 100)", number(int, 0, True, maximum=EPOCHS_MAX)
    )
    batch_size: int = setting(
        16, "mini-batch size, 1..training rows (default 16)", number(int, 0, True)
    )
    drop_last: bool = setting(False, "drop the short last batch")
    l2: float = setting(
        1e-3, "L2 penalty l2/2*|W|^2 on the weight matrices in the loss (default 1e-3)",
        number(float, 0.0),
    )
    hidden: tuple[int, ...] = setting(
        (16,), "hidden layer sizes, comma-separated (default 16)", integers, "SIZES"
    )
    activation: str = setting(
        "relu", ", ".join(ACTIVATIONS) + " (default relu)", choice(ACTIVATIONS, "activation"),
        "NAME",
    )
    init: str = setting(
        "torch", "initialisation: " + ", ".join(INITS) + " (default torch, nn.Linear's)",
        choice(INITS, "init"), "NAME",
    )
    seed: int = setting(
        0, "seed of the initialisation and the shuffling", number(int, 0, maximum=SEED_MAX)
    )
    split_seed: int = setting(0, "seed of the train/test split", number(int, 0, maximum=SEED_MAX))
    test_size: float = setting(
        0.2, "fraction of rows held out for testing (default 0.2)", number(float, 0.0, True)
    )
    devices: int = setting(
        1, "devices to train on, each batch split over them (data parallel; on a CPU, that many "
        "host devices are made); default 1", number(int, 0, True, maximum=DEVICES_MAX),
    )
    fsdp: bool = setting(
        False, "with --devices: shard the parameters and the optimizer state over the devices "
        "too (fully sharded, ZeRO-3)",
    )

    prune: str = setting(
        "none", "prune the weight matrices by magnitude while training: l1 (one ranking over "
        "all of them), l1-layer (each on its own) or none", choice(PRUNE_METHODS, "pruning"),
        "NAME",
    )
    sparsity: float | None = setting(
        None, "fraction of the weight matrices pruned (default 0.5 with --prune)",
        number(float, 0.0, maximum=1.0),
    )
    prune_schedule: str = setting(
        "oneshot", "oneshot: prune halfway through the epochs, then fine-tune; gradual: Zhu & "
        "Gupta's cubic ramp, once per epoch over the middle half", choice(PRUNE_SCHEDULES,
        "prune schedule"), "NAME",
    )
    quantize: str = setting(
        "none", "after training, quantize the Linear layers as torch's quantize_dynamic: int8 "
        "or none", choice(QUANTIZE, "quantization"), "NAME",
    )

    def check(self) -> None:
        """The checks between fields (each field's own are its parser's): ``ValueError``."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(suggest(self.optimizer, OPTIMIZERS, "optimizer"))
        if self.schedule not in SCHEDULES:
            raise ValueError(suggest(self.schedule, SCHEDULES, "schedule"))
        if self.activation not in ACTIVATIONS:
            raise ValueError(suggest(self.activation, ACTIVATIONS, "activation"))
        if self.init not in INITS:
            raise ValueError(suggest(self.init, INITS, "init"))
        if self.weight_decay is not None and WEIGHT_DECAY[self.optimizer] is None:
            raise ValueError(f"{self.optimizer} takes no weight_decay")
        if self.schedule == "plateau" and self.gamma is not None and self.gamma >= 1:
            raise ValueError(f"gamma of the plateau schedule must be below 1, got {self.gamma}")
        for name, used_by in (("gamma", ("step", "multistep", "exponential", "plateau")),
                              ("step_size", ("step",)), ("milestones", ("multistep",))):
            if getattr(self, name) is not None and self.schedule not in used_by:
                raise ValueError(
                    f"{name} is used by the {' and '.join(used_by)} schedule"
                    f"{'s' if len(used_by) > 1 else ''} only, not by {self.schedule!r}"
                )
        if self.fsdp and self.devices == 1:
            raise ValueError("--fsdp shards over several devices: give --devices N")
        if self.batch_size % self.devices:
            raise ValueError(
                f"batch size {self.batch_size} does not split over {self.devices} devices: use "
                f"a multiple of {self.devices}"
            )
        for name, default in (("sparsity", None), ("prune_schedule", "oneshot")):
            if self.prune == "none" and getattr(self, name) != default:
                raise ValueError(f"{name} is used by --prune only")
        if self.milestones is not None and max(self.milestones) > self.epochs:
            raise ValueError(
                f"milestones {list(self.milestones)} go beyond the {self.epochs} epochs"
            )

    def resolved(self) -> RunConfig:
        """The same run with every default spelled out: the recipe's learning rate, torch's
        weight decay, the schedule's ``gamma``, ``step_size`` and ``milestones`` (``step``
        divides by 10 every ``epochs // 3`` epochs, ``multistep`` at 50% and 75% of them,
        ``exponential`` by 0.95 per epoch)."""
        gamma = self.gamma
        if gamma is None and self.schedule in ("step", "multistep", "plateau"):
            gamma = 0.1
        if gamma is None and self.schedule == "exponential":
            gamma = 0.95
        step_size = self.step_size
        if self.schedule == "step" and step_size is None:
            step_size = max(1, self.epochs // 3)
        milestones = self.milestones
        if self.schedule == "multistep" and milestones is None:
            milestones = (max(1, self.epochs // 2), max(1, 3 * self.epochs // 4))
        sparsity = self.sparsity
        if self.prune != "none" and sparsity is None:
            sparsity = 0.5
        return dataclasses.replace(self, lr=self.base_lr, weight_decay=self.decay, gamma=gamma,
                                   step_size=step_size, milestones=milestones, sparsity=sparsity)

    def resume_record(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed by this run: the resolved values
        (``--lr 0.01`` for Adam is the default spelled out), and the number of epochs only
        where the schedule depends on it (cosine, onecycle): other runs may be extended. The
        devices it runs on are left out: a run resumes on another mesh."""
        record = self.resolved().as_record()
        if self.schedule in HORIZON_FREE and self.prune == "none":  # pruning counts epochs
            del record["epochs"]
        for placement in PLACEMENT:  # where it runs is not what it computes
            del record[placement]
        return record

    @property
    def base_lr(self) -> float:
        """The learning rate the run starts from: ``lr``, else the recipe's."""
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def decay(self) -> float | None:
        """The weight decay the run uses: ``weight_decay``, else torch's default for the
        optimizer (``None`` for one that takes none)."""
        return WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay

    def as_record(self) -> dict[str, Any]:
        """JSON-ready: what a checkpoint must agree with to be resumed."""
        record = dataclasses.asdict(self)
        for key in ("hidden", "milestones"):
            if record[key] is not None:
                record[key] = list(record[key])
        return record
