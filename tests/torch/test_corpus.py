"""CI subset of the validated-model corpus for torch: MTCNN's RNet and ONet (facenet-pytorch's real
weights, the package's own classes), inc's default config, fidelity against fp32 on held-out photo
crops, and the default guards' report. Thresholds are issue 11's; no timing asserts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from inc_core import PostTrainingQuantConfig, quantization
from tests.corpus.torch_models import MODELS, TorchCorpusModel

CASES = ("mtcnn-rnet", "mtcnn-onet")
MIN_DECISION = 0.95  # face/non-face decisions that agree with fp32
MIN_BOX_COSINE = 0.98  # box regression, int8 vs fp32


@pytest.fixture(scope="module", params=CASES)
def corpus_case(request: pytest.FixtureRequest) -> dict[str, Any]:
    model: TorchCorpusModel = MODELS[request.param]
    fp32 = model.module()
    before = {k: v.clone() for k, v in fp32.state_dict().items()}
    calib, evaluation = model.batches("calib", 4), model.batches("eval", 4)
    q = quantization.fit(fp32, PostTrainingQuantConfig(), calib_dataloader=[(x, 0) for x in calib])
    with torch.inference_mode():
        ref = [fp32(x) for x in evaluation]
        test = [q.model(x) for x in evaluation]
    unchanged = all(torch.equal(v, fp32.state_dict()[k]) for k, v in before.items())
    return {"model": model, "q": q, "ref": ref, "test": test, "unchanged": unchanged}


def test_default_int8_keeps_face_decisions(corpus_case: dict[str, Any]) -> None:
    model: TorchCorpusModel = corpus_case["model"]
    score = model.fidelity(corpus_case["ref"], corpus_case["test"])
    assert score >= MIN_DECISION, f"{model.name}: {model.metric} {score:.3f}"


def test_default_int8_keeps_boxes(corpus_case: dict[str, Any]) -> None:
    model: TorchCorpusModel = corpus_case["model"]
    score = model.box_cosine(corpus_case["ref"], corpus_case["test"])
    assert score >= MIN_BOX_COSINE, f"{model.name}: box cosine {score:.4f}"


def test_the_users_module_is_untouched(corpus_case: dict[str, Any]) -> None:
    assert corpus_case["unchanged"]


def test_guards_report(corpus_case: dict[str, Any]) -> None:
    report = corpus_case["q"].report
    speed, fallback = report.get("speed"), report.get("fallback")
    assert speed is not None and fallback is not None, (
        "q.report lacks 'speed'/'fallback' (issue 11's guards)"
    )
    assert {"fp32_ms", "int8_ms", "batch"} <= set(speed)
    for row in fallback:
        assert row.get("op") and row.get("why"), row
