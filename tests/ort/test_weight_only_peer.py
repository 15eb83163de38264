"""inc's RTN writes the bytes onnxruntime's own ``MatMulNBitsQuantizer`` writes (MLAS's
arithmetic, ``q4_dq.cpp``), on real all-MiniLM-L6-v2 weights.

Issue 16 asks inc's RTN to be at least onnxruntime's RTN; on the same grid that means the same
integers. Float64 division with ties to even (inc's earlier arithmetic) rounded 4 of MiniLM's
10.6M int4 g32 weights one level away from MLAS's float32 ``roundf(w * (1 / s) + 8)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization

from .test_weight_only_fit import peer_rtn

#: (MiniLM weight, K rows kept): 1536 and 384 are whole blocks of 32 and 128; 1000 is neither
#: (the last block is padded: 1000 = 31 * 32 + 8 = 7 * 128 + 104)
WEIGHTS = (
    ("encoder.layer.0.output.dense.weight_t", 1536),
    ("encoder.layer.1.attention.self.query.weight_t", 384),
    ("encoder.layer.4.output.dense.weight_t", 1000),
)


def _one_matmul(w: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "one_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inc(model: onnx.ModelProto, group: int, scheme: str) -> onnx.ModelProto:
    weight = {"bits": 4, "group_size": group, "scheme": scheme, "algorithm": "RTN"}
    conf = PostTrainingQuantConfig(approach="weight_only", op_type_dict={".*": {"weight": weight}})
    out: onnx.ModelProto = quantization.fit(model, conf).model
    return out


def _matmulnbits(model: onnx.ModelProto) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The one MatMulNBits node's attributes and its constant inputs (B, scales[, zero points])."""
    (node,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attrs, [inits[name] for name in node.input[1:] if name]


def _nibbles(blob: np.ndarray, n: int, k: int) -> np.ndarray:
    """B ``[N, blocks, blob]`` as ``(N, K)`` 4-bit values (the low nibble first)."""
    b = blob.reshape(n, -1)
    return np.stack([b & 15, b >> 4], axis=-1).reshape(n, -1)[:, :k]


@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize(("name", "k"), WEIGHTS)
def test_rtn_bytes_equal_onnxruntimes_quantizer(
    minilm: onnx.ModelProto, name: str, k: int, group: int, scheme: str
) -> None:
    w = next(numpy_helper.to_array(i) for i in minilm.graph.initializer if i.name == name)[:k]
    model = _one_matmul(np.ascontiguousarray(w))
    (ref_attrs, ref), (inc_attrs, got) = (
        _matmulnbits(peer_rtn(model, group, scheme == "sym", accuracy_level=4)),
        _matmulnbits(_inc(model, group, scheme)),
    )
    for key in ("K", "N", "bits", "block_size"):
        assert inc_attrs[key] == ref_attrs[key], (key, inc_attrs, ref_attrs)
    assert len(got) == len(ref) == (2 if scheme == "sym" else 3)  # sym: the default zero point 8
    n = w.shape[1]
    q_ref, q_inc = _nibbles(ref[0], n, k), _nibbles(got[0], n, k)
    differ = np.argwhere(q_inc != q_ref)
    assert differ.size == 0, f"{len(differ)} of {q_ref.size} int4 values differ, first {differ[:5]}"
    np.testing.assert_array_equal(got[1].reshape(-1), ref[1].reshape(-1))  # scales, bit for bit
    if scheme == "asym":
        np.testing.assert_array_equal(got[2].reshape(-1), ref[2].reshape(-1))
    # and not vacuously: the padding aside, the packed blobs are the same bytes
    assert got[0].size == ref[0].size
    if k % group == 0:
        np.testing.assert_array_equal(got[0].reshape(-1), ref[0].reshape(-1))
