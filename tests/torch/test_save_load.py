"""Save/load without unpickling code: onto a fresh fp32 model, or from the TorchScript archive."""

from __future__ import annotations

import json

import pytest
import torch

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_core.errors import ModelError

from . import models


@pytest.fixture(scope="module")
def static_q(cnn, calib):
    return quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)


def _outputs(model, digits):
    with torch.no_grad():
        return model(torch.from_numpy(digits.x_test[:200]))


def test_load_onto_a_fresh_fp32_model_gives_identical_outputs(static_q, digits, tmp_path):
    static_q.save(tmp_path / "q")
    files = json.loads((tmp_path / "q" / "inc.json").read_text())["files"]
    assert {"weights.pt", "torch.json", "model.ts"} <= set(files)
    # the state dict is plain tensors: it loads with weights_only=True (no code unpickled)
    state = torch.load(tmp_path / "q" / "weights.pt", weights_only=True)
    assert any(str(v.dtype).startswith("torch.q") for v in state.values() if torch.is_tensor(v))

    torch.manual_seed(123)  # different random fp32 weights: they must all be replaced
    loaded = load(tmp_path / "q", model=models.DigitsCNN())
    assert loaded.plan == static_q.plan
    assert torch.equal(_outputs(loaded.model, digits), _outputs(static_q.model, digits))


def test_load_without_the_model_uses_torchscript(static_q, digits, tmp_path):
    static_q.save(tmp_path / "q")
    loaded = load(tmp_path / "q")
    assert isinstance(loaded.model, torch.jit.ScriptModule)
    assert torch.equal(_outputs(loaded.model, digits), _outputs(static_q.model, digits))


def test_dynamic_and_eager_models_round_trip(digits, tmp_path):
    branchy = models.trained_cnn(digits, models.BranchyCNN)
    calib = digits.batches("train", 50)[:2]
    for approach in ("dynamic", "static"):
        q = quantization.fit(
            branchy, PostTrainingQuantConfig(approach=approach), calib_dataloader=calib
        )
        q.save(tmp_path / approach)
        loaded = load(tmp_path / approach, model=models.BranchyCNN())
        assert torch.equal(_outputs(loaded.model, digits), _outputs(q.model, digits))


def test_loading_onto_the_wrong_architecture_is_a_clear_error(static_q, tmp_path):
    static_q.save(tmp_path / "q")
    with pytest.raises(ModelError, match="same fp32 architecture"):
        load(tmp_path / "q", model=torch.nn.Sequential(torch.nn.Linear(64, 10)))
