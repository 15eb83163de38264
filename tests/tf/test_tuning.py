"""Accuracy-aware tuning through the core loop on a Keras model."""

from __future__ import annotations

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.metric import METRICS
from inc_tf.runtime import TfLiteModel


def test_tuning_with_eval_dataloader_and_metric(cnn, digits):
    conf = PostTrainingQuantConfig(
        approach="static",
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01),
        tuning_criterion=TuningCriterion(max_trials=3),
    )
    evals = [(digits.x_test[i : i + 100], digits.y_test[i : i + 100]) for i in range(0, 397, 100)]
    q = quantization.fit(
        cnn,
        conf,
        calib_dataloader=digits.calib(),
        eval_dataloader=evals,
        eval_metric=METRICS("tensorflow")["topk"](),
    )
    assert isinstance(q.model, TfLiteModel)
    assert q.plan.quantized_ops()
    fp32 = digits.accuracy(lambda x: cnn(x, training=False))
    assert digits.accuracy(q.model) >= fp32 * 0.99


def test_tuning_falls_back_ops_when_the_goal_needs_it(cnn, digits):
    fp32 = digits.accuracy(lambda x: cnn(x, training=False))
    seen = []

    def eval_func(model) -> float:
        # a goal only an all-fp32 conv1 meets: reward candidates that keep conv1 in float
        if not isinstance(model, TfLiteModel):  # the fp32 baseline is the Keras model
            return digits.accuracy(lambda x: model(x, training=False))
        acc = digits.accuracy(model)
        conv_float = _conv1_is_float(model)
        seen.append(conv_float)
        return acc if conv_float else acc - 0.5

    conf = PostTrainingQuantConfig(
        approach="static",
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.05),
        tuning_criterion=TuningCriterion(max_trials=20),
    )
    q = quantization.fit(cnn, conf, calib_dataloader=digits.calib(), eval_func=eval_func)
    assert "conv1" in q.plan.float_ops()
    assert q.plan.quantized_ops()
    assert digits.accuracy(q.model) >= fp32 * 0.95
    assert any(seen) and not all(seen)


def _conv1_is_float(model: TfLiteModel) -> bool:
    interp = model._interpreter()
    tensors = interp.get_tensor_details()
    for op in interp._get_ops_details():
        if op["op_name"] == "CONV_2D":  # the first conv in execution order is conv1
            return tensors[op["outputs"][0]]["dtype"].__name__ == "float32"
    return False
