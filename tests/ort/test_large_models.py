"""Models over 2 GB (issue 13 item 6): protobuf cannot serialize them, so inc-ort keeps their
weights in files ("detached", ``inc_ort.model_io.load``) from load to save.

A generated model with two 16384x16384 float32 MatMul weights (2 x 1.07 GiB, external data)
is quantized static and dynamic through the drop-in API (load, check, canonicalise/optimise,
calibrate, quantize, guards, save); the saved int8 model is loaded and run by onnxruntime and
compared with the fp32 model. Each run happens in a child process that reports its own peak
RSS, so the memory bound is about that run alone.

The same code paths are checked fast on the digits CNN detached by hand (its weights in inc's
store): the int8 model equals the one built in memory, tensor for tensor.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization

K = 16384  # 16384^2 float32 = 1.07 GiB per weight
WEIGHT_BYTES = 2 * K * K * 4
#: peak RSS growth allowed over the weights' size: measured + 10% (issue 13 asks ~2x; measured
#: 1.41x static and dynamic, from 2.41x/2.22x, 3.4x/4.0x before that). What is left over 1x is
#: onnxruntime's: a session loads every weight, then prepacks them one at a time (+ the largest
#: weight, 0.5x here), in the optimizing, calibrating and fp32 guard sessions alike; and inc's
#: planner reading each weight of the loaded model once (+ one weight). onnxruntime's quantizer
#: reads the weights from inc's store and writes the int8 ones there, a slab at a time, and the
#: int8 session (0.25x) reads them from there beside the fp32 one in the guards
RSS_FACTOR = {"static": 1.55, "dynamic": 1.55}


def write_big_model(folder: Path) -> Path:
    """x[n, K] -> MatMul(w1) -> Relu -> MatMul(w2) -> y, weights in one external data file,
    written block by block (the test process never holds a weight)."""
    data = folder / "big.onnx.data"
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1024, K), dtype=np.float32) * np.float32(1 / np.sqrt(K))
    inits = []
    with open(data, "wb") as file:
        for index, name in enumerate(("w1", "w2")):
            for block in range(K // 1024):
                # a different row block each time, cheaply: the base block rolled
                file.write(np.roll(base, 97 * block + 13 * index, axis=1).tobytes())
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[K, K])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", data.name),
                ("offset", str(index * K * K * 4)),
                ("length", str(K * K * 4)),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", K])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "big.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_model(tmp_path_factory.mktemp("big"))


# The child: quantize, report peak RSS growth, then check the saved int8 model against fp32.
CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnxruntime as ort
from inc_ort import dropin, model_io

approach, src, out = sys.argv[1:4]
rng = np.random.default_rng(1)
calib = [{"x": rng.standard_normal((2, K), dtype=np.float32)} for _ in range(2)]
test = rng.standard_normal((2, K), dtype=np.float32)


class Reader:
    def __init__(self):
        self.items = iter(calib)

    def get_next(self):
        return next(self.items, None)


def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


base = peak()
start = time.perf_counter()
if approach == "static":
    dropin.quantize_static(src, out, Reader())
else:
    dropin.quantize_dynamic(src, out)
seconds = time.perf_counter() - start
grown = peak() - base
# the saved int8 model: loaded by inc (a second time, as a user would) and run by onnxruntime
loaded = model_io.load(out)
int8 = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": test})[0]
del loaded
fp32 = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": test})[0]
ops = sorted({n.op_type for n in model_io.load(out).graph.node})
cos = float((int8 * fp32).sum() / np.linalg.norm(int8) / np.linalg.norm(fp32))
print(json.dumps({"grown": grown, "seconds": seconds, "cos": cos, "ops": ops}))
""".replace("K)", f"{K})")


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(2**26):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("approach", "int8_op"), [("static", "DequantizeLinear"), ("dynamic", "MatMulInteger")]
)
def test_model_over_2gb_quantizes(
    big_model: Path, tmp_path: Path, approach: str, int8_op: str
) -> None:
    files = {p: _digest(p) for p in big_model.parent.iterdir()}
    out = tmp_path / f"{approach}.onnx"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, approach, str(big_model), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{approach}: {result}")  # peak RSS growth and time, for the report (-s)
    assert int8_op in result["ops"], result["ops"]
    assert result["cos"] > 0.99, f"int8 output strays from fp32: cosine {result['cos']:.4f}"
    assert result["grown"] <= RSS_FACTOR[approach] * WEIGHT_BYTES, (
        f"peak RSS grew {result['grown'] / 2**30:.2f} GiB for {WEIGHT_BYTES / 2**30:.2f} GiB "
        f"of weights (allowed {RSS_FACTOR[approach]}x)"
    )
    # the user's files are untouched and nothing was written beside them
    assert {p: _digest(p) for p in big_model.parent.iterdir()} == files


def _tensors(model: onnx.ModelProto, folder: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """The graph without its initializers, and the initializers' values, as saved to ``folder``."""
    from inc_ort import model_io

    folder.mkdir()
    model_io.save(model, folder / "model.onnx", external=True)
    saved = onnx.load_model(str(folder / "model.onnx"))
    values = {t.name: numpy_helper.to_array(t) for t in saved.graph.initializer}
    del saved.graph.initializer[:]
    return saved.graph.SerializeToString(), values


PER_TENSOR = {"weight": {"granularity": ["per_tensor"]}}


@pytest.mark.parametrize(
    ("options", "streamed"),
    [
        ({}, True),
        ({"quant_format": "QOperator"}, True),
        ({"op_type_dict": {"Conv": PER_TENSOR, "MatMul": PER_TENSOR}}, True),
        ({"quant_format": "QOperator", "op_type_dict": {"Conv": PER_TENSOR}}, True),
        ({"approach": "dynamic"}, True),
        ({"approach": "dynamic", "op_type_dict": {"MatMul": PER_TENSOR}}, True),
        # weights a recipe rewrote are in memory (under 1 MB they stay there)
        ({"recipes": {"weight_correction": True}}, False),
    ],
    ids=[
        "qdq",
        "qoperator",
        "per-tensor",
        "qoperator-per-tensor",
        "dynamic",
        "dynamic-per-tensor",
        "weight-correction",
    ],
)
def test_detached_model_quantizes_to_the_in_memory_bytes(
    cnn: onnx.ModelProto, calib: list[Any], tmp_path: Path, options: dict[str, Any], streamed: bool
) -> None:
    """A model over 2 GB is quantized from inc's store into it, a slab of a weight at a time
    (inc_ort.quantizer); on the CNN detached by hand (its weights in the store, as a big
    model's are) that gives the int8 model the in-memory path gives, tensor for tensor."""
    from inc_ort import graph, model_io

    # MatMul weights (the dynamic approach quantizes those); DISABLE_ALL keeps the graph as it
    # is, so the detached model stays detached
    model = graph.gemm_to_matmul(cnn)
    recipes = {"graph_optimization_level": "DISABLE_ALL", **options.pop("recipes", {})}
    conf = PostTrainingQuantConfig(guards=False, recipes=recipes, **options)
    detached = model_io.detach(model, min_bytes=64)
    assert model_io.detached(detached)
    int8 = quantization.fit(detached, conf, calib_dataloader=calib).model
    in_store = [t.name for t in int8.graph.initializer if model_io.in_store(t)]
    assert any(name.endswith("_quantized") for name in in_store) == streamed, in_store
    expected = quantization.fit(model, conf, calib_dataloader=calib).model
    assert not model_io.detached(expected)
    graph_bytes, values = _tensors(int8, tmp_path / "store")
    expected_graph, expected_values = _tensors(expected, tmp_path / "memory")
    assert graph_bytes == expected_graph
    assert values.keys() == expected_values.keys()
    for name, value in expected_values.items():
        assert values[name].dtype == value.dtype, name
        assert np.array_equal(values[name], value), name
