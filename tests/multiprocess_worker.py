"""One of several processes of an Iris run (``test_sharding.py`` starts them), or a process of
its own: ``python multiprocess_worker.py --process-id I --processes N --port P --optimizer NAME``
joins the run on the loopback coordinator (with N > 1), then

- ``--fit``: trains 13 epochs data parallel over every process's devices (``jopt.train.fit``);
- ``--checkpoint-dir DIR``: runs ``jopt train``'s run (``runner.run``, cosine over 4 epochs,
  ``--fsdp`` to shard the parameters and state) with a checkpoint every epoch, stopped after
  epoch 3 as an interruption would stop it; then the same processes resume a copy of DIR whose
  newest checkpoint has a damaged shard (all of them fall back to the same older one);
- ``--checkpoint-dir DIR --resume``: resumes DIR and finishes the run;

and prints what it got as one JSON line after ``RESULT``: losses, histories, final parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--process-id", type=int, default=0)
parser.add_argument("--processes", type=int, default=1)
parser.add_argument("--port", default=None)
parser.add_argument("--local-devices", type=int, default=4)
parser.add_argument("--optimizer", default="adam")
parser.add_argument("--fit", action="store_true")
parser.add_argument("--checkpoint-dir", default=None)
parser.add_argument("--fsdp", action="store_true")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"

import jax  # noqa: E402
import numpy as np  # noqa: E402

if args.processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.processes,
                               process_id=args.process_id, initialization_timeout=120)

from flax import nnx  # noqa: E402

import jopt  # noqa: E402
from jopt.train import MLP, Placement, fit, load_iris, make_mesh  # noqa: E402
from jopt.train.checkpoint import Checkpoints  # noqa: E402
from jopt.train.runner import RunConfig, Session  # noqa: E402

EPOCHS, STOP = 4, 3
assert jax.local_device_count() == args.local_devices
assert jax.device_count() == args.local_devices * args.processes


def whole(tree):
    """Every array of ``tree`` whole on this process, as a NumPy array."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def report(result) -> dict:
    return {
        "resumed_from": result.resumed_from,
        "checkpoints": result.checkpoints,
        "notes": result.notes,
        "history": {k: np.asarray(v).tolist() for k, v in result.history.items()},
        "params": [np.ravel(p).tolist() for p in jax.tree.leaves(whole(result.params))],
    }


def damage_newest_shard(directory: Path) -> None:
    """Overwrite a file the last process wrote in the newest checkpoint's arrays."""
    newest = max(directory.glob("epoch_*"), key=lambda p: int(p.name.removeprefix("epoch_")))
    shard = newest / "state" / f"ocdbt.process_{args.processes - 1}"
    victim = next(p for p in sorted(shard.rglob("*")) if p.is_file() and p.stat().st_size)
    victim.write_bytes(b"\0garbage" * 8)


out: dict = {"process": jax.process_index()}
if args.fit:
    model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))
    result = fit(model, getattr(jopt, args.optimizer)(lr=0.01), load_iris(), epochs=13,
                 batch_size=16, placement=Placement(make_mesh()))
    out["fit_loss"] = [float(v) for v in result.history["train_loss"]]
if args.checkpoint_dir is not None:
    config = RunConfig(optimizer=args.optimizer, epochs=EPOCHS, schedule="cosine",
                       devices=jax.device_count(), fsdp=args.fsdp)
    session = Session()

    def run(directory: str, **kwargs) -> dict:
        return report(session.run(config, checkpoints=Checkpoints(directory, keep=2),
                                  checkpoint_every=1, **kwargs))

    if args.resume:
        out["resumed"] = run(args.checkpoint_dir, resume=True)
    else:
        out["stopped"] = run(args.checkpoint_dir, stop_after=STOP)
        again = Path(args.checkpoint_dir + "-again")
        if jax.process_index() == 0:
            shutil.copytree(args.checkpoint_dir, again)
            damage_newest_shard(again)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("the copy is ready")
        out["again"] = run(str(again), resume=True)
print("RESULT " + json.dumps(out), flush=True)
