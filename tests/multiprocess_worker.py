"""One of several processes of a data-parallel Iris run (``test_sharding.py`` starts them):
``python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OPTIMIZER`` joins the run on
the loopback coordinator, trains over every process's devices and prints its losses as JSON."""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

process_id, processes, port, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=processes, process_id=process_id)

from flax import nnx  # noqa: E402

import jopt  # noqa: E402
from jopt.train import MLP, Placement, fit, load_iris, make_mesh  # noqa: E402

assert jax.device_count() == 4 * processes and jax.local_device_count() == 4
model = MLP(4, (16,), 3, rngs=nnx.Rngs(0))
result = fit(model, getattr(jopt, name)(lr=0.01), load_iris(), epochs=13, batch_size=16,
             placement=Placement(make_mesh()))
losses = [float(v) for v in result.history["train_loss"]]
print("RESULT " + json.dumps({"process": process_id, "train_loss": losses}), flush=True)
