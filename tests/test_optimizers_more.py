"""Adadelta, Adamax, NAdam, RAdam, Rprop, ASGD, Adafactor, Muon and SparseAdam against real
``torch.optim``, step for step, and their argument checks against torch's own errors.

The configurations are those of torch's ``OptimizerInfo`` tables
(``torch/testing/_internal/common_optimizers.py``, ``optim_inputs_func_<name>`` on CPU), with a
few more where torch's table leaves an option out. Each runs 100 steps in torch and in jopt (one
jitted step, compiled once) on torch's gradients at torch's parameters; after every step the
parameters must agree within ``RTOL[dtype]``. In float64 torch runs with a default dtype of
float64, so that the scalars it keeps as tensors (``step``, NAdam's ``mu_product``, ASGD's
``eta`` and ``mu``) are doubles, as jopt's are in 64-bit mode.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    RTOL,
    assert_tree_close,
    from_torch,
    make_params,
    precision,
    run_against_torch,
    to_torch,
    torch_grads,
)

import jopt

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch.optim")

STEPS = 100


class TensorLR(float):
    """A learning rate torch receives as a 0-d tensor and jopt as a jax array."""


# jopt factory -> torch class.
TORCH_CLASS = {
    "adadelta": "Adadelta",
    "adamax": "Adamax",
    "nadam": "NAdam",
    "radam": "RAdam",
    "rprop": "Rprop",
    "asgd": "ASGD",
    "adafactor": "Adafactor",
    "muon": "Muon",
    "sparse_adam": "SparseAdam",
}


def _torch_inputs() -> dict[str, list[dict]]:
    """torch's own configurations: ``optim_inputs_func`` of each class's ``OptimizerInfo`` in
    ``torch.testing._internal.common_optimizers.optim_db`` on CPU (a tensor ``lr`` becomes a
    :class:`TensorLR`)."""
    from torch.testing._internal.common_optimizers import optim_db

    infos = {info.optim_cls.__name__: info for info in optim_db}
    out = {}
    for name, cls in TORCH_CLASS.items():
        inputs = infos[cls].optim_inputs_func(device="cpu", dtype=torch.float32)
        out[name] = [
            {k: TensorLR(float(v)) if torch.is_tensor(v) else v for k, v in i.kwargs.items()}
            for i in inputs
        ]
    return out


TORCH_INPUTS = _torch_inputs()
# Options torch's tables leave out.
MORE_INPUTS = {
    "adamax": [{"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}],
    "nadam": [{"lr": 0.01, "betas": (0.5, 0.99), "momentum_decay": 0.1}],
    "radam": [{"lr": 0.01, "betas": (0.8, 0.99)}],
    "rprop": [{"lr": 0.1, "etas": (0.3, 1.1), "step_sizes": (1e-3, 0.2)}],
    "asgd": [{"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 10, "weight_decay": 0.05}],
    "adafactor": [
        {"eps": (1e-20, 1e-2), "lr": 0.05},
        {"lr": 0.05, "maximize": True, "beta2_decay": -0.5, "d": 2.0},
    ],
    "muon": [
        {"lr": 0.02, "nesterov": False},
        {"lr": 0.02, "adjust_lr_fn": "original"},
        {"lr": 0.01, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0},
    ],
    "sparse_adam": [{"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}],
}
CONFIGS = [
    (name, kwargs)
    for name in TORCH_CLASS
    for kwargs in TORCH_INPUTS[name] + MORE_INPUTS.get(name, [])
]


def _id(config: tuple[str, dict]) -> str:
    name, kwargs = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items()) if kwargs else name + "-defaults"


def _for_torch(kwargs: dict) -> dict:
    return {k: torch.tensor(float(v)) if isinstance(v, TensorLR) else v for k, v in kwargs.items()}


def _for_jopt(kwargs: dict) -> dict:
    return {k: jnp.asarray(float(v)) if isinstance(v, TensorLR) else v for k, v in kwargs.items()}


@contextlib.contextmanager
def torch_scalars(dtype: str):
    """torch's scalar state (``step``, ``mu_product``, ``eta``, ...) in ``dtype``: torch makes
    it in its default dtype when that is float64, else in float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def torch_kernels(name: str):
    """torch on one thread, and Muon without oneDNN: on tensors this small a thread pool only
    adds waiting (tens of milliseconds per product on a busy machine), and torch's own
    float32-accumulating bfloat16 kernel gives the Newton–Schulz iteration the same results as
    oneDNN's at a fraction of the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a note on TF32 for Intel GPUs, irrelevant here
            with torch.backends.mkldnn.flags(enabled=name != "muon"):
                yield
    finally:
        torch.set_num_threads(threads)


# Muon's update is computed in bfloat16 by torch itself, whatever the parameters' dtype, and
# jopt rounds where torch rounds (bit for bit on these matrices but for rare float32 ties in
# the order of accumulation: about 1 entry in 500 of the Newton–Schulz output for random 4x3
# float64 inputs). One such entry moves that step by a bfloat16 ulp (2**-8 of the step): with
# torch's coefficients (3.4, -4.7, 2.0) in float64 the parameters then differ by 8.8e-6
# relative from step 12 on. So Muon is held to float32's tolerance in both dtypes.
MUON_RTOL = {"float32": RTOL["float32"], "float64": RTOL["float32"]}


def matrices(dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Muon's parameters: 2-D only, one tall, one wide, one square (the NS transpose paths)."""
    rng = np.random.default_rng(seed)
    shapes = {"w": (4, 3), "v": (3, 5), "q": (2, 2)}
    return {
        k: (rng.uniform(0.5, 1.5, s) * rng.choice([-1.0, 1.0], s)).astype(dtype)
        for k, s in shapes.items()
    }


def sparse_grads(step: int, tparams: dict[str, Any]) -> dict[str, np.ndarray]:
    """torch's gradients with about half of the entries zero, given to torch as sparse tensors
    (SparseAdam's input) and to jopt dense."""
    grads = torch_grads(tparams)
    rng = np.random.default_rng(step)
    for key, t in tparams.items():
        grads[key] = np.where(rng.random(grads[key].shape) < 0.5, 0, grads[key]).astype(
            grads[key].dtype
        )
        t.grad = torch.from_numpy(grads[key].copy()).to_sparse()
    return grads


# Optimizers whose rule is elementwise (their scalars depend on the step alone): jopt runs them
# on one flat buffer holding every parameter, as the ``jopt.optim`` facade does. The arithmetic
# per entry is the same as on the tree, and the compiled step is a quarter of the size.
ELEMENTWISE = {"adadelta", "adamax", "nadam", "radam", "rprop", "asgd", "sparse_adam"}


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    return {"flat": np.concatenate([np.ravel(tree[k]) for k in sorted(tree)])}


def unflatten(flat: dict[str, Any], like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keys = sorted(like)
    parts = np.split(np.asarray(flat["flat"]), np.cumsum([like[k].size for k in keys])[:-1])
    return {k: part.reshape(like[k].shape) for k, part in zip(keys, parts)}


def run_optimizer(name: str, kwargs: dict, dtype: str, check_state=None) -> Any:
    """100 steps of jopt and torch on torch's gradients, compared after every step
    (:func:`run_against_torch`); ``check_state(state, reference, tparams, view, what)`` may
    compare the states too (``view`` maps a tree of jopt's leaves back to torch's parameters).
    Returns jopt's final state."""
    params = matrices(dtype) if name == "muon" else make_params(dtype)
    tparams = to_torch(params)
    grads = sparse_grads if name == "sparse_adam" else lambda i, t: torch_grads(t)
    flat = name in ELEMENTWISE
    view = (lambda tree: unflatten(tree, params)) if flat else (lambda tree: tree)
    check = None
    if check_state is not None:

        def check(i, _, state):
            check_state(state, reference, tparams, view, f"step {i + 1}")

    with torch_scalars(dtype), torch_kernels(name):
        reference = getattr(torch.optim, TORCH_CLASS[name])(
            list(tparams.values()), **_for_torch(kwargs)
        )
        run = run_against_torch(
            getattr(jopt, name)(**_for_jopt(kwargs)),
            reference,
            tparams,
            STEPS,
            rtol=(MUON_RTOL if name == "muon" else RTOL)[dtype],
            grads=grads,
            check=check,
            to_jopt=flatten if flat else (lambda tree: tree),
            view=view,
        )
    assert run.traces == 1, "the jitted step was traced again: the state changed its types"
    for leaf in jax.tree.leaves(run.params):
        assert leaf.dtype == dtype
    return run.state


@pytest.fixture(params=["float32", pytest.param("float64", marks=pytest.mark.slow)])
def dtype(request: pytest.FixtureRequest):
    """float32 in every run; the float64 tables (1e-10) in the slow run CI adds."""
    with precision(request.param):
        yield request.param


@pytest.mark.parametrize("config", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_matches_torch_every_step(config: tuple[str, dict], dtype: str) -> None:
    name, kwargs = config
    run_optimizer(name, kwargs, dtype)


def _find(state: Any, kind: type) -> Any:
    found = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind))
    (sub,) = [x for x in found if isinstance(x, kind)]
    return sub


@pytest.mark.parametrize("kwargs", [{"t0": 20, "lr": 0.05}, {"t0": 0, "lambd": 0.01}])
def test_asgd_average_is_torchs_ax(kwargs: dict, dtype: str) -> None:
    """ASGD's averaged parameters, ``state.ax``, are torch's ``state["ax"]`` at every step, and
    so are ``eta`` and ``mu``."""

    def check(state, reference, tparams, view, what):
        sub = _find(state, jopt.ScaleByAsgdState)
        ax = {k: reference.state[t]["ax"].numpy() for k, t in tparams.items()}
        assert_tree_close(
            view(sub.ax), ax, RTOL[dtype], what=f"ax, {what}", scale=from_torch(tparams)
        )
        first = reference.state[next(iter(tparams.values()))]
        np.testing.assert_allclose(sub.eta, first["eta"].item(), rtol=RTOL[dtype])
        np.testing.assert_allclose(sub.mu, first["mu"].item(), rtol=RTOL[dtype])

    run_optimizer("asgd", kwargs, dtype, check)


def test_adafactor_state_is_torchs(dtype: str) -> None:
    """Adafactor keeps torch's factors: ``row_var``/``col_var`` for arrays of two or more
    dimensions (the last two axes reduced in turn), ``variance`` for the others."""

    def check(state, reference, tparams, view, what):
        sub = _find(state, jopt.ScaleByAdafactorState)
        for key, t in tparams.items():
            theirs = reference.state[t]
            for field in ("row_var", "col_var", "variance"):
                ours = getattr(sub, field)[key]
                assert (ours is None) == (field not in theirs), (key, field)
                if ours is not None:
                    np.testing.assert_allclose(
                        ours, theirs[field].numpy(), rtol=1e-4, err_msg=f"{key} {field} {what}"
                    )

    run_optimizer("adafactor", {"lr": 0.05}, dtype, check)


# --------------------------------------------------------------------------------------------
# torch's defaults and argument checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TORCH_CLASS))
def test_defaults_are_torchs(name: str) -> None:
    ours = inspect.signature(getattr(jopt, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, TORCH_CLASS[name]).__init__).parameters
    assert set(ours) <= set(theirs), set(ours) - set(theirs)
    for arg, p in ours.items():
        assert p.default == theirs[arg].default, arg


# Each factory's checks: the inputs of torch's ``optim_error_inputs_func_<name>`` (which
# test_torch_error_table.py takes from torch and runs against the facade classes), then the
# other checks of each constructor; the messages are torch's, asked at test time.
ERROR_INPUTS = {
    "adadelta": [
        {"lr": 1e-2, "rho": 1.1},
        {"lr": -1.0},
        {"rho": -0.1},
        {"eps": -1e-6},
        {"weight_decay": -0.1},
    ],
    "adamax": [
        {"lr": 1e-2, "betas": (0.0, 1.0)},
        {"lr": -1.0},
        {"eps": -1.0},
        {"betas": (1.0, 0.5)},
        {"weight_decay": -1.0},
    ],
    "nadam": [
        {"lr": 1e-2, "betas": (1.0, 0.0)},
        {"lr": 1e-2, "momentum_decay": -0.2},
        {"lr": -1.0},
        {"eps": -1.0},
        {"weight_decay": -1.0},
    ],
    "radam": [
        {"lr": 1e-2, "betas": (1.0, 0.0)},
        {"lr": 1e-2, "weight_decay": -1},
        {"lr": -1.0},
        {"eps": -1.0},
        {"betas": (0.9, 1.0)},
    ],
    "rprop": [
        {"lr": 1e-2, "etas": (1.0, 0.5)},
        {"lr": -1.0},
        {"etas": (0.0, 1.2)},
        {"etas": (0.5, 1.0)},
    ],
    "asgd": [{"lr": 1e-2, "weight_decay": -0.5}, {"lr": -1.0}],
    "adafactor": [
        {"eps": (-1e-30, 1e-3)},
        {"d": 0.0},
        {"beta2_decay": 0.8},
        {"lr": -1.0},
        {"eps": (None, -1.0)},
        {"weight_decay": -1.0},
    ],
    "muon": [
        {"adjust_lr_fn": "arbitrary"},
        {"lr": -1.0},
        {"momentum": -0.5},
        {"weight_decay": -0.1},
    ],
    "sparse_adam": [
        {"lr": 1e-2, "betas": (1.0, 0.0)},
        {"lr": 0.0},
        {"eps": 0.0},
        {"betas": (0.5, 1.0)},
    ],
}
ERRORS = [(name, kwargs) for name, inputs in ERROR_INPUTS.items() for kwargs in inputs]


def _torch_error(build) -> BaseException:
    with pytest.raises(Exception) as info:
        build()
    return info.value


@pytest.mark.parametrize("config", ERRORS, ids=[_id(c) for c in ERRORS])
def test_errors_are_torchs(config: tuple[str, dict]) -> None:
    """The same exception type and message as torch's constructor, asked of torch now."""
    name, kwargs = config
    param = torch.nn.Parameter(torch.zeros(2, 2))
    theirs = _torch_error(lambda: getattr(torch.optim, TORCH_CLASS[name])([param], **kwargs))
    with pytest.raises(type(theirs)) as ours:
        getattr(jopt, name)(**kwargs)
    assert str(ours.value) == str(theirs)


def _step_error(name: str, tparam: Any) -> BaseException:
    def build_and_step():
        opt = getattr(torch.optim, TORCH_CLASS[name])([tparam])
        tparam.grad = torch.ones_like(tparam)
        opt.step()

    return _torch_error(build_and_step)


@pytest.mark.parametrize(("name", "shape"), [("muon", (2, 3, 4)), ("muon", (3,)), ("muon", ())])
def test_muon_refuses_what_torch_refuses(name: str, shape: tuple[int, ...]) -> None:
    theirs = _step_error(name, torch.nn.Parameter(torch.zeros(shape)))
    with pytest.raises(type(theirs)) as ours:
        jopt.muon().init({"p": jnp.zeros(shape)})
    assert str(ours.value) == str(theirs)


@pytest.mark.parametrize("name", ["muon", "adafactor"])
def test_complex_parameters_refused_as_torch(name: str) -> None:
    """torch's Muon and Adafactor refuse complex parameters at their first step; jopt too."""
    theirs = _step_error(name, torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.complex64)))
    tx, params = getattr(jopt, name)(), {"p": jnp.zeros((2, 3), jnp.complex64)}
    with pytest.raises(type(theirs)) as ours:
        tx.update(params, tx.init(params), params)
    assert str(ours.value) == str(theirs)


# --------------------------------------------------------------------------------------------
# Complex parameters, hyperparameters as data
# --------------------------------------------------------------------------------------------

COMPLEX = [
    ("adadelta", {"weight_decay": 0.1}),
    ("adamax", {"lr": 0.01}),
    ("nadam", {"lr": 0.01}),
    ("radam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("rprop", {}),
    ("asgd", {"t0": 10, "lr": 0.02}),
]


@pytest.mark.parametrize("config", COMPLEX, ids=[_id(c) for c in COMPLEX])
def test_complex_parameters_as_torch(config: tuple[str, dict]) -> None:
    """torch optimizes a complex parameter as a pair of reals (``view_as_real``); so does jopt."""
    name, kwargs = config
    rng = np.random.default_rng(1)
    z = (rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2))).astype(np.complex64)
    tparams = {"z": torch.tensor(z, requires_grad=True)}
    reference = getattr(torch.optim, TORCH_CLASS[name])(list(tparams.values()), **kwargs)

    def grads(i, tparams):
        current = tparams["z"].detach().numpy()
        grad = (np.sin(current.real) + 1j * np.cos(3 * current.imag)).astype(np.complex64)
        tparams["z"].grad = torch.from_numpy(grad.copy())
        return {"z": jnp.asarray(grad)}

    def compare(i, params, state):
        np.testing.assert_allclose(
            np.asarray(params["z"]),
            tparams["z"].detach().numpy(),
            rtol=1e-5,
            atol=1e-5,
            err_msg=str(i),
        )

    run_against_torch(
        getattr(jopt, name)(**kwargs),
        reference,
        tparams,
        20,
        rtol=None,
        grads=grads,
        check=compare,
        params={"z": jnp.asarray(z)},
    )


INJECTED = [
    ("adadelta", {"lr": 0.5, "rho": 0.9}, {"rho": 0.5, "lr": 0.1}),
    ("nadam", {"lr": 0.01, "momentum_decay": 4e-3}, {"momentum_decay": 0.02}),
    ("radam", {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.02, "weight_decay": 0.0}),
    ("asgd", {"lr": 0.02, "lambd": 1e-3, "t0": 5.0}, {"lr": 0.05, "lambd": 0.01}),
    ("adafactor", {"lr": 0.05, "d": 1.0}, {"lr": 0.01, "d": 1.5}),
    ("muon", {"lr": 0.02, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.5}),
]


@pytest.mark.parametrize("config", INJECTED, ids=[c[0] for c in INJECTED])
def test_injected_hyperparameters_change_as_torch_groups(config) -> None:
    """Injected hyperparameters changed halfway through a run take effect at the next step
    without recompiling, as a change of torch's ``param_groups`` does."""
    name, kwargs, later = config
    with torch_kernels(name):
        _run_injected(name, kwargs, later)


def _run_injected(name: str, kwargs: dict, later: dict) -> None:
    params = matrices("float32") if name == "muon" else make_params("float32")
    tparams = to_torch(params)
    reference = getattr(torch.optim, TORCH_CLASS[name])(list(tparams.values()), **kwargs)

    def change(i, state, group):
        if i == 10:
            for k, v in later.items():
                state.hyperparams[k] = v
                group[k] = v

    tx = jopt.inject_hyperparams(getattr(jopt, name))(**kwargs)
    assert run_against_torch(tx, reference, tparams, 20, change=change).traces == 1
