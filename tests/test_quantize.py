"""jopt.train.quantize_dynamic against torch.ao.quantization.quantize_dynamic on torch's x86
engine (fbgemm): the same int8 weights and scales, torch's activation scale and zero point,
outputs within float rounding (far inside one quantization step), model bytes, Iris."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jopt
from jopt.train import MLP, fit, load_iris
from jopt.train.quantize import (
    QuantizedLinear,
    activation_qparams,
    model_bytes,
    quantize_dynamic,
)

torch = pytest.importorskip("torch", reason="the oracle tests compare against torch")
tq = pytest.importorskip("torch.ao.quantization")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning")


@pytest.fixture(autouse=True)
def _x86_engine():
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("torch's x86 (fbgemm) quantized engine is not available")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    yield
    torch.backends.quantized.engine = before


def _torch_twin(model: MLP):
    """torch's nn.Sequential with the MLP's weights (``weight`` is the kernel transposed)."""
    layers = []
    for i, layer in enumerate(model.layers):
        kernel = np.asarray(layer.kernel[...])
        linear = torch.nn.Linear(*kernel.shape)
        linear.weight.data = torch.tensor(kernel.T.copy())
        linear.bias.data = torch.tensor(np.asarray(layer.bias[...]))
        layers.append(linear)
        if i < len(model.layers) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _torch_quantized(model: MLP, per_channel: bool):
    qconfig = tq.per_channel_dynamic_qconfig if per_channel else tq.default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.quantize_dynamic(_torch_twin(model), {torch.nn.Linear: qconfig})


def _torch_linears(tmodel):
    return [m for m in tmodel if not isinstance(m, torch.nn.ReLU)]


@pytest.mark.parametrize("per_channel", [False, True])
def test_weights_and_scales_are_torchs(per_channel):
    model = MLP(8, (32,), 5, rngs=nnx.Rngs(0))
    ours = quantize_dynamic(model, per_channel=per_channel)
    theirs = _torch_quantized(model, per_channel)
    for layer, tlayer in zip(ours.layers, _torch_linears(theirs)):
        w = tlayer.weight()
        np.testing.assert_array_equal(np.asarray(layer.kernel[...]).T, w.int_repr().numpy())
        scales = w.q_per_channel_scales().numpy() if per_channel else np.array([w.q_scale()])
        np.testing.assert_array_equal(np.asarray(layer.scale[...]), scales.astype(np.float32))
        assert layer.kernel[...].dtype == jnp.int8
    assert isinstance(model.layers[0], nnx.Linear)  # the model itself is not changed


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    return {
        "normal": x, "positive": np.abs(x) + 0.5, "negative": -np.abs(x) * 100,
        "tiny range": x * 1e-6, "zeros": np.zeros_like(x), "constant": np.full_like(x, 3.0),
        "one row": x[:1] * 7,
    }


@pytest.mark.parametrize("name", list(_inputs()))
def test_activation_scale_and_zero_point_are_torchs(name):
    x = _inputs()[name]
    scale, zero_point = torch._choose_qparams_per_tensor(torch.tensor(x), True)
    ours = jax.jit(activation_qparams)(x)
    assert float(ours[0]) == np.float32(scale)
    assert int(ours[1]) == zero_point


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("name", list(_inputs()))
def test_outputs_match_torch_within_one_step(per_channel, name):
    model = MLP(8, (32,), 5, rngs=nnx.Rngs(1))
    x = _inputs()[name]
    theirs = _torch_quantized(model, per_channel)(torch.tensor(x)).numpy()
    quantized = quantize_dynamic(model, per_channel=per_channel)
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(quantized, x))
    # One quantization step of the last layer: one unit of its int32 accumulator.
    hidden = np.maximum(x @ np.asarray(model.layers[0].kernel[...]) +
                        np.asarray(model.layers[0].bias[...]), 0)
    x_scale = float(activation_qparams(hidden)[0])
    step = x_scale * float(np.max(np.asarray(quantized.layers[1].scale[...])))
    assert np.max(np.abs(ours - theirs)) <= step
    # ... and in fact the same integers: what is left is float32 rounding of the rescale.
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * np.max(np.abs(theirs)))


def test_batched_inputs_share_one_activation_scale_as_torch():
    model = MLP(8, (16,), 4, rngs=nnx.Rngs(2))
    x = np.random.default_rng(3).standard_normal((3, 5, 8)).astype(np.float32)
    theirs = _torch_quantized(model, False)(torch.tensor(x)).numpy()
    ours = np.asarray(quantize_dynamic(model)(jnp.asarray(x)))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * np.max(np.abs(theirs)))


def test_symmetric_activations_are_closer_to_the_float_model():
    model = MLP(8, (32,), 5, rngs=nnx.Rngs(1))
    x = jnp.asarray(_inputs()["normal"])
    exact = np.asarray(model(x))
    torch_like = np.asarray(quantize_dynamic(model)(x))
    symmetric = np.asarray(quantize_dynamic(model, activation="symmetric")(x))
    assert np.abs(symmetric - exact).mean() < np.abs(torch_like - exact).mean()
    with pytest.raises(ValueError, match="activation must be"):
        quantize_dynamic(model, activation="int4")


def test_a_lone_linear_and_the_int_matmul():
    linear = nnx.Linear(8, 3, rngs=nnx.Rngs(0))
    quantized = quantize_dynamic(linear)
    assert isinstance(quantized, QuantizedLinear)
    jaxpr = str(jax.make_jaxpr(lambda x: quantized(x))(jnp.ones((2, 8))))
    assert "preferred_element_type=int32" in jaxpr and "i8[" in jaxpr


def _torch_bytes(tmodel) -> int:
    total = 0
    for module in _torch_linears(tmodel):
        if isinstance(module, torch.nn.Linear):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
        else:
            w, b = module.weight(), module.bias()
            total += w.int_repr().numel() + b.numel() * b.element_size()
    return total


@pytest.mark.parametrize("per_channel", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bytes_are_about_four_times_fewer(per_channel):
    model = MLP(256, (512,), 10, rngs=nnx.Rngs(0))
    quantized = quantize_dynamic(model, per_channel=per_channel)
    dense_bytes, int8_bytes = model_bytes(model), model_bytes(quantized)
    assert dense_bytes == _torch_bytes(_torch_twin(model))
    scales = sum(int(np.size(layer.scale[...])) for layer in quantized.layers)
    assert int8_bytes == _torch_bytes(_torch_quantized(model, per_channel)) + 4 * scales
    assert 3.85 < dense_bytes / int8_bytes < 4  # float32 -> int8; biases and scales float32


def test_iris_accuracy_before_and_after_as_torch():
    data = load_iris()
    result = fit(MLP(4, (16,), 3, rngs=nnx.Rngs(0)), jopt.adam(lr=1e-2), data, epochs=100,
                 batch_size=16, l2=1e-3)
    model = result.model
    x, y = jnp.asarray(data.x_test), np.asarray(data.y_test)
    before = float(np.mean(np.argmax(np.asarray(model(x)), -1) == y))
    assert before == pytest.approx(result.final("test_accuracy"))
    ours = np.argmax(np.asarray(quantize_dynamic(model)(x)), -1)
    theirs = np.argmax(_torch_quantized(model, False)(torch.tensor(np.asarray(x))).numpy(), -1)
    np.testing.assert_array_equal(ours, theirs)
    after = float(np.mean(ours == y))
    assert after >= before - 1 / len(y)  # int8 costs at most one test flower here
    assert after >= 0.9
