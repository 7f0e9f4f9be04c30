"""The MLP (flax nnx), its loss, and the pure (graphdef, params) form the compiled loop uses.

``MLP`` is an ordinary ``nnx.Module``. Training code splits it once into a static ``graphdef``
and a plain dict of parameter arrays (``split_params``); inside ``jit`` the module is rebuilt
from them at trace time (``apply``), which costs nothing when the program runs. The default
initialisation is torch's ``nn.Linear`` (uniform in ``±1/sqrt(fan_in)`` for weights and
biases), so a jopt recipe and the same torch script start from the same distribution.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jopt.train import names

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "MLP",
    "MLPFactory",
    "apply",
    "cross_entropy",
    "l2_penalty",
    "loss_and_metrics",
    "merge_params",
    "split_params",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
}


def _torch_uniform(fan_in: int) -> Callable[..., jax.Array]:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _initializers(name: str, fan_in: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(kernel_init, bias_init) for one layer."""
    zeros = nnx.initializers.zeros_init()
    if name == "torch":  # nn.Linear: kaiming_uniform(a=sqrt(5)) == U(±1/sqrt(fan_in)); bias too
        return _torch_uniform(fan_in), _torch_uniform(fan_in)
    table = {
        "lecun_normal": nnx.initializers.lecun_normal(),
        "xavier_uniform": nnx.initializers.xavier_uniform(),
        "xavier_normal": nnx.initializers.xavier_normal(),
        "kaiming_uniform": nnx.initializers.he_uniform(),
        "kaiming_normal": nnx.initializers.he_normal(),
    }
    return table[name], zeros


INITS = names.INITS


class MLP(nnx.Module):
    """A multilayer perceptron: ``Linear -> activation`` per hidden size, then ``Linear``.

    ``MLP(4, (16,), 3)`` is the 4-16-3 ReLU network of the Iris recipe. ``init`` names the
    initialisation (``"torch"`` by default; see ``INITS``); biases start at zero except with
    ``"torch"``, which draws them as ``nn.Linear`` does.
    """

    def __init__(
        self,
        in_features: int = 4,
        hidden: Sequence[int] = (16,),
        out_features: int = 3,
        activation: str = "relu",
        init: str = "torch",
        *,
        rngs: nnx.Rngs,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {list(INITS)}")
        sizes = (in_features, *hidden, out_features)
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            kernel_init, bias_init = _initializers(init, fan_in)
            layers.append(
                nnx.Linear(fan_in, fan_out, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)
            )
        self.layers = nnx.List(layers)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


@dataclasses.dataclass(frozen=True)
class MLPFactory:
    """``MLPFactory(4, (16,), 3)(rngs)`` is ``MLP(4, (16,), 3, rngs=rngs)``: a model factory
    equal to another with the same arguments, so programs compiled for one serve the other."""

    in_features: int = 4
    hidden: tuple[int, ...] = (16,)
    out_features: int = 3
    activation: str = "relu"
    init: str = "torch"

    def __call__(self, rngs: nnx.Rngs) -> MLP:
        return MLP(self.in_features, self.hidden, self.out_features, self.activation,
                   self.init, rngs=rngs)


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, dict[str, Any]]:
    """The static structure of ``model`` and its parameters as a plain nested dict of arrays."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def merge_params(graphdef: nnx.GraphDef, params: dict[str, Any]) -> nnx.Module:
    """The module again, holding ``params``."""
    return nnx.merge(graphdef, nnx.State(params))


def apply(graphdef: nnx.GraphDef, params: dict[str, Any], x: jax.Array) -> jax.Array:
    """The model's output on ``x``; pure, so it can be traced, differentiated and vmapped."""
    return merge_params(graphdef, params)(x)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy of integer labels (torch's ``nn.CrossEntropyLoss()``).

    With ``mask`` the mean runs over the rows where it is 1 (the padded rows of a short
    last batch count for nothing).
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    # A one-hot product rather than a gather: elementwise, so XLA fuses it (faster on CPU).
    nll = -jnp.sum(logp * jax.nn.one_hot(labels, logits.shape[-1], dtype=logp.dtype), axis=-1)
    if mask is None:
        return jnp.mean(nll)
    return jnp.sum(nll * mask) / jnp.sum(mask)


def l2_penalty(params: Any) -> jax.Array:
    """``0.5 * sum(w ** 2)`` over the weight matrices (``kernel`` leaves), not the biases."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    squares = [
        jnp.sum(jnp.square(leaf))
        for path, leaf in leaves
        if getattr(path[-1], "key", None) == "kernel"
    ]
    return 0.5 * sum(squares, jnp.zeros([], jnp.float32))


def loss_and_metrics(
    graphdef: nnx.GraphDef,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array | None = None,
    l2: float | jax.Array = 0.0,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """The training objective ``cross_entropy + l2 * l2_penalty`` and, as metrics, the
    cross-entropy alone and the number of correct predictions (masked rows excluded)."""
    logits = apply(graphdef, params, x)
    ce = cross_entropy(logits, y, mask)
    hit = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    correct = jnp.sum(hit if mask is None else hit * mask)
    loss = ce if isinstance(l2, int | float) and l2 == 0 else ce + l2 * l2_penalty(params)
    return loss, (ce, correct)
