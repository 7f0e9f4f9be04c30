"""Figures of runs with matplotlib's Agg canvas (no display, no pyplot global state).

The format follows the file's suffix (``.png``, ``.pdf``, ``.svg``). Errors writing the file
are ``OSError``s, raised before anything is left half-written under the requested name: the
figure is rendered to a temporary file in the same directory, then renamed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMATS", "check_writable", "plot_compare", "plot_history", "plot_sweep"]

FORMATS = (".png", ".pdf", ".svg")


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Raise ``OSError`` (one line) unless a figure can be written at ``path``.

    Checked before training, so that a bad path fails in a second, not after a run.
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise OSError(f"plot file {str(path)!r} must end in {', '.join(FORMATS)}")
    if path.is_dir():
        raise OSError(f"plot path {str(path)!r} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OSError(f"cannot write plot {str(path)!r}: {str(parent)!r} is not a directory")
    if not parent.is_dir():
        raise OSError(f"cannot write plot {str(path)!r}: directory {str(parent)!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".jopt-plot-", delete=True):
            pass
    except OSError as e:
        raise OSError(f"cannot write plot {str(path)!r}: {e.strerror or e}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise OSError(f"cannot write plot {str(path)!r}: permission denied")
    return path


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".",
                               prefix=".jopt-plot-", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".").lower())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary name only
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plot_history(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Loss, accuracy and learning rate of one run against the epoch."""
    return plot_compare({title or "run": history}, path, with_lr=True, title=title)


def plot_compare(
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    with_lr: bool = False,
    title: str = "",
) -> Path:
    """The curves of several runs on one figure: train/test loss, test accuracy (and lr)."""
    panels = ["loss", "accuracy"] + (["lr"] if with_lr else [])
    fig, axes = _figure(1, len(panels), 5.0 * len(panels), 4.0)
    ax_loss, ax_acc = axes[0][0], axes[0][1]
    single = len(histories) == 1
    for i, (name, h) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = np.arange(1, len(h["train_loss"]) + 1)
        label = "" if single else f"{name} "
        ax_loss.plot(epochs, h["train_loss"], color=color, label=f"{label}train")
        ax_loss.plot(epochs, h["test_loss"], color=color, ls="--", label=f"{label}test")
        if single:
            ax_acc.plot(epochs, h["train_accuracy"], color="C1", label="train")
        ax_acc.plot(epochs, h["test_accuracy"], color=color, label=f"{label}test")
        if with_lr:
            axes[0][2].plot(epochs, h["lr"], color=color)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    ax_loss.legend(fontsize="small")
    ax_acc.legend(fontsize="small", loc="lower right")
    if with_lr:
        axes[0][2].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_sweep(
    lrs: Sequence[float],
    test_accuracy: Sequence[float],
    test_loss: Sequence[float],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Final test accuracy and test loss against the learning rate (log scale)."""
    fig, axes = _figure(1, 2, 10.0, 4.0)
    order = np.argsort(lrs)
    lrs, acc, loss = (np.asarray(a)[order] for a in (lrs, test_accuracy, test_loss))
    axes[0][0].plot(lrs, acc, marker=".", lw=1)
    axes[0][0].set(xscale="log", xlabel="learning rate", ylabel="test accuracy", ylim=(0, 1.02))
    axes[0][1].plot(lrs, np.where(np.isfinite(loss), loss, np.nan), marker=".", lw=1)
    axes[0][1].set(xscale="log", yscale="log", xlabel="learning rate", ylabel="test loss")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
