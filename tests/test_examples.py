"""The examples run: ``examples/learn_hyperparameters.py`` at tiny sizes."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learn_hyperparameters_lowers_the_validation_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few meta-steps lower the validation loss after training, the learned rate and weight
    decay stay positive and finite, and the meta-objective never reads the test rows (they are
    NaN here: a meta-loss that touched them would be NaN)."""
    example = load_example("learn_hyperparameters")
    real = example.load_iris()
    poisoned = real._replace(x_test=np.full_like(real.x_test, np.nan))
    monkeypatch.setattr(example, "load_iris", lambda: poisoned)
    out = example.main(epochs=3, meta_steps=4, verbose=False)
    losses = out["meta_losses"]
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    for name in ("lr", "weight_decay"):
        assert 0 < out["learned"][name] < math.inf
    # From a rate ten times too small, the validation loss asks for a larger one.
    assert out["learned"]["lr"] > out["initial"]["lr"]
