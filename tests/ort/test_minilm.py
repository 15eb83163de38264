"""all-MiniLM-L6-v2 (real pretrained weights, real review text): dynamic and SmoothQuant static."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from inc_core import PostTrainingQuantConfig, quantization

from . import models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batches(reviews):
    texts, labels = reviews
    return {
        "calib": [models.encode(texts[i : i + 16]) for i in range(0, 64, 16)],
        "all": [models.encode(texts[i : i + 100]) for i in range(0, len(texts), 100)],
        "labels": labels,
    }


def embed(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, b)[0] for b in batches])


@pytest.fixture(scope="module")
def fp32_embeddings(minilm, batches):
    return embed(minilm, batches["all"])


@pytest.fixture(scope="module")
def probe(fp32_embeddings, batches):
    """A logistic-regression sentiment probe trained on fp32 embeddings of the first 400 reviews."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(fp32_embeddings[:400], batches["labels"][:400])
    return clf


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def check_quality(q_embeddings, fp32_embeddings, probe, labels, min_cos=0.99):
    """The 1% criterion is on the embeddings (mean cosine to fp32 >= 0.99); the sentiment probe,
    a weak linear classifier with many reviews near its boundary, must stay within 2 points."""
    cos = cosine(q_embeddings, fp32_embeddings)
    fp32_acc = probe.score(fp32_embeddings[400:], labels[400:])
    int8_acc = probe.score(q_embeddings[400:], labels[400:])
    print(f"cosine {cos.mean():.4f} probe fp32 {fp32_acc:.3f} int8 {int8_acc:.3f}")
    assert cos.mean() >= min_cos, f"mean cosine {cos.mean():.4f}"
    assert int8_acc >= fp32_acc - 0.02, f"probe accuracy {int8_acc:.3f} vs fp32 {fp32_acc:.3f}"
    return cos.mean(), fp32_acc, int8_acc


def test_fp32_export_is_a_real_sentence_encoder(minilm, fp32_embeddings, probe, batches):
    """Sanity of the torch-free export: paraphrases are close and the probe learns sentiment."""
    e = embed(
        minilm,
        [
            models.encode(
                [
                    "A man is eating food.",
                    "A man is eating a piece of bread.",
                    "A man is riding a horse.",
                ]
            )
        ],
    )
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert e[0] @ e[1] == pytest.approx(0.755, abs=0.01)  # sentence-transformers' published value
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    assert probe.score(fp32_embeddings[400:], batches["labels"][400:]) > 0.65  # chance is 0.5


def test_dynamic_quantization_keeps_embeddings(minilm, batches, fp32_embeddings, probe):
    q = quantization.fit(minilm, PostTrainingQuantConfig(approach="dynamic", guards=False))
    counts = Counter(n.op_type for n in q.model.graph.node)
    assert counts["MatMulInteger"] == 36  # q, k, v, out, ffn in/out of 6 layers
    assert counts["DynamicQuantizeLinear"] > 0
    assert counts["MatMul"] == 12  # attention scores and context stay fp32 (no constant weight)
    check_quality(embed(q.model, batches["all"]), fp32_embeddings, probe, batches["labels"])


def test_auto_without_calibration_data_is_dynamic(minilm):
    q = quantization.fit(minilm, PostTrainingQuantConfig())
    assert {op.approach for op in q.plan.ops.values() if op.quantized} == {"dynamic"}


def test_static_with_smooth_quant_auto_keeps_embeddings(minilm, batches, fp32_embeddings, probe):
    conf = PostTrainingQuantConfig(
        approach="static", recipes={"smooth_quant": True, "smooth_quant_args": {"alpha": "auto"}}, guards=False
    )
    q = quantization.fit(minilm, conf, calib_dataloader=batches["calib"])
    # outputs of the weighted MatMuls feed float bias Adds: no Q/DQ round trip is written there
    producers = {o: n for n in q.model.graph.node for o in n.output}
    quantized_inputs = {n.input[0] for n in q.model.graph.node if n.op_type == "QuantizeLinear"}
    weighted_outputs = {
        n.output[0]
        for n in q.model.graph.node
        if n.op_type == "MatMul"
        and n.name.endswith("/MatMul")
        and producers.get(n.input[1], n).op_type == "DequantizeLinear"
    }
    assert weighted_outputs and not weighted_outputs & quantized_inputs
    check_quality(embed(q.model, batches["all"]), fp32_embeddings, probe, batches["labels"])
