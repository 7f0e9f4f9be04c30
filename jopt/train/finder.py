"""The learning-rate finder: Leslie Smith's range test, and a vmapped grid of short runs.

``method="range"`` (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; the
fastai/PyTorch-Lightning ``lr_find``): one run whose rate grows exponentially from ``lr_min`` to
``lr_max`` over ``steps`` mini-batch steps, ``lr_t = lr_min * (lr_max / lr_min) ** (t / (steps
- 1))``. The training loss of each step is smoothed by a bias-corrected exponential average,
``a_t = s a_{t-1} + (1 - s) loss_t``, ``smoothed_t = a_t / (1 - s ** (t + 1))``, and the test
stops at divergence: the first step whose smoothed loss is above ``diverge`` times the lowest
so far, or not finite. The whole run is one ``lax.scan`` (the steps after the divergence are
computed and discarded).

``method="vmap"``: ``runs`` rates, log-spaced over the same range, each trained for ``steps``
steps at a constant rate from the same initialisation on the same batches, ``vmap``-ed into one
compiled program; the loss of a rate is the mean training loss of its last ``steps // 10``
steps (at least one). The grid is cut at divergence the same way, with no smoothing (each point
is already an average).

Suggestions, from the kept points: ``steepest``, the rate where the (smoothed) loss falls
fastest against ``log lr`` (``numpy.gradient``'s central differences, fastai's "steep";
the range test's first ``min(10, kept // 10)`` points and its last are left out), and
``min_over_10``, a tenth of the rate of the lowest loss. ``suggestion`` is ``steepest``.
torch has no finder; PyTorch Lightning's ``Tuner.lr_find`` is the range test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jopt.core import GradientTransformation, apply_updates, inject_hyperparams
from jopt.train.data import Dataset, batch_indices, epoch_key, num_batches, shuffle_key
from jopt.train.model import MLPFactory, apply, cross_entropy, l2_penalty
from jopt.train.steps import init_model
from jopt.unrolled import unroll

__all__ = ["LrFindResult", "lr_find", "plot_lr_find", "smooth", "suggest"]


class LrFindResult(NamedTuple):
    """What :func:`lr_find` found. ``lrs``, ``losses`` and ``smoothed`` cover every step (range)
    or every rate (vmap); ``kept`` is how many lead up to the divergence (all when none)."""

    method: str
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    kept: int
    steepest: float
    min_over_10: float

    @property
    def suggestion(self) -> float:
        """The suggested rate: :attr:`steepest`."""
        return self.steepest

    @property
    def diverged(self) -> bool:
        return self.kept < len(self.lrs)


def smooth(losses: np.ndarray, smoothing: float) -> np.ndarray:
    """The bias-corrected exponential average ``a_t / (1 - s ** (t + 1))`` of ``losses``."""
    out = np.empty(len(losses))
    avg = 0.0
    for t, loss in enumerate(np.asarray(losses, np.float64)):
        avg = smoothing * avg + (1 - smoothing) * loss
        out[t] = avg / (1 - smoothing ** (t + 1))
    return out


def kept_until_divergence(smoothed: np.ndarray, diverge: float) -> int:
    """How many points come before the first one above ``diverge`` times the lowest so far (or
    not finite)."""
    best = math.inf
    for t, value in enumerate(smoothed):
        if not math.isfinite(value) or (t > 0 and value > diverge * best):
            return t
        best = min(best, value)
    return len(smoothed)


def suggest(
    lrs: np.ndarray, losses: np.ndarray, skip_begin: int = 0, skip_end: int = 0
) -> tuple[float, float]:
    """``(steepest, min_over_10)`` of a loss curve over log-spaced rates: the rate where
    ``d loss / d log lr`` is lowest (central differences inside, one-sided at the ends), and a
    tenth of the rate of the lowest loss; the steepest is looked for between the first
    ``skip_begin`` and the last ``skip_end`` points (where there are more than that). ``nan``
    for an empty curve; a curve of one point suggests its own rate as the steepest."""
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    if len(lrs) == 0:
        return math.nan, math.nan
    low = float(lrs[int(np.argmin(losses))]) / 10
    if len(lrs) == 1:
        return float(lrs[0]), low
    slope = np.gradient(losses, np.log(lrs))
    if len(lrs) > skip_begin + skip_end:
        window = slope[skip_begin : len(lrs) - skip_end]
        return float(lrs[skip_begin + int(np.argmin(window))]), low
    return float(lrs[int(np.argmin(slope))]), low


def _problem(
    data: Dataset, model_fn: Callable[[nnx.Rngs], nnx.Module] | None, seed: int, l2: float
) -> tuple[Any, Callable[[Any, jax.Array], jax.Array]]:
    model_fn = model_fn or MLPFactory(data.num_features, (16,), data.num_classes)
    graphdef, params = init_model(model_fn, seed)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def loss(p: Any, rows: jax.Array) -> jax.Array:
        value = cross_entropy(apply(graphdef, p, x[rows]), y[rows])
        return value + l2 * l2_penalty(p) if l2 else value

    return params, loss


def _batches(n: int, batch_size: int, steps: int, seed: int) -> jax.Array:
    """Row indices ``(steps, batch_size)``: shuffled epochs of full batches, one after another."""
    per_epoch = num_batches(n, batch_size, drop_last=True)
    key = shuffle_key(seed)
    epochs = -(-steps // per_epoch)
    rows = [batch_indices(epoch_key(key, e), n, batch_size, drop_last=True)[0]
            for e in range(epochs)]
    return jnp.concatenate(rows)[:steps]


def lr_find(
    optimizer: Callable[..., GradientTransformation],
    data: Dataset,
    *,
    lr_min: float = 1e-6,
    lr_max: float = 10.0,
    steps: int = 100,
    method: Literal["range", "vmap"] = "range",
    runs: int = 32,
    batch_size: int = 16,
    model_fn: Callable[[nnx.Rngs], nnx.Module] | None = None,
    seed: int = 0,
    l2: float = 0.0,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    **optimizer_kwargs: Any,
) -> LrFindResult:
    """Find a learning rate for ``optimizer`` (a factory taking ``lr``: ``jopt.adam``) on
    ``data``'s training rows; see the module docstring for the two methods and the suggestions.

    ``optimizer_kwargs`` are the factory's other arguments (``momentum=0.9``); ``model_fn``
    builds the model (default: the 16-unit MLP of the Iris recipe), initialised from ``seed``,
    which also shuffles the batches; ``l2`` adds ``l2 * l2_penalty`` to the loss. PyTorch
    Lightning: ``Tuner(trainer).lr_find(model, min_lr, max_lr, num_training,
    early_stop_threshold)``.
    """
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got lr_min={lr_min}, lr_max={lr_max}")
    if steps < 2 or (method == "vmap" and runs < 2):
        raise ValueError("lr_find needs at least 2 steps (and, with method='vmap', 2 runs)")
    if method not in ("range", "vmap"):
        raise ValueError(f"method must be 'range' or 'vmap', got {method!r}")
    n = len(data.x_train)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be 1..{n} (the training rows), got {batch_size}")
    params, loss = _problem(data, model_fn, seed, l2)
    rows = _batches(n, batch_size, steps, seed)
    if method == "range":
        lrs = np.geomspace(lr_min, lr_max, steps)
        losses = np.asarray(_range_test(optimizer, optimizer_kwargs, params, loss, rows, lrs))
        smoothed = smooth(losses, smoothing)
    else:
        lrs = np.geomspace(lr_min, lr_max, runs)
        losses = np.asarray(_grid(optimizer, optimizer_kwargs, params, loss, rows, lrs))
        smoothed = losses.astype(np.float64)
    kept = kept_until_divergence(smoothed, diverge)
    # The range test's first points are the average warming up, its last the climb to the
    # divergence: the steepest is looked for between them (PyTorch Lightning skips 10 and 1).
    skip = (min(10, kept // 10), 1) if method == "range" else (0, 0)
    steepest, low = suggest(lrs[:kept], smoothed[:kept], *skip)
    return LrFindResult(method, lrs, losses, smoothed, kept, steepest, low)


def _range_test(
    factory: Callable[..., GradientTransformation],
    kwargs: dict[str, Any],
    params: Any,
    loss: Callable[[Any, jax.Array], jax.Array],
    rows: jax.Array,
    lrs: np.ndarray,
) -> jax.Array:
    """The training loss of each step of one run whose rate at step ``t`` is ``lrs[t]``."""
    opt = inject_hyperparams(factory)(lr=float(lrs[0]), **kwargs)

    @jax.jit
    def run(params: Any, rows: jax.Array, lrs: jax.Array) -> jax.Array:
        def at(state: Any, lr: jax.Array) -> Any:
            return state._replace(hyperparams={**state.hyperparams, "lr": lr})

        def step(carry: tuple[Any, Any], inputs: tuple[jax.Array, jax.Array]) -> Any:
            p, state = carry
            batch, lr = inputs
            value, grads = jax.value_and_grad(loss)(p, batch)
            updates, state = opt.update(grads, at(state, lr), p)
            return (apply_updates(p, updates), state), value

        start = (params, at(opt.init(params), lrs[0]))
        _, losses = jax.lax.scan(step, start, (rows, lrs))
        return losses

    return run(params, rows, jnp.asarray(lrs))


def _grid(
    factory: Callable[..., GradientTransformation],
    kwargs: dict[str, Any],
    params: Any,
    loss: Callable[[Any, jax.Array], jax.Array],
    rows: jax.Array,
    lrs: np.ndarray,
) -> jax.Array:
    """For each rate, the mean training loss of the last ``steps // 10`` steps at that rate."""
    last = max(1, len(rows) // 10)

    @jax.jit
    def run(params: Any, rows: jax.Array, lrs: jax.Array) -> jax.Array:
        def one(lr: jax.Array) -> jax.Array:
            opt = factory(lr=lr, **kwargs)
            losses = unroll(opt, loss, params, len(rows), batches=rows, remat=None).losses
            return jnp.mean(losses[-last:])

        return jax.vmap(one)(lrs)

    return run(params, rows, jnp.asarray(lrs))


def plot_lr_find(result: LrFindResult, path: str | Path, title: str = "") -> Path:
    """The loss against the learning rate on a log axis, the divergence cut and both
    suggestions marked; the format follows the suffix (``.png``, ``.pdf``, ``.svg``)."""
    from jopt.train.plots import _figure, _save

    fig, axes = _figure(1, 1, 6.0, 4.0)
    ax = axes[0][0]
    kept = result.kept
    if result.method == "range":
        ax.plot(result.lrs, result.losses, color="C0", alpha=0.3, label="loss")
        ax.plot(result.lrs[:kept], result.smoothed[:kept], color="C0", label="smoothed")
    else:
        ax.plot(result.lrs[:kept], result.losses[:kept], "o-", color="C0", label="loss")
    for value, name, color in ((result.steepest, "steepest", "C3"),
                               (result.min_over_10, "min / 10", "C2")):
        if math.isfinite(value):
            ax.axvline(value, color=color, ls="--", label=f"{name}: {value:.3g}")
    finite = result.smoothed[:kept][np.isfinite(result.smoothed[:kept])]
    if finite.size:
        spread = float(finite.max() - finite.min()) or 1.0
        ax.set_ylim(float(finite.min()) - 0.1 * spread, float(finite.max()) + 0.1 * spread)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title=title or f"learning-rate finder ({result.method})")
    ax.legend(fontsize="small")
    return _save(fig, path)
