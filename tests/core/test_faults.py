"""Faults around tuning and saving (issue 13): stale resumes, coerced accuracies, an eval_func
that changes its model, damaged histories, killed saves, a workspace that is a file, NaN."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inc_core
from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.errors import ConfigError, DataError
from inc_core.tuning import TuningError

from .reference_backend import NumpyMLP
from .tuning_backend import Scripted, calib_batches, toy_net

ROOT = Path(__file__).resolve().parents[2]


def tuning_conf(max_trials: int = 10) -> PostTrainingQuantConfig:
    return PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.05),
        tuning_criterion=TuningCriterion(objective="accuracy", max_trials=max_trials),
    )


def accuracy_on(x: np.ndarray, y: np.ndarray):
    def accuracy(model: Any) -> float:
        return float((np.asarray(model(x)).argmax(1) == y).mean())

    return accuracy


class Accuracy:
    """Top-1 accuracy on the blobs' test half; a module-level class so its identity is stable."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.calls = 0

    def __call__(self, model: Any) -> float:
        self.calls += 1
        return float((np.asarray(model(self.x)).argmax(1) == self.y).mean())


class OtherAccuracy(Accuracy):
    pass


class ZeroingAccuracy(Accuracy):
    """Scores the model, then zeroes its weights in place (a careless eval_func)."""

    def __call__(self, model: Any) -> float:
        score = super().__call__(model)
        for layer in model.layers:
            layer.weight[...] = 0.0
            layer.bias[...] = 0.0
        return score


def zeroed(mlp: NumpyMLP) -> NumpyMLP:
    """The same graph with other weights (a different model a user might resume with)."""
    layers = tuple(
        replace(layer, weight=np.zeros_like(layer.weight), bias=np.zeros_like(layer.bias))
        for layer in mlp.layers
    )
    return replace(mlp, layers=layers)


class Top1:
    higher_is_better = True

    def reset(self) -> None:
        self.hits, self.count = 0, 0

    def update(self, pred: Any, label: Any) -> None:
        self.hits += int((np.asarray(pred).argmax(1) == np.asarray(label)).sum())
        self.count += len(label)

    def result(self) -> float:
        return self.hits / max(self.count, 1)


# -- resume refuses a run it did not record (item 2) -----------------------------------------


@pytest.fixture
def recorded(tmp_path, mlp, blobs, calib_loader) -> dict[str, Any]:
    x, y = blobs
    evaluate = Accuracy(x[300:], y[300:])
    quantization.fit(
        mlp, tuning_conf(), calib_loader, eval_func=evaluate, workspace=tmp_path / "ws"
    )
    return {"ws": tmp_path / "ws", "eval": evaluate, "x": x, "y": y}


def test_resume_with_other_weights_is_refused(recorded, mlp, calib_loader):
    evaluate = Accuracy(recorded["x"][300:], recorded["y"][300:])
    with pytest.raises(ConfigError, match=r"the model's weights differ \(same ops, other values\)"):
        quantization.fit(
            zeroed(mlp), tuning_conf(), calib_loader, eval_func=evaluate,
            resume_from=recorded["ws"], workspace=recorded["ws"].parent / "new",
        )  # fmt: skip
    assert evaluate.calls == 0, "refused before any evaluation"
    # the same model, data and evaluation resume (and nothing is evaluated again)
    again = quantization.fit(
        copy.deepcopy(mlp), tuning_conf(), calib_loader, eval_func=evaluate,
        resume_from=recorded["ws"], workspace=recorded["ws"].parent / "again",
    )  # fmt: skip
    assert evaluate.calls == 0 and again.report["tuning"]["trials_used"] >= 1


def test_resume_with_other_calibration_data_or_evaluation_is_refused(recorded, mlp, blobs):
    x, y = recorded["x"], recorded["y"]
    other_calib = [(x[i : i + 50], y[i : i + 50]) for i in range(200, 400, 50)]
    same_calib = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 200, 50)]
    cases = [
        (other_calib, Accuracy(x[300:], y[300:]), "the calibration data differ"),
        (
            same_calib,
            OtherAccuracy(x[300:], y[300:]),
            "the evaluation was eval_func tests.core.test_faults.Accuracy, now eval_func "
            "tests.core.test_faults.OtherAccuracy",
        ),
    ]
    for calib, evaluate, words in cases:
        with pytest.raises(ConfigError, match=words) as info:
            quantization.fit(
                mlp, tuning_conf(), calib, eval_func=evaluate, resume_from=recorded["ws"],
                workspace=recorded["ws"].parent / "new",
            )  # fmt: skip
        assert "weights" not in str(info.value), "only what changed is named"
        assert evaluate.calls == 0


def test_resume_with_another_eval_dataloader_is_refused(tmp_path, mlp, blobs, calib_loader):
    x, y = blobs
    first = [(x[i : i + 100], y[i : i + 100]) for i in range(300, 600, 100)]
    quantization.fit(
        mlp, tuning_conf(), calib_loader, eval_dataloader=first, eval_metric=Top1(),
        workspace=tmp_path,
    )  # fmt: skip
    other = [(x[i : i + 100], y[i : i + 100]) for i in range(200, 500, 100)]
    with pytest.raises(ConfigError, match="the first evaluation batch differs"):
        quantization.fit(
            mlp, tuning_conf(), calib_loader, eval_dataloader=other, eval_metric=Top1(),
            resume_from=tmp_path, workspace=tmp_path / "new",
        )  # fmt: skip


def test_a_history_of_the_old_format_is_refused(recorded, mlp, calib_loader):
    path = recorded["ws"] / "tuning_history.json"
    data = json.loads(path.read_text())
    data["format"] = 1
    data["fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="format 1 did not record the weights"):
        quantization.fit(
            mlp, tuning_conf(), calib_loader, eval_func=recorded["eval"], resume_from=path,
            workspace=recorded["ws"].parent / "new",
        )  # fmt: skip


# -- a damaged history names the file and the line (item 4) -----------------------------------


@pytest.fixture
def toy_history(tmp_path, toy_backend) -> Path:
    """A history of three trials (the first two miss)."""
    quantization.fit(
        toy_net(), tuning_conf(), calib_batches(), eval_func=Scripted([0.9, 0.5, 0.5], then=0.9),
        workspace=tmp_path / "ws",
    )  # fmt: skip
    return tmp_path / "ws" / "tuning_history.json"


def resume_toy(path: Path) -> Any:
    return quantization.fit(
        toy_net(), tuning_conf(), calib_batches(), eval_func=Scripted([], then=0.9),
        resume_from=path, workspace=path.parent.parent / "new",
    )  # fmt: skip


def _line(text: str, needle: str, occurrence: int = 1) -> int:
    pos = -1
    for _ in range(occurrence):
        pos = text.index(needle, pos + 1)
    return text.count("\n", 0, pos) + 1


@pytest.mark.parametrize(
    ("damage", "needle", "occurrence", "words"),
    [
        (lambda d: d["trials"][1].update(accuracy="0.9"), '"accuracy": "0.9"', 1,
         r"trials\[1\]\.accuracy is '0\.9'; expected a number or null"),
        (lambda d: d["trials"][0].update(passed="yes"), '"passed": "yes"', 1,
         r"trials\[0\]\.passed is 'yes'; expected true/false"),
        (lambda d: d["trials"][1].pop("plan"), '"index": 2', 1, r"trials\[1\] lacks 'plan'"),
        (lambda d: d["trials"][0]["plan"].update(ops=7), '"plan": {', 1,
         r"trials\[0\]\.plan is not a plan"),
        (lambda d: d["baseline"].update(accuracy=None), '"accuracy": null', 1,
         r"baseline\.accuracy is None; expected a number"),
        (lambda d: d.update(trials={}), '"trials": {}', 1, r"trials is \{\}; expected list"),
    ],
)  # fmt: skip
def test_a_damaged_history_names_the_file_and_line(toy_history, damage, needle, occurrence, words):
    path = toy_history
    data = json.loads(path.read_text())
    assert len(data["trials"]) >= 2
    damage(data)
    text = json.dumps(data, indent=1)
    path.write_text(text)
    line = _line(text, needle, occurrence) - (1 if "lacks" in words else 0)
    if "lacks" in words:  # the line of the object that lacks the key
        line = text.count("\n", 0, text.rindex("{", 0, text.index(needle))) + 1
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(path))} line {line}: {words}.*delete it"
    ):
        resume_toy(path)


def test_a_history_that_is_not_json_names_the_line(toy_history):
    path = toy_history
    lines = path.read_text().splitlines()
    lines[5] = lines[5][: len(lines[5]) // 2]  # cut short, as a full disk would
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))} line 6 is not valid JSON"):
        resume_toy(path)


# -- the workspace (item 4) ---------------------------------------------------------------------


@pytest.mark.usefixtures("toy_backend")
@pytest.mark.parametrize("where", ["file", "file/below"])
def test_a_workspace_that_is_a_file_is_refused_before_any_evaluation(tmp_path, where):
    (tmp_path / "file").write_text("my notes")
    scripted = Scripted([0.9], then=0.9)
    with pytest.raises(ConfigError, match="must be a directory"):
        quantization.fit(
            toy_net(), tuning_conf(), calib_batches(), eval_func=scripted,
            workspace=tmp_path / where,
        )  # fmt: skip
    assert scripted.plans == [], "no evaluation ran"
    assert (tmp_path / "file").read_text() == "my notes"


# -- what eval_func returns and what it gets (item 3) -------------------------------------------


class Returns:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, model: Any) -> Any:
        return self.value


@pytest.mark.usefixtures("toy_backend")
@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("0.9", r"str '0\.9'"),
        (True, "bool True"),
        (np.bool_(True), r"numpy\.bool.? (np\.)?(True|bool)"),
        ([0.9], r"list \[0\.9\]"),
        (None, "NoneType None"),
        (np.array([0.9]), r"numpy\.ndarray array\(\[0\.9\]\)"),
        (np.array(True), r"numpy\.ndarray array\(True\)"),
        (complex(0.9, 0), r"complex \(0\.9\+0j\)"),
    ],
)
def test_eval_func_must_return_a_real_number(tmp_path, value, named):
    with pytest.raises(DataError, match=rf"eval_func must return a real number .*got {named}"):
        quantization.fit(
            toy_net(), tuning_conf(), calib_batches(), eval_func=Returns(value),
            workspace=tmp_path,
        )  # fmt: skip


@pytest.mark.usefixtures("toy_backend")
@pytest.mark.parametrize("value", [0.9, 1, np.float32(0.9), np.float64(0.9), np.int64(1),
                                   np.array(0.9), np.array(1, dtype=np.int32)])  # fmt: skip
def test_real_numbers_are_accuracies(tmp_path, value):
    q = quantization.fit(
        toy_net(), tuning_conf(), calib_batches(), eval_func=Returns(value), workspace=tmp_path
    )
    assert q.report["tuning"]["baseline"]["accuracy"] == pytest.approx(float(value))


def test_an_eval_func_that_zeroes_its_model_poisons_nothing(tmp_path, mlp, blobs, calib_loader):
    x, y = blobs
    users = copy.deepcopy(mlp)
    before = [layer.weight.copy() for layer in users.layers]
    fp32 = accuracy_on(x[300:], y[300:])(users)
    q = quantization.fit(
        users, tuning_conf(), calib_loader, eval_func=ZeroingAccuracy(x[300:], y[300:]),
        workspace=tmp_path,
    )  # fmt: skip
    rows = q.report["tuning"]["trials"]
    assert rows[0]["accuracy"] == fp32
    assert rows[1]["accuracy"] >= fp32 - 0.05, "trial 1 was built from zeroed weights"
    assert accuracy_on(x[300:], y[300:])(q.model) >= fp32 - 0.05, "the returned model is zeroed"
    assert all(
        np.array_equal(a, layer.weight) for a, layer in zip(before, users.layers, strict=True)
    )


# -- every evaluation NaN (item 4) ----------------------------------------------------------------


@pytest.mark.usefixtures("toy_backend")
def test_every_trial_nan_raises_with_the_default_int8_model(tmp_path):
    with pytest.raises(TuningError) as info:
        quantization.fit(
            toy_net(), tuning_conf(max_trials=4), calib_batches(),
            eval_func=Scripted([0.9], then=float("nan")), workspace=tmp_path,
        )  # fmt: skip
    message = str(info.value)
    assert "every candidate failed: the evaluation returned nan" in message
    assert "TuningError.best holds the default int8 model, which no evaluation scored" in message
    best = info.value.best
    assert best is not None and best.report["tuning"]["unevaluated_default"]
    assert best.plan.quantized_ops() == ["conv1", "conv2", "mm", "add"]
    assert np.isfinite(best.model(calib_batches()[0])).all()
    assert all(row["status"] == "error" for row in info.value.trials[1:])


# -- a save killed half way (item 4) --------------------------------------------------------------

KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from dataclasses import replace
    sys.path.insert(0, sys.argv[1])
    from inc_core import backend as registry, quantization
    from tests.core.reference_backend import ReferenceBackend, train_mlp
    import numpy as np

    class DiesInSave(ReferenceBackend):
        name = "dies-in-save"

        def save(self, model, directory):
            written = super().save(model, directory)
            os.kill(os.getpid(), signal.SIGKILL)  # the machine goes down mid-save
            return written

    registry.register(ReferenceBackend)
    registry.register(DiesInSave)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (64, 16)).astype(np.float32)
    q = quantization.fit(train_mlp(x, rng.integers(0, 3, 64)), calib_dataloader=[x])
    replace(q, backend="dies-in-save").save(sys.argv[2])
    """
)


def test_a_save_killed_midway_leaves_nothing_behind_after_the_next_save(tmp_path, mlp, blobs):
    target = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(ROOT), str(target)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith(".out.inc-staging-"), left
    x, _ = blobs
    q = quantization.fit(mlp, calib_dataloader=[x[:100]])
    q.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert inc_core.load(target).plan == q.plan
    # a staging directory of a live process (another save running now) is left alone
    live = tmp_path / f".out.inc-staging-{os.getppid()}-feedfeedfeed"
    live.mkdir()
    q.save(target)
    assert live.is_dir()
