"""Learn the learning rate and weight decay of the Iris MLP by gradient descent.

The meta-objective is the cross-entropy on held-out validation rows after a whole training
run. The run (SGD with momentum on mini-batches) is one ``jopt.unroll``, an ordinary JAX
function of the hyperparameters, so ``jax.grad`` differentiates the validation loss through
every step of it back to ``lr`` and ``weight_decay``; ``unroll`` rematerialises in blocks of
sqrt(T) steps, so memory stays small. Then a meta-optimizer (Adam, itself a jopt optimizer)
descends that gradient. The hyperparameters live in log space, so they stay positive and a
meta-step changes them by a factor rather than an amount.

The data: Iris's 120 training rows are split into 90 for training and 30 for validation; the
30 test rows are never seen by the meta-objective. The learned hyperparameters are finally used
by ``jopt.train.fit`` on all 120 training rows, and only that run is scored on the test set.

    python examples/learn_hyperparameters.py            # about 15 seconds on 2 CPU cores
    python examples/learn_hyperparameters.py --quick    # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jopt
from jopt.train import MLP, fit, load_iris
from jopt.train.model import apply, cross_entropy, split_params


def main(
    epochs: int = 40,
    meta_steps: int = 40,
    meta_lr: float = 0.1,
    lr: float = 0.01,
    weight_decay: float = 1e-2,
    momentum: float = 0.9,
    batch_size: int = 16,
    val_size: int = 30,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Learn ``lr`` and ``weight_decay`` from the given starting values; returns what it found
    (``meta_losses[i]`` is the validation loss before meta-step ``i``, the last one after all)."""
    say = print if verbose else (lambda *a, **k: None)

    # ---- data: train / validation split of Iris's training rows (the test rows stay out) ----
    data = load_iris()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.x_train))
    val_rows, train_rows = order[:val_size], order[val_size:]
    x_tr, y_tr = jnp.asarray(data.x_train[train_rows]), jnp.asarray(data.y_train[train_rows])
    x_val, y_val = jnp.asarray(data.x_train[val_rows]), jnp.asarray(data.y_train[val_rows])

    # The mini-batches of the inner run: each epoch a fresh permutation of the training rows,
    # cut into full batches. They are fixed, so the meta-objective is a smooth function of the
    # hyperparameters rather than a new random draw at every meta-step.
    per_epoch = len(train_rows) // batch_size
    batches = jnp.asarray(np.concatenate([
        rng.permutation(len(train_rows))[: per_epoch * batch_size].reshape(per_epoch, batch_size)
        for _ in range(epochs)
    ]))
    steps = len(batches)

    # ---- model: the recipe's 4-16-3 MLP as a pure function of its parameters ----
    graphdef, params0 = split_params(MLP(4, (16,), 3, rngs=nnx.Rngs(seed)))

    def train_loss(params: Any, rows: jax.Array) -> jax.Array:
        return cross_entropy(apply(graphdef, params, x_tr[rows]), y_tr[rows])

    def val_loss(params: Any) -> jax.Array:
        return cross_entropy(apply(graphdef, params, x_val), y_val)

    # ---- the meta-objective: validation loss after `steps` steps of SGD ----
    def meta_objective(log_hp: dict[str, jax.Array]) -> jax.Array:
        opt = jopt.sgd(lr=jnp.exp(log_hp["lr"]), momentum=momentum,
                       weight_decay=jnp.exp(log_hp["weight_decay"]))
        run = jopt.unroll(opt, train_loss, params0, steps, batches=batches)
        return val_loss(run.params)

    meta_opt = jopt.adam(lr=meta_lr)

    @jax.jit
    def meta_step(log_hp: Any, meta_state: Any) -> tuple[Any, Any, jax.Array]:
        value, grads = jax.value_and_grad(meta_objective)(log_hp)
        updates, meta_state = meta_opt.update(grads, meta_state, log_hp)
        return jopt.apply_updates(log_hp, updates), meta_state, value

    # ---- the meta-loop ----
    log_hp = {"lr": jnp.log(jnp.float32(lr)), "weight_decay": jnp.log(jnp.float32(weight_decay))}
    meta_state = meta_opt.init(log_hp)
    say(f"{steps} SGD steps per run ({epochs} epochs of {per_epoch} batches of {batch_size}), "
        f"{len(train_rows)} training and {len(val_rows)} validation rows")
    meta_losses = []
    start = time.perf_counter()
    for i in range(meta_steps):
        hp_now = {k: float(jnp.exp(v)) for k, v in log_hp.items()}
        log_hp, meta_state, value = meta_step(log_hp, meta_state)
        meta_losses.append(float(value))
        if i % max(1, meta_steps // 10) == 0:
            say(f"meta-step {i:3d}: val loss {float(value):.4f}  lr {hp_now['lr']:.4g}  "
                f"weight_decay {hp_now['weight_decay']:.3g}")
    _, _, final = meta_step(log_hp, meta_state)  # the loss at the learned values; step unused
    meta_losses.append(float(final))
    learned = {k: float(jnp.exp(v)) for k, v in log_hp.items()}
    say(f"{meta_steps} meta-steps in {time.perf_counter() - start:.1f} s")
    say(f"learned lr {learned['lr']:.4g} (from {lr:g}), weight_decay "
        f"{learned['weight_decay']:.4g} (from {weight_decay:g})")
    say(f"validation loss {meta_losses[0]:.4f} -> {meta_losses[-1]:.4f}")

    # ---- score: train on all 120 training rows for as many epochs, test once ----
    def score(hp: dict[str, float]) -> tuple[float, float]:
        model = MLP(4, (16,), 3, rngs=nnx.Rngs(seed))
        opt = jopt.sgd(lr=hp["lr"], momentum=momentum, weight_decay=hp["weight_decay"])
        result = fit(model, opt, data, epochs=epochs, batch_size=batch_size, seed=seed)
        return result.final("test_accuracy"), result.final("test_loss")

    before, after = score({"lr": lr, "weight_decay": weight_decay}), score(learned)
    say(f"jopt.train.fit on all training rows, then the test set: accuracy {before[0]:.3f}, "
        f"loss {before[1]:.4f} with the starting hyperparameters; accuracy {after[0]:.3f}, "
        f"loss {after[1]:.4f} with the learned ones")
    return {
        "learned": learned,
        "initial": {"lr": lr, "weight_decay": weight_decay},
        "meta_losses": meta_losses,
        "test_accuracy_initial": before[0],
        "test_loss_initial": before[1],
        "test_accuracy_learned": after[0],
        "test_loss_learned": after[1],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--meta-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quick = {"epochs": 5, "meta_steps": 5} if args.quick else {}
    if args.epochs is not None:
        quick["epochs"] = args.epochs
    if args.meta_steps is not None:
        quick["meta_steps"] = args.meta_steps
    main(seed=args.seed, **quick)
