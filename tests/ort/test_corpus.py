"""CI subset of the validated-model corpus: real paddle2onnx models from the rapidocr-onnxruntime
wheel, inc's default config, fidelity of int8 against fp32 on held-out real inputs, and the
default guards' report. Thresholds are issue 11's; no timing asserts (speed is benchmarks/models)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from tests.corpus.onnx_models import MODELS, CorpusModel

# (model, minimum fidelity): issue 11's goals per task
CASES = {
    "ppocr-cls": 0.95,  # top-1 agreement of the 0/180 text-line classifier
    "ppocrv4-rec": 0.95,  # decoded-symbol agreement of the CTC recogniser (issue 11: 4% today)
    "ppocrv4-det": 0.90,  # mask IoU of the DB text-probability map
}
BATCHES = {
    "ppocr-cls": (4, 4),
    "ppocrv4-rec": (2, 2),
    "ppocrv4-det": (2, 2),
}  # (calib, eval) batches


def run(model: str | bytes, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sess = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return [sess.run(None, f) for f in feeds]


@pytest.fixture(scope="module", params=list(CASES))
def corpus_case(request: pytest.FixtureRequest) -> dict[str, Any]:
    """One corpus model quantized with the defaults (once per module), with fp32 and int8 outputs."""
    model: CorpusModel = MODELS[request.param]
    n_calib, n_eval = BATCHES[model.name]
    calib, evaluation = model.batches("calib", n_calib), model.batches("eval", n_eval)
    before = model.path().read_bytes()
    q = quantization.fit(str(model.path()), PostTrainingQuantConfig(), calib_dataloader=calib)
    return {
        "model": model,
        "q": q,
        "unchanged": model.path().read_bytes() == before,
        "fp32": run(str(model.path()), evaluation),
        "int8": run(q.model.SerializeToString(), evaluation),
    }


def test_default_int8_is_faithful(corpus_case: dict[str, Any]) -> None:
    model: CorpusModel = corpus_case["model"]
    score = model.fidelity(corpus_case["fp32"], corpus_case["int8"])
    assert score >= CASES[model.name], (
        f"{model.name}: {model.metric} {score:.3f} < {CASES[model.name]}"
    )


def test_the_users_file_is_untouched(corpus_case: dict[str, Any]) -> None:
    assert corpus_case["unchanged"]


def test_speed_guard_reports(corpus_case: dict[str, Any]) -> None:
    q = corpus_case["q"]
    speed = q.report.get("speed")
    assert speed is not None, "q.report['speed'] is missing (issue 11's speed guard)"
    if not q.plan.quantized_ops():
        assert len(q.report["fallback"]) == len(q.plan.ops)
        if speed.get("returned") == "all ops fp32":  # no int8 build beat fp32: timed, said
            assert speed["best_int8_ratio"] > speed["ratio"] > 0
            assert {row["why"] for row in q.report["fallback"]} <= {"slower", "fidelity"}
        else:  # the fidelity guard kept every op in fp32: nothing to time
            assert "skipped" in speed
        return
    assert {"fp32_ms", "int8_ms", "batch"} <= set(speed)
    assert speed["fp32_ms"] > 0 and speed["int8_ms"] > 0 and speed["batch"] >= 1


def test_fallback_rows_name_op_and_why(corpus_case: dict[str, Any]) -> None:
    fallback = corpus_case["q"].report.get("fallback")
    assert fallback is not None, "q.report['fallback'] is missing (issue 11's guards)"
    ops = set(corpus_case["q"].plan.ops)
    for row in fallback:
        assert row.get("op") and row.get("why"), row
        assert row["op"] in ops, f"fallback names {row['op']!r}, not an op of the model"
