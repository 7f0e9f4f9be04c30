"""The recipe's names: optimizers, schedules, activations, initialisations and metrics.

This module imports nothing but the standard library, so that the command line can check its
input and print its help without loading JAX. The objects the names stand for live with the
code that builds them (:mod:`jopt.train.recipes`, :mod:`jopt.train.model`); tests check that
both sides list the same names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_LR",
    "INITS",
    "METRICS",
    "OPTIMIZERS",
    "PRUNE_METHODS",
    "PRUNE_SCHEDULES",
    "QUANTIZE",
    "SCHEDULES",
    "WEIGHT_DECAY",
    "suggest",
]

DEFAULT_LR: dict[str, float] = {
    "sgd": 0.1,
    "momentum": 0.05,
    "rmsprop": 0.01,
    "adam": 0.01,
    "adamw": 0.01,
    "adagrad": 0.1,
    "adadelta": 1.0,
    "adamax": 0.02,
    "nadam": 0.01,
    "radam": 0.01,
    "rprop": 0.1,
    "asgd": 0.1,
    "adafactor": 0.01,
    "muon": 0.02,
    "sparse_adam": 0.01,
}
"""Per optimizer, a learning rate that trains the 4-16-3 MLP on Iris well in 100 epochs of batch
16 (torch's defaults, 1e-3 for SGD and Adam, are tuned for other problems)."""

OPTIMIZERS: tuple[str, ...] = tuple(DEFAULT_LR)

WEIGHT_DECAY: dict[str, float | None] = {
    **dict.fromkeys(OPTIMIZERS, 0.0),
    "adamw": 1e-2,
    "muon": 0.1,
    "rprop": None,
    "sparse_adam": None,
}
"""torch's default ``weight_decay`` per optimizer; ``None`` where the optimizer takes none."""

SCHEDULES: tuple[str, ...] = (
    "none",
    "step",
    "multistep",
    "exponential",
    "cosine",
    "onecycle",
    "plateau",
    "inverse-sqrt",
)

ACTIVATIONS: tuple[str, ...] = (
    "relu", "tanh", "sigmoid", "gelu", "silu", "elu", "leaky_relu"
)

INITS: tuple[str, ...] = (
    "torch", "lecun_normal", "xavier_uniform", "xavier_normal", "kaiming_uniform",
    "kaiming_normal",
)

PRUNE_METHODS: tuple[str, ...] = ("none", "l1", "l1-layer")
PRUNE_SCHEDULES: tuple[str, ...] = ("oneshot", "gradual")
QUANTIZE: tuple[str, ...] = ("none", "int8")

METRICS: tuple[str, ...] = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr")
"""The per-epoch history: mean training cross-entropy over the epoch's batches (what a torch
script's running loss reports), training accuracy over the same batches, cross-entropy and
accuracy on the test set after the epoch, and the learning rate of the epoch's last step."""


def suggest(name: str, choices: Iterable[str], what: str) -> str:
    """``unknown optimizer 'adm' (did you mean 'adam'?); choose from sgd, ...``."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; choose from {', '.join(choices)}"
