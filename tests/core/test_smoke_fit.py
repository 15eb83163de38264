from __future__ import annotations

import numpy as np

from inc_core import PostTrainingQuantConfig, load, quantization


def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).mean())


def test_fit_quantizes_every_op_and_keeps_accuracy(mlp, blobs, calib_loader, tmp_path):
    x, y = blobs
    q = quantization.fit(
        mlp, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib_loader
    )
    assert q.plan.quantized_ops() == ["fc1", "fc2"]
    assert abs(accuracy(q.model, x, y) - accuracy(mlp, x, y)) < 0.02
    q.save(tmp_path / "out")
    loaded = load(tmp_path / "out")
    np.testing.assert_array_equal(loaded.model(x), q.model(x))
