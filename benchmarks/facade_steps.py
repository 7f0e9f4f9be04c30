"""The facade's ways of stepping, per step, against optax and torch.optim: Adam, float32.

Every contender trains the same case with Adam (lr 1e-3) from the same start, in this process,
interleaved:

- ``optax``: the usual optax train step, ``jax.value_and_grad`` + ``optax.adam`` update +
  ``optax.apply_updates`` in one jitted call, params, state and model state donated;
- ``facade step(loss_fn)``: ``opt = jopt.optim.Adam(params); opt.step(loss_fn, *batch)``;
- ``facade backward+step``: ``opt.zero_grad(); opt.backward(loss_fn, *batch); opt.step()``;
- ``facade step(grads)``: ``opt.step(grads)`` with ``grads`` from a jitted
  ``jax.value_and_grad(loss_fn)`` of ``opt.params``;
- ``facade nnx module``: the model as an ``nnx.Module`` given to the facade,
  ``opt = jopt.optim.Adam(model); opt.step(loss_fn, *batch)`` with ``loss_fn(model, *batch)``;
- ``torch foreach`` / ``torch fused``: ``torch.optim.Adam(..., foreach=True | fused=True)``
  driven by ``opt.zero_grad(); loss.backward(); opt.step()``, the same model written in torch.

Cases: ``L leaves``, 300K float32 parameters split evenly into L leaves (10 to 1,000; ``--leaves
3000`` for more) and the loss ``sum_i mean(tanh(x * p_i) ** 2)``, which touches every leaf (the
per-leaf cost of a step, with little else); and three real shapes: the Iris MLP
(``jopt.train.MLP`` 4-16-3, batch 16), a small CNN (two 3x3 convolutions, BatchNorm, a linear
layer; 28x28x1 batches of 32) and a 2-layer GPT (n_embd 64, 4 heads, block 32, vocab 65, batch
8). The tree contenders carry a model's non-parameter state (BatchNorm statistics) through the
loss as ``has_aux``; the module contender leaves that to the facade, which writes it back into
the module.

A timed call is a burst of K steps (K per contender, so that a burst lasts about 0.1 s) over a
few batches in turn, ended by ``block_until_ready`` on what the last step returned and on the
parameters as the user reads them (torch: ``cuda.synchronize`` on a GPU); figures are per step,
the median burst / K. "compile s" is a contender's first step (trace, lower, compile, run)
minus its steady step, with the persistent compilation cache off. Every facade contender's
``opt.compile_count`` is recorded after its first step and at the end: a path that recompiles
shows there. The first loss of every contender is recorded too: all start from the same
parameters, so the JAX contenders (and torch, on the leaf cases) agree on it.

Run: ``python benchmarks/facade_steps.py`` (``--quick`` for a tiny smoke run).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

import jax
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from facade_cases import Case, make_case  # noqa: E402

import jopt.optim  # noqa: E402

LR = 1e-3
# 3,000 leaves is one --leaves away; on a 2-core CPU optax's step alone then takes ~19 minutes
# to compile (1,000 leaves: ~1 minute), so it is not in a default run.
LEAVES, QUICK_LEAVES = [10, 100, 300, 1000], [3, 30]
MODELS = ["iris", "cnn", "gpt"]
FACADE = ["facade step(loss_fn)", "facade backward+step", "facade step(grads)", "facade nnx module"]
TORCH = ["torch foreach", "torch fused"]
CONTENDERS = ["optax", *FACADE, *TORCH]
BURST_S, MAX_BURST = 0.1, 200


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


class Contender:
    """One way of training a case. ``step(batch)`` runs one step and returns what to wait on;
    a call runs a burst of ``self.k`` steps and waits for the last."""

    k = 1

    def __init__(self, case: Case, batches: list[tuple[Any, ...]]) -> None:
        self.batches, self.i = batches, 0
        self.loss: Any = None

    def next_batch(self) -> tuple[Any, ...]:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch

    def step(self, batch: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    def wait(self, out: Any) -> None:
        jax.block_until_ready(out)

    def __call__(self) -> None:
        out = None
        for _ in range(self.k):
            out = self.step(self.next_batch())
        self.wait(out)

    def first(self) -> float:
        """Seconds of the first step (compiles); records its loss."""
        start = time.perf_counter()
        self.wait(self.step(self.next_batch()))
        seconds = time.perf_counter() - start
        loss = self.loss.detach() if hasattr(self.loss, "detach") else self.loss
        self.first_loss = float(loss)
        return seconds

    def compile_count(self) -> int | None:
        return None


class Optax(Contender):
    """``value_and_grad`` + ``optax.adam`` + ``apply_updates``, jitted, buffers donated."""

    def __init__(self, case: Case) -> None:
        super().__init__(case, case.batches)
        self.params, self.state, loss_fn = case.tree_form()
        opt = optax.adam(LR)
        self.opt_state = opt.init(self.params)
        self.traces = 0

        def train_step(params: Any, opt_state: Any, state: Any, *batch: Any) -> Any:
            self.traces += 1
            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, *batch)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, state, loss

        self.train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))

    def step(self, batch: tuple[Any, ...]) -> Any:
        self.params, self.opt_state, self.state, self.loss = self.train_step(
            self.params, self.opt_state, self.state, *batch
        )
        return self.params, self.loss

    def compile_count(self) -> int:
        return self.traces


class FacadeTree(Contender):
    """``jopt.optim.Adam`` over the tree: ``step(loss_fn)``, ``backward+step``, ``step(grads)``."""

    def __init__(self, case: Case, path: str) -> None:
        super().__init__(case, case.batches)
        params, self.state, self.loss_fn = case.tree_form()
        self.opt = jopt.optim.Adam(params, lr=LR)
        self.path = path
        if path == "step(grads)":
            self.grad_fn = jax.jit(jax.value_and_grad(self.loss_fn, has_aux=True))

    def step(self, batch: tuple[Any, ...]) -> Any:
        opt = self.opt
        if self.path == "step(loss_fn)":
            self.loss, self.state = opt.step(self.loss_fn, self.state, *batch, has_aux=True)
        elif self.path == "backward+step":
            opt.zero_grad()
            self.loss, self.state = opt.backward(self.loss_fn, self.state, *batch, has_aux=True)
            opt.step()
        else:
            (self.loss, self.state), grads = self.grad_fn(opt.params, self.state, *batch)
            opt.step(grads)
        return self.loss

    def wait(self, out: Any) -> None:
        jax.block_until_ready((out, self.state, self.opt.params))

    def compile_count(self) -> int:
        return self.opt.compile_count


class FacadeModule(Contender):
    """``jopt.optim.Adam(model).step(loss_fn, *batch)``, ``loss_fn(model, *batch)``."""

    def __init__(self, case: Case) -> None:
        super().__init__(case, case.batches)
        self.model = case.make_module()
        self.opt = jopt.optim.Adam(self.model, lr=LR)
        self.loss_fn = case.module_loss
        self.variables: list[nnx.Variable] | None = None

    def step(self, batch: tuple[Any, ...]) -> Any:
        self.loss = self.opt.step(self.loss_fn, *batch)
        return self.loss

    def wait(self, out: Any) -> None:
        # What the user reads next: the module's parameters and its other state (read off
        # its Variables: ``nnx.state(model)`` costs more than a step at 1,000 leaves).
        if self.variables is None:
            self.variables = [
                node for _, node in nnx.iter_graph(self.model) if isinstance(node, nnx.Variable)
            ]
        jax.block_until_ready((out, [v.get_value() for v in self.variables]))

    def compile_count(self) -> int:
        return self.opt.compile_count


class Torch(Contender):
    """``torch.optim.Adam(foreach=True | fused=True)``: ``zero_grad(); backward(); step()``."""

    def __init__(self, case: Case, kind: str) -> None:
        import torch

        super().__init__(case, case.torch_batches())
        params, self.loss_fn = case.make_torch()
        self.opt = torch.optim.Adam(params, lr=LR, **{kind: True})

    def step(self, batch: tuple[Any, ...]) -> Any:
        self.opt.zero_grad()
        self.loss = self.loss_fn(*batch)
        self.loss.backward()
        self.opt.step()
        return self.loss

    def wait(self, out: Any) -> None:
        common.torch_sync()


def build(name: str, case: Case) -> Contender:
    if name == "optax":
        return Optax(case)
    if name == "facade nnx module":
        return FacadeModule(case)
    if name.startswith("facade "):
        return FacadeTree(case, name.split(" ", 1)[1])
    if name.startswith("torch "):
        return Torch(case, name.split()[1])
    raise ValueError(f"unknown contender {name!r}")


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------------------------


def run_case(case: Case, names: list[str], quick: bool) -> dict[str, Any]:
    """First step (compile) of each contender, then interleaved bursts; the JSON record."""
    params, leaves = case.sizes()
    fns: dict[str, Contender] = {}
    first: dict[str, float] = {}
    for name in names:
        if name.startswith("torch") and not have_torch():
            continue
        fns[name] = build(name, case)
        first[name] = fns[name].first()
        if not quick:
            print(f"# {case.name}, {name}: first step {first[name]:.2f} s", flush=True)
    compiles_first = {name: fn.compile_count() for name, fn in fns.items()}
    # A burst lasts ~BURST_S: K from a few single steps after a warm-up step.
    for fn in fns.values():
        fn()
        probe = common.Timing(common.time_calls(fn, 1 if quick else 3)).median
        fn.k = 1 if quick else max(1, min(MAX_BURST, round(BURST_S / max(probe, 1e-6))))
    timings = common.interleaved(
        fns,
        warmup=0 if quick else 1,
        rounds=2 if quick else 10,
        per_round=1 if quick else 2,
        budget_s=1 if quick else 20,
    )
    contenders: dict[str, Any] = {}
    for name, fn in fns.items():
        per_step = common.Timing([s / fn.k for s in timings[name].samples])
        contenders[name] = {
            "per_step": per_step.summary(),
            "steps_per_call": fn.k,
            "first_call_s": first[name],
            "compile_s": max(first[name] - per_step.median, 0.0),
            "compile_count": {"first": compiles_first[name], "end": fn.compile_count()},
            "first_loss": fn.first_loss,
        }
    del fns
    gc.collect()
    return {"case": case.name, "kind": case.kind, "params": params, "leaves": leaves,
            "contenders": contenders}  # fmt: skip


def ratios(record: dict[str, Any]) -> dict[str, float]:
    """Per step: each facade path / optax, the fastest facade path / torch fused (and / the
    fastest torch); first step: each facade path's compile seconds / optax's."""
    c = record["contenders"]
    t = {k: v["per_step"]["median_s"] for k, v in c.items()}
    nan = float("nan")
    out: dict[str, float] = {}
    for name in FACADE:
        if name in t:
            path = name.removeprefix("facade ")
            out[f"{path} / optax"] = t[name] / t["optax"] if "optax" in t else nan
            opt_c = c.get("optax", {}).get("compile_s")
            out[f"{path} compile / optax"] = c[name]["compile_s"] / opt_c if opt_c else nan
    facade = [t[k] for k in FACADE if k in t]
    torch_t = [t[k] for k in TORCH if k in t]
    if facade:
        fused = t.get("torch fused", nan)
        out["best facade / torch fused"] = min(facade) / fused
        out["best facade / best torch"] = min(facade) / min(torch_t) if torch_t else nan
    if "facade nnx module" in t and torch_t:
        out["best torch / nnx module"] = min(torch_t) / t["facade nnx module"]
    return out


def print_case(record: dict[str, Any]) -> None:
    rows = []
    c = record["contenders"]
    opt_t = c.get("optax", {}).get("per_step", {}).get("median_s")
    opt_c = c.get("optax", {}).get("compile_s")
    for name, r in c.items():
        med = r["per_step"]["median_s"]
        rows.append(
            {
                "case": record["case"],
                "contender": name,
                "ms/step": common.ms(med),
                "min ms": common.ms(r["per_step"]["min_s"]),
                "x optax": med / opt_t if opt_t else float("nan"),
                "K": r["steps_per_call"],
                "compile s": r["compile_s"],
                "compile x optax": r["compile_s"] / opt_c if opt_c else float("nan"),
                "compiles": "{first} -> {end}".format(**r["compile_count"]),
                "first loss": r["first_loss"],
            }
        )
    print(common.table(rows, list(rows[0])), flush=True)
    recompiled = [
        n for n, r in c.items() if r["compile_count"]["first"] != r["compile_count"]["end"]
    ]
    if recompiled:
        print(f"# RECOMPILED after the first step: {', '.join(recompiled)}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--leaves", default=None, help=f"comma-separated, default {LEAVES}")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated ('' for none)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own; 1 avoids OpenMP barriers stalling "
        "on a loaded machine)",
    )
    args = parser.parse_args(argv)
    if args.torch_threads is not None and have_torch():
        import torch

        torch.set_num_threads(args.torch_threads)
    leaves = args.leaves or ",".join(map(str, QUICK_LEAVES if args.quick else LEAVES))
    cases = [f"{n} leaves" for n in leaves.split(",") if n]
    cases += [m for m in args.models.split(",") if m]
    names = [n for n in args.contenders.split(",") if n]
    info = common.machine()
    print(
        f"# facade steps on {info['cpu']} ({info['cores']} cores), JAX {info['jax_backend']}, "
        f"torch threads {info.get('torch_threads')}, load {info['load_average_start']}",
        flush=True,
    )
    if not args.quick:
        # Pay the process's one-time costs (first trace, first compile, torch's first
        # backward) before any contender's first step is timed.
        run_case(make_case("2 leaves", quick=True), names, quick=True)
    records = []
    for name in cases:
        record = run_case(make_case(name, args.quick), names, args.quick)
        record["ratios"] = ratios(record)
        records.append(record)
        print_case(record)
    print()
    rows = [{"case": r["case"], **r["ratios"]} for r in records]
    print(common.table(rows, list(dict.fromkeys(k for r in rows for k in r))))
    payload = {"machine": info, "lr": LR, "results": records}
    if not args.no_json:
        print("wrote", common.write_json("facade_steps", payload, args.out))
    return payload


if __name__ == "__main__":
    jax.config.update("jax_enable_compilation_cache", False)  # compile times without it
    main()
