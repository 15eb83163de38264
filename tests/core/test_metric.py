"""Built-in metrics against values worked out by hand, streaming, and the metric protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.errors import ConfigError, DataError
from inc_core.metric import (
    F1,
    FRAMEWORKS,
    MAE,
    METRICS,
    MSE,
    RMSE,
    Accuracy,
    Loss,
    Precision,
    Recall,
    TopK,
    check_metric,
    higher_is_better,
)

SCORES = np.array(
    [
        [0.1, 0.7, 0.2],  # top1 1, top2 {1, 2}
        [0.5, 0.3, 0.2],  # top1 0, top2 {0, 1}
        [0.2, 0.3, 0.5],  # top1 2, top2 {2, 1}
        [0.9, 0.06, 0.04],  # top1 0, top2 {0, 1}
    ]
)
SCORE_LABELS = np.array([1, 1, 2, 2])  # top1 hits rows 0, 2; top2 hits rows 0, 1, 2


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_metrics_for_every_framework_name(framework: str) -> None:
    metrics = METRICS(framework)
    for name in ("topk", "Accuracy", "Loss", "MAE", "MSE", "RMSE", "F1", "Precision", "Recall"):
        assert isinstance(metrics[name], type)
    top1 = metrics["topk"]()
    top1.update(SCORES, SCORE_LABELS)
    assert top1.result() == 0.5


def test_unknown_framework_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"'onnxrt'.*'pytorch'.*did you mean 'pytorch'"):
        METRICS("pytorh")


def test_topk_by_hand() -> None:
    top1, top2 = TopK(), TopK(k=2)
    top1.update(SCORES, SCORE_LABELS)
    top2.update(SCORES, SCORE_LABELS)
    assert top1.result() == 2 / 4
    assert top2.result() == 3 / 4


@pytest.mark.parametrize(
    "labels",
    [SCORE_LABELS, SCORE_LABELS[:, None], np.eye(3)[SCORE_LABELS], SCORE_LABELS.tolist()],
    ids=["ids", "column", "one-hot", "list"],
)
def test_topk_label_forms(labels: object) -> None:
    top1 = TopK()
    top1.update(SCORES.tolist(), labels)
    assert top1.result() == 0.5


def test_topk_streams_and_resets() -> None:
    top2 = TopK(k=2)
    top2.update(SCORES[:1], SCORE_LABELS[:1])
    top2.update(SCORES[1:3], SCORE_LABELS[1:3])
    top2.update(SCORES[3], SCORE_LABELS[3])  # one sample's scores, a scalar label
    assert top2.result() == 3 / 4
    top2.reset()
    with pytest.raises(DataError, match="never called"):
        top2.result()


def test_topk_on_class_ids_and_its_errors() -> None:
    top1 = TopK()
    top1.update(np.array([1, 0, 2, 0]), SCORE_LABELS)
    assert top1.result() == 0.5
    with pytest.raises(DataError, match="needs scores"):
        TopK(k=2).update(np.array([1, 0, 2, 0]), SCORE_LABELS)
    with pytest.raises(DataError, match="3 classes"):
        TopK(k=4).update(SCORES, SCORE_LABELS)
    with pytest.raises(DataError, match="do not match"):
        TopK().update(SCORES, SCORE_LABELS[:3])
    with pytest.raises(ConfigError, match="positive integer"):
        TopK(k=0)


@pytest.mark.parametrize(
    ("preds", "labels"),
    [
        ([1, 0, 2, 0], [1, 1, 2, 2]),  # class ids
        (SCORES, [1, 1, 2, 2]),  # scores: argmax
        (SCORES, np.eye(3)[[1, 1, 2, 2]]),  # one-hot labels
        ([[1], [0], [2], [0]], [1, 1, 2, 2]),  # (N, 1) against (N,)
    ],
)
def test_accuracy_by_hand(preds: object, labels: object) -> None:
    accuracy = Accuracy()
    accuracy.update(preds, labels)
    assert accuracy.result() == 0.5


def test_accuracy_multi_label_compares_element_wise() -> None:
    accuracy = Accuracy()
    accuracy.update([[1, 0, 1], [0, 1, 1]], [[1, 1, 1], [0, 1, 0]])
    assert accuracy.result() == 4 / 6


def test_accuracy_refuses_probabilities_and_mismatched_shapes() -> None:
    with pytest.raises(DataError, match="class ids"):
        Accuracy().update([0.2, 0.9], [0, 1])
    with pytest.raises(DataError, match="do not match"):
        Accuracy().update([0, 1, 1], [0, 1])


def test_loss_is_the_mean_of_the_predictions() -> None:
    loss = Loss()
    loss.update(np.array([1.0, 2.0, 3.0]), None)
    loss.update(np.array([4.0]), None)
    assert loss.result() == 2.5
    assert Loss.higher_is_better is False


def test_errors_by_hand_over_every_element() -> None:
    # preds - labels = [-1, 0, 2, -4]
    preds, labels = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[2.0, 2.0], [1.0, 8.0]])
    mae, mse, rmse = MAE(), MSE(), RMSE()
    for metric in (mae, mse, rmse):
        metric.update(preds[:1], labels[:1])
        metric.update(preds[1:], labels[1:])
    assert mae.result() == 7 / 4
    assert mse.result() == 21 / 4
    assert rmse.result() == pytest.approx(math.sqrt(21 / 4))


def test_errors_against_zero_and_column_shapes() -> None:
    mae, mse = MAE(compare_label=False), MSE(compare_label=False)
    for metric in (mae, mse):
        metric.update([3.0, -4.0], None)
    assert (mae.result(), mse.result()) == (3.5, 12.5)
    column = MAE()
    column.update([[1.0], [2.0]], [2.0, 2.0])  # (N, 1) against (N,)
    assert column.result() == 0.5
    with pytest.raises(DataError, match="do not match"):
        MSE().update([1.0, 2.0, 3.0], [1.0, 2.0])


def test_binary_f1_precision_recall_by_hand() -> None:
    labels = [1, 1, 0, 0, 1, 0]
    preds = [1, 0, 0, 1, 1, 0]  # class 1: tp 2 (0, 4), fp 1 (3), fn 1 (1)
    for cls in (F1, Precision, Recall):
        metric = cls()
        metric.update(preds, labels)
        assert metric.result() == pytest.approx(2 / 3)
    # the positive class can move: class 0 has tp 2 (2, 5), fp 1 (1), fn 1 (3)
    recall0 = Recall(pos_label=0)
    recall0.update(preds, labels)
    assert recall0.result() == pytest.approx(2 / 3)


MULTI_LABELS = [0, 1, 2, 2, 1, 0]
MULTI_PREDS = [0, 2, 2, 2, 1, 1]
# class 0: tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3
# class 1: tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2
# class 2: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 4/5


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (F1, (2 / 3 + 1 / 2 + 4 / 5) / 3),
        (Precision, (1 + 1 / 2 + 2 / 3) / 3),
        (Recall, (1 / 2 + 1 / 2 + 1) / 3),
    ],
)
def test_multiclass_scores_are_macro_averaged(cls: type, expected: float) -> None:
    one = cls()
    one.update(MULTI_PREDS, MULTI_LABELS)
    streamed = cls()
    for start in range(0, 6, 2):
        streamed.update(MULTI_PREDS[start : start + 2], MULTI_LABELS[start : start + 2])
    assert one.result() == pytest.approx(expected)
    assert streamed.result() == pytest.approx(expected)


def test_f1_micro_and_scores_with_one_hot_labels() -> None:
    micro = F1(average="micro")
    micro.update(MULTI_PREDS, MULTI_LABELS)
    assert micro.result() == pytest.approx(4 / 6)  # micro F1 of single-label data = accuracy
    scores = np.eye(3)[MULTI_PREDS] * 0.8 + 0.1
    macro = F1()
    macro.update(scores, np.eye(3)[MULTI_LABELS])
    assert macro.result() == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    with pytest.raises(ConfigError, match="'macro'"):
        F1(average="weighted")


def test_higher_is_better_per_metric() -> None:
    metrics = METRICS("onnxrt")
    worse_when_higher = {"Loss", "MAE", "MSE", "RMSE"}
    for name, cls in metrics.items():
        assert cls.higher_is_better is (name not in worse_when_higher)
        assert higher_is_better(cls() if name != "topk" else cls(k=1)) is cls.higher_is_better


class MaxError:
    """A user's own metric: no base class, just the protocol."""

    def reset(self) -> None:
        self.worst = 0.0

    def update(self, preds: object, labels: object) -> None:
        diff = np.abs(np.asarray(preds, dtype=float) - np.asarray(labels, dtype=float))
        self.worst = max(self.worst, float(diff.max()))

    def result(self) -> float:
        return self.worst


def test_check_metric_accepts_builtins_and_user_objects() -> None:
    top1 = TopK()
    assert check_metric(top1) is top1
    mine = MaxError()
    assert check_metric(mine) is mine
    assert higher_is_better(mine) is True


def test_check_metric_builds_inc_dict_configs() -> None:
    top5 = check_metric({"topk": 5})
    assert isinstance(top5, TopK) and top5.k == 5
    f1 = check_metric({"F1": {"average": "macro"}}, framework="pytorch")
    assert isinstance(f1, F1) and f1.average == "macro"
    assert isinstance(check_metric({"Accuracy": None}), Accuracy)


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (TopK, r"pass an instance: TopK\(\)"),
        (object(), r"lacks reset, update, result\(\)"),
        ({"Top1": {}}, "'topk'"),
        ({"topk": 1, "F1": {}}, "exactly one"),
        ({"F1": {"beta": 2}}, "does not take"),
    ],
)
def test_check_metric_explains_what_is_wrong(metric: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_metric(metric)


def test_register_adds_a_user_metric_class() -> None:
    metrics = METRICS("tensorflow")
    metrics.register("MaxError", MaxError)
    assert metrics["MaxError"] is MaxError and "MaxError" not in METRICS("tensorflow")
    with pytest.raises(ConfigError, match="reset"):
        metrics.register("Broken", int)


def test_fit_evaluates_with_a_builtin_metric(mlp, blobs, calib_loader, tmp_path) -> None:
    x, y = blobs
    eval_loader = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 600, 100)]
    top1 = METRICS("onnxrt")["topk"]()
    # objective="accuracy": the numpy reference backend's fake quantization is slower than fp32
    conf = PostTrainingQuantConfig(
        approach="static", tuning_criterion=TuningCriterion(objective="accuracy")
    )
    q = quantization.fit(
        mlp,
        conf,
        calib_dataloader=calib_loader,
        eval_dataloader=eval_loader,
        eval_metric=top1,
        workspace=tmp_path,
    )
    # the baseline the tuner measured through TopK is the fp32 model's top-1 accuracy
    fp32 = float((mlp(x).argmax(1) == y).mean())
    assert q.report["tuning"]["baseline"]["accuracy"] == pytest.approx(fp32)
    top1.reset()
    for inputs, labels in eval_loader:
        top1.update(q.model(inputs), labels)
    assert top1.result() == pytest.approx(float((q.model(x).argmax(1) == y).mean()))
