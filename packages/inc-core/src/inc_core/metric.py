"""Built-in evaluation metrics for ``eval_dataloader`` + ``eval_metric``, in numpy.

``METRICS(framework)`` is INC's entry point: a dict of metric classes, the same numpy classes for
every framework (predictions arrive as numpy-convertible arrays; torch, TensorFlow and MXNet
tensors are converted by duck typing, without importing a framework)::

    top1 = METRICS("pytorch")["topk"]()

Every metric follows one protocol, which is also all a user's own metric object needs:
``reset()`` before an evaluation, ``update(preds, labels)`` per batch, ``result()`` at the end.
``higher_is_better`` (True unless it is an error or a loss) tells tuning which way is better.

Semantics (streaming: counts are accumulated, so several ``update`` calls equal one):

* ``topk`` (``k=1``): fraction of samples whose label is among the ``k`` highest scores. Preds are
  scores ``(N, C)`` (or ``(C,)`` for one sample) or, for ``k=1``, class ids ``(N,)``.
* ``Accuracy``: fraction of labels predicted exactly. Scores ``(N, C)`` are turned into class ids
  by argmax, one-hot labels ``(N, C)`` too; same-shaped multi-label arrays compare element-wise.
* ``Loss``: the mean of the preds (per-sample losses); labels are ignored.
* ``MAE``, ``MSE``, ``RMSE``: over all elements of preds - labels (against 0 with
  ``compare_label=False``).
* ``F1``, ``Precision``, ``Recall``: classification scores on class ids (scores and one-hot
  labels are argmaxed as for Accuracy). ``average="auto"`` (default) is binary (positive class
  ``pos_label=1``) when no class id above 1 was seen in labels or predicted ids, else macro: the unweighted mean over the
  classes that occur in labels or preds, as scikit-learn's ``average="macro"``. ``"binary"``,
  ``"macro"`` and ``"micro"`` force one. INC's own ``F1`` is SQuAD's token F1 for question
  answering; ours is the classification score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from . import backend as registry
from . import first_party
from .errors import ConfigError, DataError, not_allowed

#: INC's framework names (backend spellings included) -> the framework, for inc's own plugins;
#: all share the numpy metrics. An installed plugin's ``Backend.framework`` is taken too.
FRAMEWORKS: dict[str, str] = first_party.FRAMEWORKS


@runtime_checkable
class Metric(Protocol):
    """What the core calls on an ``eval_metric``: reset, then update per batch, then result."""

    def reset(self) -> None: ...

    def update(self, preds: Any, labels: Any) -> None: ...

    def result(self) -> Any: ...


def to_numpy(value: Any) -> NDArray[Any]:
    """``value`` as a numpy array: torch/TF/MXNet tensors (by duck typing), lists, scalars."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "asnumpy"):  # mxnet NDArray
        return np.asarray(value.asnumpy())
    if hasattr(value, "detach"):  # torch: leave autograd, move to host
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
    if hasattr(value, "numpy"):  # torch, TF eager
        return np.asarray(value.numpy())
    if isinstance(value, (list, tuple)) and any(
        hasattr(v, attr) for v in value for attr in ("numpy", "asnumpy", "detach")
    ):
        return np.asarray([to_numpy(v) for v in value])
    return np.asarray(value)


class BaseMetric:
    """A streaming metric: ``reset()``, ``update(preds, labels)`` per batch, ``result()``."""

    higher_is_better: ClassVar[bool] = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen; called before each evaluation."""
        raise NotImplementedError

    def update(self, preds: Any, labels: Any) -> None:
        """Fold one batch of predictions and labels into the metric."""
        raise NotImplementedError

    def result(self) -> float:
        """The metric over every batch since the last ``reset()``."""
        raise NotImplementedError

    def _empty(self) -> DataError:
        return DataError(
            f"{type(self).__name__}.result() before any sample: update(preds, labels) was never "
            "called (is the evaluation dataloader empty?)"
        )


def _class_ids(values: NDArray[Any], what: str) -> NDArray[np.int64]:
    if values.size and (
        not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0
    ):
        raise DataError(
            f"{what} must be non-negative class ids, or scores (N, C) to take the argmax of; "
            f"got values such as {values.ravel()[:5]}"
        )
    return values.astype(np.int64)


def _is_one_hot(labels: NDArray[Any]) -> bool:
    return (
        labels.ndim >= 2
        and labels.shape[-1] > 1
        and bool(np.all((labels == 0) | (labels == 1)))
        and bool(np.all(labels.sum(axis=-1) == 1))
    )


def _predicted_classes(preds: Any, labels: Any) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(predicted ids, label ids) of the same shape: scores and one-hot labels are argmaxed."""
    p, y = to_numpy(preds), to_numpy(labels)
    if _is_one_hot(y):
        y = y.argmax(axis=-1)
    if p.ndim == y.ndim + 1 and p.shape[-1] > 1:
        p = p.argmax(axis=-1)
    if p.shape != y.shape and p.size == y.size:  # (N, 1) against (N,)
        p = p.reshape(y.shape)
    if p.shape != y.shape:
        raise DataError(
            f"preds of shape {p.shape} do not match labels of shape {y.shape}; give class ids "
            "shaped like the labels, or scores (N, C) for labels (N,) or one-hot (N, C)"
        )
    return _class_ids(p, "preds"), _class_ids(y, "labels")


class TopK(BaseMetric):
    """Fraction of samples whose label is among the ``k`` highest-scoring classes."""

    def __init__(self, k: int = 1) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"topk k={k!r} must be a positive integer")
        self.k = k
        super().__init__()

    def reset(self) -> None:
        self.correct = 0
        self.samples = 0

    def update(self, preds: Any, labels: Any) -> None:
        scores, y = to_numpy(preds), to_numpy(labels)
        if _is_one_hot(y) and y.shape == scores.shape:
            y = y.argmax(axis=-1)
        y = _class_ids(y.reshape(-1), "labels")
        if scores.ndim == 1 and y.size == 1 and scores.size > 1:
            scores = scores.reshape(1, -1)  # one sample's scores
        if scores.ndim == 1:  # class ids
            if self.k != 1:
                raise DataError(
                    f"topk k={self.k} needs scores (N, C); got class ids {scores.shape}"
                )
            hits = _class_ids(scores, "preds") == y if scores.size == y.size else None
        else:
            scores = scores.reshape(-1, scores.shape[-1])
            if self.k > scores.shape[1]:
                raise DataError(f"topk k={self.k} but preds have {scores.shape[1]} classes")
            if scores.shape[0] != y.size:
                hits = None
            elif self.k == 1:
                hits = scores.argmax(axis=1) == y
            else:
                top = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
                hits = (top == y[:, None]).any(axis=1)
        if hits is None:
            raise DataError(
                f"topk: preds of shape {to_numpy(preds).shape} do not match "
                f"labels of shape {to_numpy(labels).shape}"
            )
        self.correct += int(hits.sum())
        self.samples += int(y.size)

    def result(self) -> float:
        if not self.samples:
            raise self._empty()
        return self.correct / self.samples


class Accuracy(BaseMetric):
    """Fraction of labels predicted exactly (class ids, scores, one-hot or multi-label)."""

    def reset(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, preds: Any, labels: Any) -> None:
        p, y = _predicted_classes(preds, labels)
        self.correct += int((p == y).sum())
        self.total += int(y.size)

    def result(self) -> float:
        if not self.total:
            raise self._empty()
        return self.correct / self.total


class Loss(BaseMetric):
    """The mean of the predictions, for a model whose output is its loss; labels are ignored."""

    higher_is_better = False

    def reset(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, preds: Any, labels: Any = None) -> None:
        values = to_numpy(preds).astype(np.float64)
        self.sum += float(values.sum())
        self.count += int(values.size)

    def result(self) -> float:
        if not self.count:
            raise self._empty()
        return self.sum / self.count


class _ErrorMetric(BaseMetric):
    """Mean of a power of |preds - labels| over every element."""

    higher_is_better = False
    power: ClassVar[int] = 1

    def __init__(self, compare_label: bool = True) -> None:
        self.compare_label = compare_label
        super().__init__()

    def reset(self) -> None:
        self.sum = 0.0
        self.count = 0

    def update(self, preds: Any, labels: Any) -> None:
        p = to_numpy(preds).astype(np.float64)
        if self.compare_label:
            y = to_numpy(labels).astype(np.float64)
            if p.shape != y.shape and p.size == y.size:
                p = p.reshape(y.shape)
            if p.shape != y.shape:
                raise DataError(
                    f"{type(self).__name__}: preds of shape {p.shape} do not match labels of "
                    f"shape {y.shape}"
                )
        else:
            y = np.zeros_like(p)
        self.sum += float((np.abs(p - y) ** self.power).sum())
        self.count += int(p.size)

    def result(self) -> float:
        if not self.count:
            raise self._empty()
        return self.sum / self.count


class MAE(_ErrorMetric):
    """Mean absolute error over all elements."""

    power = 1


class MSE(_ErrorMetric):
    """Mean squared error over all elements."""

    power = 2


class RMSE(MSE):
    """Square root of the mean squared error over all elements."""

    def result(self) -> float:
        return math.sqrt(super().result())


AVERAGES: tuple[str, ...] = ("auto", "binary", "macro", "micro")


class _ClassificationScore(BaseMetric):
    """Precision, recall or F1 from per-class true/false positive and false negative counts."""

    def __init__(self, average: str = "auto", pos_label: int = 1) -> None:
        if average not in AVERAGES:
            raise not_allowed("average", average, AVERAGES)
        self.average = average
        self.pos_label = pos_label
        super().__init__()

    def reset(self) -> None:
        self.tp = np.zeros(0, dtype=np.int64)
        self.fp = np.zeros(0, dtype=np.int64)
        self.fn = np.zeros(0, dtype=np.int64)

    def update(self, preds: Any, labels: Any) -> None:
        p, y = _predicted_classes(preds, labels)
        p, y = p.ravel(), y.ravel()
        n = max(len(self.tp), int(p.max(initial=-1)) + 1, int(y.max(initial=-1)) + 1)
        right = p == y
        counts = [
            np.bincount(p[right], minlength=n),  # true positives
            np.bincount(p[~right], minlength=n),  # false positives
            np.bincount(y[~right], minlength=n),  # false negatives
        ]
        for name, batch in zip(("tp", "fp", "fn"), counts, strict=True):
            total = np.zeros(n, dtype=np.int64)
            total[: len(getattr(self, name))] = getattr(self, name)
            setattr(self, name, total + batch)

    def _average(self) -> str:
        if self.average != "auto":
            return self.average
        return "binary" if len(self.tp) <= 2 else "macro"

    def result(self) -> float:
        tp, fp, fn = self.tp, self.fp, self.fn
        if not (tp.sum() + fn.sum()):
            raise self._empty()
        average = self._average()
        if average == "micro":
            return self._score(int(tp.sum()), int(fp.sum()), int(fn.sum()))
        if average == "binary":
            c = self.pos_label
            return self._score(*(int(a[c]) if c < len(a) else 0 for a in (tp, fp, fn)))
        seen = np.flatnonzero(tp + fp + fn)
        return float(np.mean([self._score(int(tp[c]), int(fp[c]), int(fn[c])) for c in seen]))

    @staticmethod
    def _score(tp: int, fp: int, fn: int) -> float:
        raise NotImplementedError


class Precision(_ClassificationScore):
    """tp / (tp + fp); 0 when nothing was predicted positive."""

    @staticmethod
    def _score(tp: int, fp: int, fn: int) -> float:
        return tp / (tp + fp) if tp + fp else 0.0


class Recall(_ClassificationScore):
    """tp / (tp + fn); 0 when the class never occurs."""

    @staticmethod
    def _score(tp: int, fp: int, fn: int) -> float:
        return tp / (tp + fn) if tp + fn else 0.0


class F1(_ClassificationScore):
    """2 tp / (2 tp + fp + fn), the harmonic mean of precision and recall; 0 when all are 0."""

    @staticmethod
    def _score(tp: int, fp: int, fn: int) -> float:
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


BUILTIN: dict[str, type[BaseMetric]] = {
    "topk": TopK,
    "Accuracy": Accuracy,
    "Loss": Loss,
    "MAE": MAE,
    "MSE": MSE,
    "RMSE": RMSE,
    "F1": F1,
    "Precision": Precision,
    "Recall": Recall,
}


class METRICS(dict[str, type]):  # INC spells it METRICS("pytorch")["topk"]()
    """The metric classes for ``framework``: ``METRICS("onnxrt")["topk"](k=5)``."""

    def __init__(self, framework: str) -> None:
        known = FRAMEWORKS
        if isinstance(framework, str) and framework not in known:
            known = registry.frameworks()  # a plugin's own framework: load the plugins
        if not isinstance(framework, str) or framework not in known:
            raise not_allowed("framework", framework, known)
        super().__init__(BUILTIN)
        self.framework = known[framework]

    @property
    def metrics(self) -> dict[str, type]:
        """INC spelling of the same mapping."""
        return dict(self)

    def register(self, name: str, metric_cls: type) -> None:
        """Add a metric class (one with reset/update/result) under ``name``."""
        if not all(callable(getattr(metric_cls, m, None)) for m in ("reset", "update", "result")):
            raise ConfigError(f"metric {name!r} must define reset(), update() and result()")
        self[name] = metric_cls


def check_metric(metric: Any, framework: str = "onnxrt") -> Metric:
    """``metric`` as an object the core can evaluate with, or a ``ConfigError`` saying why not.

    Accepts any object with ``reset``/``update``/``result`` (a built-in or the user's own), or
    INC's dict form naming one built-in metric: ``{"topk": 1}``, ``{"Accuracy": {}}``,
    ``{"F1": {"average": "macro"}}``.
    """
    if isinstance(metric, Mapping):
        return _from_config(metric, framework)
    if isinstance(metric, type):
        name = metric.__name__
        raise ConfigError(f"eval_metric is the class {name}; pass an instance: {name}()")
    missing = [m for m in ("reset", "update", "result") if not callable(getattr(metric, m, None))]
    if missing:
        raise ConfigError(
            f"eval_metric {type(metric).__name__} lacks {', '.join(missing)}(); a metric needs "
            "reset(), update(preds, labels) and result(), or use a built-in: "
            f"{', '.join(BUILTIN)}"
        )
    checked: Metric = metric
    return checked


def _from_config(config: Mapping[str, Any], framework: str) -> Metric:
    metrics = METRICS(framework)
    if len(config) != 1:
        raise ConfigError(f"a metric config names exactly one metric, got {list(config)}")
    ((name, options),) = config.items()
    if name not in metrics:
        raise not_allowed("metric", name, metrics)
    if options is None:
        options = {}
    elif not isinstance(options, Mapping):
        if name != "topk":
            raise ConfigError(f"metric {name!r} options must be a dict, got {options!r}")
        options = {"k": options}
    try:
        built: Metric = metrics[name](**options)
    except TypeError as exc:
        raise ConfigError(f"metric {name!r} does not take options {dict(options)}: {exc}") from exc
    return built


def higher_is_better(metric: Any) -> bool:
    """Whether larger results are better: the metric's ``higher_is_better``, else True."""
    return bool(getattr(metric, "higher_is_better", True))
