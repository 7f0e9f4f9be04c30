"""torch's own table of bad optimizer inputs, asked of torch at test time, against jopt.optim.

Every ``OptimizerInfo`` of ``torch.testing._internal.common_optimizers.optim_db`` lists, in
``optim_error_inputs_func``, the inputs torch's ``test_errors`` refuses: the parameters and
keyword arguments, whether the constructor or the step must fail, the exception (or warning)
type and a regex for its message. Each entry is converted to JAX (a tensor becomes an array of
the same values, a sparse tensor a ``BCOO``; lists, tuples and param-group dicts keep their
shape) and given to the ``jopt.optim`` class of the same name, which must raise the same
exception type with a message the regex finds, or give the warning.
"""

from __future__ import annotations

import inspect
import re
from typing import Any
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse

import jopt.optim

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch's testing package imports it

from torch.testing._internal import common_optimizers  # noqa: E402
from torch.testing._internal.common_optimizers import (  # noqa: E402
    OptimizerErrorEnum,
    optim_db,
)

NAMES = [info.optim_cls.__name__ for info in optim_db]


def _table(info: Any, cuda_rows: bool = False) -> list[Any]:
    """The entries torch's test_errors runs on the CPU in float32; with ``cuda_rows``, only the
    rows torch's table keeps for CUDA devices, made with CPU tensors."""
    cpu = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)
    if not cuda_rows:
        return cpu
    with mock.patch.object(common_optimizers, "CUDA_CONFIG_GPUS", ["cpu"]):
        every = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)
    seen = {e.optimizer_error_input.desc for e in cpu}
    return [e for e in every if e.optimizer_error_input.desc not in seen]


def _params(table: list[Any], name: str, rows: str) -> list[Any]:
    return [
        pytest.param(name, entry, id=f"{name}-{rows}{i}-{_slug(entry)}")
        for i, entry in enumerate(table)
    ]


def _slug(entry: Any) -> str:
    return re.sub(r"\W+", "_", entry.optimizer_error_input.desc).strip("_")


ENTRIES = [p for info in optim_db for p in _params(_table(info), info.optim_cls.__name__, "")]
CUDA_ENTRIES = [
    p
    for info in optim_db
    for p in _params(_table(info, cuda_rows=True), info.optim_cls.__name__, "cuda")
]


# ------------------------------------------------------------------------------------------
# torch's inputs in JAX
# ------------------------------------------------------------------------------------------


def to_jax(value: Any, memo: dict[int, Any]) -> Any:
    """A torch input in JAX: a tensor is an array of the same values (the same array for the
    same tensor, so duplicates stay duplicates), a sparse COO tensor a ``BCOO``; containers
    keep their type; anything else is given as it is."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = _array(value)
        return memo[id(value)]
    if isinstance(value, list | tuple):
        return type(value)(to_jax(v, memo) for v in value)
    if isinstance(value, dict):
        return {k: to_jax(v, memo) for k, v in value.items()}
    return value


def _array(tensor: Any) -> Any:
    tensor = tensor.detach()
    if tensor.layout == torch.sparse_coo:
        tensor = tensor.coalesce()
        data = jnp.asarray(tensor.values().numpy())
        indices = jnp.asarray(tensor.indices().numpy().T)
        return sparse.BCOO((data, indices), shape=tuple(tensor.shape))
    return jnp.asarray(tensor.numpy())


def grads_of(params: Any, memo: dict[int, Any]) -> Any:
    """The gradients torch's step would read (each tensor's ``.grad``), in the structure
    ``step(grads)`` takes: that of the parameters, one tree per group when there are groups."""
    if isinstance(params, list) and params and all(isinstance(g, dict) for g in params):
        return [grads_of(g["params"], memo) for g in params]
    if isinstance(params, torch.Tensor):
        return to_jax(params.grad, memo)
    if isinstance(params, list | tuple):
        return type(params)(grads_of(p, memo) for p in params)
    raise AssertionError(f"no gradients for {params!r}")


def expect(entry: Any) -> Any:
    """The context in which the entry's error (or warning) must come."""
    kind, regex = entry.error_type, entry.error_regex
    if issubclass(kind, Warning):
        return pytest.warns(kind, match=regex)
    return _raises(kind, regex)


class _raises:
    """``pytest.raises`` of exactly ``kind`` whose message ``re.search``-es ``regex``."""

    def __init__(self, kind: type[BaseException], regex: str) -> None:
        self.kind, self.regex = kind, regex
        self.context = pytest.raises(kind)

    def __enter__(self) -> None:
        self.info = self.context.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        handled = self.context.__exit__(*exc)
        if not handled:  # another exception: let it through as it is
            return False
        error = self.info.value
        assert type(error) is self.kind, f"{type(error).__name__}, not {self.kind.__name__}"
        assert re.search(self.regex, str(error)), f"{self.regex!r} not in {str(error)!r}"
        return handled


def run_entry(name: str, entry: Any) -> None:
    inputs = entry.optimizer_error_input
    memo: dict[int, Any] = {}
    params = to_jax(inputs.params, memo)
    kwargs = to_jax(inputs.kwargs, memo)
    cls = getattr(jopt.optim, name)
    if entry.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect(entry):
            cls(params, **kwargs)
    elif entry.error_on == OptimizerErrorEnum.STEP_ERROR:
        optimizer = cls(params, **kwargs)  # builds, as torch's does
        grads = grads_of(inputs.params, memo)
        with expect(entry):
            optimizer.step(grads)
    else:
        raise NotImplementedError(f"unknown error_on {entry.error_on}")


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------


def test_the_table_covers_every_facade_class() -> None:
    assert sorted(NAMES) == sorted(
        n for n in jopt.optim.__all__ if isinstance(getattr(jopt.optim, n), type)
        and issubclass(getattr(jopt.optim, n), jopt.optim.Optimizer)
        and getattr(jopt.optim, n) is not jopt.optim.Optimizer
    )
    assert len(ENTRIES) > len(NAMES)


@pytest.mark.parametrize(("name", "entry"), ENTRIES)
def test_torch_error_table(name: str, entry: Any) -> None:
    run_entry(name, entry)


@pytest.mark.parametrize(("name", "entry"), CUDA_ENTRIES)
def test_torch_error_table_cuda_rows(name: str, entry: Any) -> None:
    """The rows torch's table keeps for CUDA devices (``fused`` with ``foreach`` or with
    ``differentiable``): torch raises them on the CPU too, and so does jopt."""
    inputs = entry.optimizer_error_input
    with expect(entry):
        entry_cls = getattr(torch.optim, name)
        entry_cls(inputs.params, **inputs.kwargs)
    run_entry(name, entry)


# ------------------------------------------------------------------------------------------
# What the table implies beyond its rows
# ------------------------------------------------------------------------------------------


def _torch_error(build: Any) -> BaseException:
    try:
        build()
    except Exception as error:  # noqa: BLE001 - the error is the result
        return error
    raise AssertionError("torch accepted it")


def _with_flag(name: str, flag: str) -> bool:
    return flag in inspect.signature(getattr(torch.optim, name)).parameters


KERNEL_FLAGS = [
    pytest.param(name, kwargs, id=f"{name}-{'-'.join(kwargs)}")
    for name in NAMES
    if _with_flag(name, "fused")
    for kwargs in ({"foreach": True, "fused": True}, {"fused": True, "differentiable": True})
]


@pytest.mark.parametrize(("name", "kwargs"), KERNEL_FLAGS)
def test_kernel_flags_torch_refuses(name: str, kwargs: dict[str, Any]) -> None:
    """Every class with ``fused`` refuses it with ``foreach`` or ``differentiable``, after the
    parameters are checked, in torch's words."""
    theirs = _torch_error(lambda: getattr(torch.optim, name)([torch.zeros(2)], **kwargs))
    with _raises(type(theirs), re.escape(str(theirs))):
        getattr(jopt.optim, name)([jnp.zeros(2)], **kwargs)
    theirs = _torch_error(lambda: getattr(torch.optim, name)(torch.zeros(2), **kwargs))
    with _raises(type(theirs), re.escape(str(theirs))):
        getattr(jopt.optim, name)(jnp.zeros(2), **kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_one_element_lr_is_taken_as_torch_takes_it(name: str, shape: tuple[int, ...]) -> None:
    """torch takes a tensor ``lr`` of one element; the step equals that of the number."""
    value = 0.05
    getattr(torch.optim, name)([torch.zeros(2, 2)], lr=torch.full(shape, value))
    x = jnp.asarray(np.arange(1.0, 5.0, dtype=np.float32).reshape(2, 2))
    grad = jnp.asarray(np.array([[0.5, -1.0], [2.0, 0.25]], np.float32))
    steps = []
    for lr in (jnp.full(shape, value), value):
        opt = getattr(jopt.optim, name)([x], lr=lr)
        if name == "LBFGS":
            opt.step(lambda p: jnp.sum(jnp.cos(p[0]) * grad))
        else:
            opt.step([grad])
        steps.append(np.asarray(opt.params[0]))
    assert steps[0].shape == (2, 2)
    np.testing.assert_array_equal(steps[0], steps[1])


@pytest.mark.parametrize("name", [n for n in NAMES if n in ("Adam", "AdamW")])
def test_one_element_betas_are_taken_as_torch_takes_them(name: str) -> None:
    betas = (np.full((1,), 0.8, np.float32), np.full((1, 1), 0.95, np.float32))
    getattr(torch.optim, name)([torch.zeros(2)], betas=tuple(map(torch.tensor, betas)))
    grad = jnp.asarray([0.5, -2.0])
    steps = []
    for given in (tuple(map(jnp.asarray, betas)), (0.8, 0.95)):
        opt = getattr(jopt.optim, name)([jnp.ones(2)], lr=0.1, betas=given)
        opt.step([grad])
        opt.step([grad])
        steps.append(np.asarray(opt.params[0]))
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torchs(name: str) -> None:
    """The constructor takes torch's arguments, in torch's order and kinds, with torch's
    defaults."""

    def described(cls: type) -> list[tuple[str, Any, Any]]:
        return [
            (p.name, p.kind, p.default)
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self"
        ]

    assert described(getattr(jopt.optim, name)) == described(getattr(torch.optim, name))


def test_no_params_is_refused_as_torch_refuses_it() -> None:
    theirs = _torch_error(lambda: torch.optim.SGD(None))
    with _raises(type(theirs), re.escape(str(theirs))):
        jopt.optim.SGD(None)


@pytest.mark.parametrize(("name", "kwargs"), [("Adam", {"lr": 0.1}), ("SGD", {"momentum": 0.9})])
def test_complex_parameters_are_built_and_stepped_as_torch(name: str, kwargs: dict) -> None:
    """torch takes complex parameters (the table's step errors of Muon and Adafactor rest on
    it); so does the facade, stepping them as pairs of reals, and its state dict holds their
    state as torch's does: complex."""
    z = (np.arange(6).reshape(3, 2) * (0.3 - 0.2j) + 0.1j).astype(np.complex64)
    theirs = [torch.tensor(z.copy(), requires_grad=True)]
    ref = getattr(torch.optim, name)(theirs, **kwargs)
    ours = getattr(jopt.optim, name)([jnp.asarray(z)], **kwargs)
    for _ in range(3):
        grad = (np.asarray(ours.params[0]) * (0.5 - 0.2j) + 0.1).astype(np.complex64)
        theirs[0].grad = torch.tensor(grad)
        ref.step()
        ours.step([jnp.asarray(grad)])
    np.testing.assert_allclose(ours.params[0], theirs[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    state, expected_state = ours.state_dict()["state"], ref.state_dict()["state"]
    for entry, expected in zip(state.values(), expected_state.values(), strict=True):
        for key, value in expected.items():
            np.testing.assert_allclose(np.asarray(entry[key]), value.numpy(), rtol=1e-5, atol=1e-6)


def test_a_refused_param_group_leaves_the_optimizer_as_it_was() -> None:
    """Muon's init refuses a parameter that is no matrix, as torch's constructor does; the
    group is not half added."""
    theirs = _torch_error(lambda: torch.optim.Muon([torch.ones(2, 3, 4)]))
    opt = jopt.optim.Muon([jnp.ones((2, 3))])
    with _raises(type(theirs), re.escape(str(theirs))):
        opt.add_param_group({"params": [jnp.ones((2, 3, 4))]})
    assert len(opt.param_groups) == 1
    opt.step([jnp.ones((2, 3))])
    assert opt.params[0].shape == (2, 3)


ADAM_TENSOR_ORDER = [
    {"lr": [0.1, 0.1], "foreach": True},
    {"lr": [0.1, 0.1], "eps": -1.0},
    {"betas": (0.9, 0.99), "tensor_betas": True, "foreach": True, "eps": -1.0},
    {"betas": (0.9, 0.99), "tensor_betas": True, "foreach": True, "weight_decay": -1.0},
    {"betas": ([[0.9]], [0.99]), "tensor_betas": True},
    {"betas": ([[0.9]], [0.99]), "tensor_betas": True, "foreach": True},
    {"betas": (0.9, 0.99), "tensor_betas": True, "foreach": True, "capturable": True},
    {"lr": 0.1, "foreach": True, "capturable": True},
]


@pytest.mark.parametrize("name", [n for n in NAMES if n in ("Adam", "AdamW")])
@pytest.mark.parametrize("case", ADAM_TENSOR_ORDER, ids=str)
def test_adam_tensor_checks_come_in_torchs_order(name: str, case: dict[str, Any]) -> None:
    """Combinations beyond the table's rows: the first error torch finds is jopt's first too
    (or both accept)."""
    case = dict(case)
    tensor_betas = case.pop("tensor_betas", False)

    def given(module: Any) -> dict[str, Any]:
        out = dict(case)
        if "lr" in out:
            out["lr"] = module.asarray(np.asarray(out["lr"], np.float32))
        if tensor_betas:
            out["betas"] = tuple(module.asarray(np.asarray(b, np.float32)) for b in out["betas"])
        return out

    try:
        getattr(torch.optim, name)([torch.zeros(2)], **given(torch))
    except Exception as theirs:  # noqa: BLE001 - the error is the result
        with _raises(type(theirs), re.escape(str(theirs))):
            getattr(jopt.optim, name)([jnp.zeros(2)], **given(jnp))
    else:
        getattr(jopt.optim, name)([jnp.zeros(2)], **given(jnp))
