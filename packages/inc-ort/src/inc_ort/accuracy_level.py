"""MatMulNBits' ``accuracy_level``, chosen by measurement on this machine.

Level 4 lets the CPU kernel quantize ``A`` to int8 per block and run its int8 (VNNI) path;
level 0 computes in ``A``'s float type. Which is faster depends on the CPU and the weight's
shape, so for each (K, N, bits, block_size, zero points) one node is built at both levels
with the same random weight and timed on one row (a decode step) and on 64 rows (a prompt);
level 4 is kept when it is faster in total and its outputs agree with level 0's (relative
RMS difference at most ``AGREEMENT``). Measured once per shape per process.
"""

from __future__ import annotations

import time

import numpy as np

from inc_core.weight_only import quantize

from ._runtime import onnx, ort
from .matmulnbits import pack

#: level 4's outputs may differ from level 0's by int8 rounding of A: at most this relative RMS
AGREEMENT = 0.02
#: level 4 must take at most this share of level 0's time to be kept
FASTER = 0.95
_ROWS = (1, 64)
_REPEATS = 7
_chosen: dict[tuple[int, int, int, int, bool], int] = {}


def chosen_level(k: int, n: int, bits: int, block: int, asym: bool) -> int:
    """0 or 4: the faster level that agrees, for a MatMulNBits of this shape."""
    key = (k, n, bits, block, asym)
    if key not in _chosen:
        _chosen[key] = _measure(*key)
    return _chosen[key]


def measured() -> dict[tuple[int, int, int, int, bool], int]:
    """What was chosen so far (for reports and tests)."""
    return dict(_chosen)


def _node_model(k: int, n: int, bits: int, block: int, asym: bool, level: int) -> bytes:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    qw = quantize(w, bits, block, "asym" if asym else "sym")
    blob, scales, zeros = pack(qw, block)
    h, nh = onnx.helper, onnx.numpy_helper
    inits = [nh.from_array(blob, "B"), nh.from_array(scales, "S")]
    inputs = ["A", "B", "S"]
    if asym:
        inits.append(nh.from_array(zeros, "Z"))
        inputs.append("Z")
    attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
    if level:
        attrs["accuracy_level"] = level
    node = h.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", **attrs)
    graph = h.make_graph(
        [node],
        "nbits",
        [h.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [None, k])],
        [h.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [None, n])],
        inits,
    )
    opsets = [h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)]
    data: bytes = h.make_model(graph, opset_imports=opsets).SerializeToString()
    return data


def _measure(k: int, n: int, bits: int, block: int, asym: bool) -> int:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {
        level: ort.InferenceSession(
            _node_model(k, n, bits, block, asym, level), options, providers=["CPUExecutionProvider"]
        )
        for level in (0, 4)
    }
    rng = np.random.default_rng(1)
    feeds = [rng.standard_normal((rows, k)).astype(np.float32) for rows in _ROWS]
    outputs = {level: [s.run(None, {"A": a})[0] for a in feeds] for level, s in sessions.items()}
    for ref, test in zip(outputs[0], outputs[4], strict=True):
        rms = float(np.sqrt(np.mean((ref - test) ** 2)) / (np.sqrt(np.mean(ref**2)) + 1e-12))
        if rms > AGREEMENT:
            return 0
    seconds = {level: 0.0 for level in sessions}
    for a in feeds:
        for level, sess in sessions.items():  # best of repeats: noise only ever adds time
            runs = []
            for _ in range(_REPEATS):
                start = time.perf_counter()
                sess.run(None, {"A": a})
                runs.append(time.perf_counter() - start)
            seconds[level] += min(runs)
    return 4 if seconds[4] <= FASTER * seconds[0] else 0
