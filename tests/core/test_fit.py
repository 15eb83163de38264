"""quantization.fit: argument rules, approach selection, the result, and the user's model."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from inc_core import (
    PostTrainingQuantConfig,
    QuantizationAwareTrainingConfig,
    QuantizedModel,
    quantization,
)
from inc_core import backend as registry
from inc_core.errors import ConfigError, DataError, DeviceNotAvailable, ModelError
from inc_core.space import OpCapability

from .reference_backend import NumpyMLP, ReferenceBackend


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((model(x).argmax(1) == y).mean())


def snapshot(model: NumpyMLP) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(layer.weight.copy(), layer.bias.copy()) for layer in model.layers]


@pytest.fixture
def backend_class() -> Iterator[list[type[ReferenceBackend]]]:
    """Register a ReferenceBackend subclass for one test: ``backend_class.append(cls)``."""
    added: list[type[ReferenceBackend]] = []
    yield added
    for cls in added:
        registry.unregister(cls.name)


def use(added: list[type[ReferenceBackend]], cls: type[ReferenceBackend]) -> None:
    registry.register(cls)
    added.append(cls)


def test_without_evaluation_fit_quantizes_once_and_reports_each_op(mlp, blobs, calib_loader):
    x, y = blobs
    q = quantization.fit(
        mlp, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib_loader
    )
    assert isinstance(q, QuantizedModel)
    assert q.backend == "reference"
    assert q.plan.quantized_ops() == ["fc1", "fc2"]
    assert q.model is not mlp
    assert all(layer.input_qparams is not None for layer in q.model.layers)
    assert abs(accuracy(q.model, x, y) - accuracy(mlp, x, y)) < 0.02
    rows = q.report["per_op"]
    assert [r["op"] for r in rows] == ["fc1", "fc2"]
    sqnr = rows[0].pop("sqnr_db")
    assert rows[0] == {
        "op": "fc1",
        "type": "Dense",
        "approach": "static",
        "activation": "uint8",
        "weight": "int8",
        "runs_as": "Dense (int8)",
    }
    assert 20 < sqnr < 60  # the op's int8 output against fp32 on a held-out batch
    assert (q.report["ops"], q.report["quantized_ops"], q.report["float_ops"]) == (2, 2, 0)
    assert q.report["quantization_seconds"] >= 0
    json.dumps(q.report)  # JSON-ready
    assert q.config["approach"] == "static"
    np.testing.assert_array_equal(q(x), q.model(x))


def test_the_users_model_is_never_modified(mlp, blobs, calib_loader):
    before = snapshot(mlp)
    layers = mlp.layers
    meta = copy.deepcopy(mlp.meta)
    for approach in ("static", "dynamic", "auto"):
        q = quantization.fit(
            mlp, PostTrainingQuantConfig(approach=approach), calib_dataloader=calib_loader
        )
        assert q.model is not mlp
    assert mlp.layers is layers
    assert mlp.meta == meta
    for layer, (weight, bias) in zip(mlp.layers, before, strict=True):
        np.testing.assert_array_equal(layer.weight, weight)
        np.testing.assert_array_equal(layer.bias, bias)
        assert layer.input_qparams is None and layer.weight_qparams is None


def test_auto_without_calibration_data_is_dynamic(mlp):
    q = quantization.fit(mlp)  # conf defaults to PostTrainingQuantConfig(approach="auto")
    assert {op.approach for op in q.plan.ops.values()} == {"dynamic"}
    assert all(layer.dynamic for layer in q.model.layers)


def test_auto_with_calibration_data_prefers_static(mlp, calib_loader):
    q = quantization.fit(mlp, PostTrainingQuantConfig(), calib_dataloader=calib_loader)
    assert {op.approach for op in q.plan.ops.values()} == {"static"}


def test_dynamic_ignores_calibration_data_it_does_not_need(mlp, calib_loader):
    q = quantization.fit(
        mlp, PostTrainingQuantConfig(approach="dynamic"), calib_dataloader=calib_loader
    )
    assert {op.approach for op in q.plan.ops.values()} == {"dynamic"}


def test_static_without_calibration_data_is_a_clear_config_error(mlp):
    with pytest.raises(ConfigError, match=r"approach='static' needs calibration data.*dynamic"):
        quantization.fit(mlp, PostTrainingQuantConfig(approach="static"))


def test_empty_calibration_loader_is_a_data_error(mlp):
    with pytest.raises(DataError, match="calib_dataloader yielded no samples"):
        quantization.fit(mlp, PostTrainingQuantConfig(approach="static"), calib_dataloader=[])


def test_eval_func_and_eval_dataloader_together_is_an_error(mlp, calib_loader):
    with pytest.raises(ConfigError, match="either eval_func or eval_dataloader"):
        quantization.fit(
            mlp,
            PostTrainingQuantConfig(),
            calib_dataloader=calib_loader,
            eval_func=lambda model: 1.0,
            eval_dataloader=calib_loader,
            eval_metric=object(),
        )
    with pytest.raises(ConfigError, match="not both"):
        quantization.fit(mlp, eval_func=lambda model: 1.0, eval_metric=object())


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [({"eval_dataloader": []}, "eval_metric"), ({"eval_metric": 1}, "eval_dataloader")],
)
def test_eval_dataloader_and_eval_metric_go_together(mlp, kwargs, missing):
    with pytest.raises(ConfigError, match=f"{missing} is missing"):
        quantization.fit(mlp, PostTrainingQuantConfig(), **kwargs)


def test_a_qat_config_points_to_prepare_compression(mlp):
    with pytest.raises(ConfigError, match="prepare_compression"):
        quantization.fit(mlp, QuantizationAwareTrainingConfig())  # type: ignore[arg-type]


def test_a_plain_dict_is_not_a_config(mlp):
    with pytest.raises(ConfigError, match="PostTrainingQuantConfig, got dict"):
        quantization.fit(mlp, {"approach": "static"})  # type: ignore[arg-type]


def test_a_config_backend_the_framework_lacks_is_an_error(mlp):
    with pytest.raises(ConfigError, match=r"backend='ipex' is not available for numpy.*'default'"):
        quantization.fit(mlp, PostTrainingQuantConfig(backend="ipex", approach="dynamic"))


def test_check_config_lets_a_backend_refuse_a_device(mlp, backend_class):
    class GpuOnly(ReferenceBackend):
        name = "gpuonly"
        priority = 0
        config_backends = ("default", "onnxrt_cuda_ep")

        def check_config(self, conf: Any) -> None:
            if conf.device == "gpu":
                raise DeviceNotAvailable("device='gpu' but no GPU is visible here")

    use(backend_class, GpuOnly)
    with pytest.raises(DeviceNotAvailable, match="no GPU"):
        quantization.fit(mlp, PostTrainingQuantConfig(backend="onnxrt_cuda_ep", device="gpu"))


def test_a_model_without_quantizable_ops_is_a_model_error():
    with pytest.raises(ModelError, match="no op that numpy can quantize"):
        quantization.fit(NumpyMLP(()), PostTrainingQuantConfig(approach="dynamic"))


def test_auto_without_data_on_a_backend_without_dynamic_kernels_says_to_calibrate(
    mlp, backend_class
):
    class StaticOnly(ReferenceBackend):
        name = "staticonly"
        priority = 0

        def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
            return {} if approach == "dynamic" else super().capability(approach, device)

    use(backend_class, StaticOnly)
    with pytest.raises(ModelError, match=r"approach='auto' without calibration.*calib_dataloader"):
        quantization.fit(mlp)


def test_calib_func_needs_backend_support(mlp):
    with pytest.raises(NotImplementedError, match="needs calib_dataloader"):
        quantization.fit(
            mlp, PostTrainingQuantConfig(approach="static"), calib_func=lambda model: None
        )


def test_fit_with_evaluation_hands_over_to_tuning(mlp, calib_loader, monkeypatch):
    """The seam: with an evaluation, fit delegates to inc_core.tuning.tune with a ready session."""
    from inc_core import tuning

    received: dict[str, Any] = {}

    def fake_tune(session: Any, **kwargs: Any) -> QuantizedModel:
        received.update(kwargs, session=session)
        plan = session.default_plan
        return session.wrap(session.build(plan), plan)

    monkeypatch.setattr(tuning, "tune", fake_tune)
    q = quantization.fit(
        mlp, PostTrainingQuantConfig(), calib_dataloader=calib_loader, eval_func=lambda m: 1.0
    )
    assert isinstance(q, QuantizedModel)
    assert received["eval_func"] is not None and received["eval_dataloader"] is None
    session = received["session"]
    assert session.backend.name == "reference"
    # calibration_sampling_size defaults to 100: two of the four 50-sample batches
    assert session.calib_inputs is not None and len(session.calib_inputs) == 2
    assert [s.op.name for s in session.spaces] == ["fc1", "fc2"]


def test_eval_metric_direction_must_agree_with_the_criterion(mlp, calib_loader):
    from inc_core.metric import METRICS

    with pytest.raises(ConfigError, match="higher_is_better"):
        quantization.fit(
            mlp,
            PostTrainingQuantConfig(approach="static"),
            calib_dataloader=calib_loader,
            eval_dataloader=calib_loader,
            eval_metric=METRICS("onnxrt")["MSE"](),
        )


def test_eval_metric_without_the_protocol_is_rejected_before_quantizing(mlp, calib_loader):
    with pytest.raises(ConfigError, match="reset"):
        quantization.fit(
            mlp,
            PostTrainingQuantConfig(approach="static"),
            calib_dataloader=calib_loader,
            eval_dataloader=calib_loader,
            eval_metric=object(),
        )
