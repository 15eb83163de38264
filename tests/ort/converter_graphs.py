"""Small graphs in the shapes converters write (onnx.helper), for the canonicaliser's tests.

Each builder reproduces node patterns seen in real exports:

* tf2onnx 1.16.1 (Keras ResNet-50, tf2onnx's own optimizers off, as in graphs users bring):
  ``Transpose(0,3,1,2) -> Conv (no bias) -> Transpose(0,2,3,1) -> Add(init[C]) -> Relu``;
  Keras' unfused batch norm as ``Sub(mean) -> Mul(inv) -> Add(beta)`` on NHWC, constants ``[C]``.
* paddle2onnx (PP-OCRv4 det/rec from rapidocr): ``Conv -> Mul(Constant[1]) -> Add(Constant[1])``
  and ``Conv -> BatchNormalization`` with every parameter a ``Constant`` node, opset 12.
* torch.onnx: decomposed LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add) and
  GELU (Div(1.414)/Erf/Add/Mul/Mul(0.5); the tanh form with Pow(3)).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _init(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"{name}_const", value=_init(name, value))


def model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[TensorProto],
    opset: int = 13,
    ir: int = 8,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def tf2onnx_nhwc_conv_bn(channels: int = 8, sub_mul_add: bool = False) -> onnx.ModelProto:
    """tf2onnx: NHWC input, Conv between transposes, batch norm applied on NHWC after it."""
    rng = _rng(1)
    w = rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)
    inits = [_init("conv/merged_input:0", w)]
    nodes = [
        helper.make_node("Transpose", ["input"], ["t_in:0"], name="bn/mul_1__528", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t_in:0", "conv/merged_input:0"], ["conv:0"], name="bn/mul_1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["conv:0"], ["t_out:0"], name="bn/mul_1__530", perm=[0, 2, 3, 1]),
    ]  # fmt: skip
    last = "t_out:0"
    if sub_mul_add:
        inits += [
            _init("bn/mean:0", rng.normal(0, 0.3, channels).astype(np.float32)),
            _init("bn/inv:0", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
        ]
        nodes += [
            helper.make_node("Sub", [last, "bn/mean:0"], ["bn/sub:0"], name="bn/sub"),
            helper.make_node("Mul", ["bn/sub:0", "bn/inv:0"], ["bn/mul:0"], name="bn/mul"),
        ]
        last = "bn/mul:0"
    inits.append(_init("bn/sub_1:0", rng.normal(0, 0.2, channels).astype(np.float32)))
    nodes += [
        helper.make_node("Add", [last, "bn/sub_1:0"], ["bn/add_1:0"], name="bn/add_1"),
        helper.make_node("Relu", ["bn/add_1:0"], ["relu:0"], name="relu/Relu"),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("input", F, ["unk__613", 6, 6, 3])],
        [helper.make_tensor_value_info("relu:0", F, ["unk__614", 6, 6, channels])],
        inits,
    )


def paddle_conv_scale_bias(channels: int = 8) -> onnx.ModelProto:
    """paddle2onnx: ``Conv -> Mul(scalar) -> Add(scalar)`` (learnable affine block), then
    ``Conv -> BatchNormalization``, all parameters as Constant nodes, opset 12."""
    rng = _rng(2)
    nodes = [
        _const_node("conv2d_0.w_0", rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)),
        _const_node("conv2d_0.b_0", rng.normal(0, 0.1, channels).astype(np.float32)),
        helper.make_node("Conv", ["x", "conv2d_0.w_0", "conv2d_0.b_0"], ["conv2d_0.tmp_0"],
                         name="p2o.Conv.0", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        _const_node("lab.scale", np.array([1.7], np.float32)),
        _const_node("lab.bias", np.array([-0.3], np.float32)),
        helper.make_node("Mul", ["conv2d_0.tmp_0", "lab.scale"], ["mul_0.tmp_0"], name="p2o.Mul.0"),
        helper.make_node("Add", ["mul_0.tmp_0", "lab.bias"], ["add_0.tmp_0"], name="p2o.Add.0"),
        _const_node("conv2d_1.w_0", rng.normal(0, 0.3, (channels, 1, 3, 3)).astype(np.float32)),
        helper.make_node("Conv", ["add_0.tmp_0", "conv2d_1.w_0"], ["conv2d_1.tmp_0"],
                         name="p2o.Conv.1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=channels),
    ]  # fmt: skip
    for i, (lo, hi) in enumerate(((0.5, 1.5), (-0.2, 0.2), (-0.3, 0.3), (0.5, 2.0))):
        nodes.append(_const_node(f"bn_{i}", rng.uniform(lo, hi, channels).astype(np.float32)))
    nodes += [
        helper.make_node("BatchNormalization", ["conv2d_1.tmp_0", "bn_0", "bn_1", "bn_2", "bn_3"],
                         ["batch_norm_0.tmp_2"], name="p2o.BatchNormalization.0", epsilon=1e-5),
        helper.make_node("Relu", ["batch_norm_0.tmp_2"], ["relu_0.tmp_0"], name="p2o.Relu.0"),
    ]  # fmt: skip
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, ["p2o.DynamicDimension.0", 3, 8, 8])],
        [helper.make_tensor_value_info("relu_0.tmp_0", F, None)],
        [],
        opset=12,
    )


def gemm_matmul_chains() -> onnx.ModelProto:
    """Gemm(transB) -> Mul -> Add, and MatMul -> Add(bias) -> Mul -> Add: both fold."""
    rng = _rng(3)
    inits = [
        _init("fc.w", rng.normal(0, 0.3, (6, 5)).astype(np.float32)),
        _init("fc.b", rng.normal(0, 0.1, 6).astype(np.float32)),
        _init("k1", rng.uniform(0.5, 1.5, 6).astype(np.float32)),
        _init("b1", rng.normal(0, 0.2, (1, 6)).astype(np.float32)),
        _init("mm.w", rng.normal(0, 0.3, (6, 4)).astype(np.float32)),
        _init("mm.b", rng.normal(0, 0.1, 4).astype(np.float32)),
        _init("k2", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        _init("b2", rng.normal(0, 0.2, 4).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "fc.w", "fc.b"], ["fc"], name="fc", transB=1, beta=0.5),
        helper.make_node("Mul", ["k1", "fc"], ["fc_mul"], name="fc_mul"),
        helper.make_node("Add", ["fc_mul", "b1"], ["fc_add"], name="fc_add"),
        helper.make_node("MatMul", ["fc_add", "mm.w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "mm.b"], ["mm_bias"], name="mm_bias"),
        helper.make_node("Mul", ["mm_bias", "k2"], ["mm_mul"], name="mm_mul"),
        helper.make_node("Add", ["mm_mul", "b2"], ["y"], name="mm_add"),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, ["batch", 5])],
        [helper.make_tensor_value_info("y", F, ["batch", 4])],
        inits,
    )


def conv_transpose_bn(groups: int = 2) -> onnx.ModelProto:
    rng = _rng(4)
    cin, cout_g = 4, 3
    inits = [
        _init("w", rng.normal(0, 0.3, (cin, cout_g, 2, 2)).astype(np.float32)),
        _init("s", rng.uniform(0.5, 1.5, cout_g * groups).astype(np.float32)),
        _init("b", rng.normal(0, 0.2, cout_g * groups).astype(np.float32)),
        _init("m", rng.normal(0, 0.2, cout_g * groups).astype(np.float32)),
        _init("v", rng.uniform(0.5, 2, cout_g * groups).astype(np.float32)),
    ]
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "w"], ["ct"], name="up", strides=[2, 2], group=groups
        ),
        helper.make_node("BatchNormalization", ["ct", "s", "b", "m", "v"], ["y"], name="up_bn"),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, cin, 5, 5])],
        [helper.make_tensor_value_info("y", F, None)],
        inits,
    )


def not_foldable() -> onnx.ModelProto:
    """Chains that must stay: a conv output read twice, a constant varying along a spatial
    axis, ``k / y``."""
    rng = _rng(5)
    inits = [
        _init("w1", rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32)),
        _init("w2", rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32)),
        _init("w3", rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32)),
        _init("k", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
        _init("spatial", rng.uniform(0.5, 1.5, (1, 1, 1, 4)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="shared"),
        helper.make_node("Add", ["c1", "c1"], ["c1x2"], name="shared_twice"),
        helper.make_node("Mul", ["c1", "spatial"], ["c1s"], name="shared_spatial"),
        helper.make_node("Conv", ["x", "w2"], ["c2"], name="spatial_conv"),
        helper.make_node("Mul", ["c2", "spatial"], ["c2s"], name="spatial_mul"),
        helper.make_node("Conv", ["x", "w3"], ["c3"], name="reciprocal_conv"),
        helper.make_node("Div", ["spatial", "c3"], ["c3d"], name="reciprocal_div"),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 3, 4, 4])],
        [helper.make_tensor_value_info(n, F, None) for n in ("c1x2", "c1s", "c2s", "c3d")],
        inits,
    )


def layout_noise() -> onnx.ModelProto:
    """tf2onnx leftovers: a Transpose pair that cancels, two that merge, an identity Cast,
    a float->double->float round trip, a lossy float->half->float one, an Identity output."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Transpose", ["t1"], ["t2"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Cast", ["t2"], ["c1"], name="same_type", to=F),
        helper.make_node("Cast", ["c1"], ["c2"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["c2"], ["c3"], name="back_to_float", to=F),
        helper.make_node("Relu", ["c3"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["h"], name="to_half", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["hf"], name="half_back", to=F),
        helper.make_node("Transpose", ["hf"], ["m1"], name="first", perm=[0, 3, 1, 2]),
        helper.make_node("Transpose", ["m1"], ["m2"], name="merged", perm=[0, 1, 3, 2]),
        helper.make_node("Identity", ["m2"], ["y"], name="out_identity"),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", F, None)],
        [],
    )


def torch_layernorm(opset: int = 17, hidden: int = 16) -> onnx.ModelProto:
    rng = _rng(6)
    inits = [
        _init("two", np.array(2.0, np.float32)),
        _init("eps", np.array(1e-5, np.float32)),
        _init("ln.weight", rng.uniform(0.5, 1.5, hidden).astype(np.float32)),
        _init("ln.bias", rng.normal(0, 0.2, hidden).astype(np.float32)),
    ]
    rm = {"axes": [-1]} if opset < 18 else {}
    rm_in = [] if opset < 18 else ["axes"]
    if opset >= 18:
        inits.append(_init("axes", np.array([-1], np.int64)))
    nodes = [
        helper.make_node("ReduceMean", ["x", *rm_in], ["mean"], name="/ln/ReduceMean", **rm),
        helper.make_node("Sub", ["x", "mean"], ["d"], name="/ln/Sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="/ln/Pow"),
        helper.make_node("ReduceMean", ["sq", *rm_in], ["var"], name="/ln/ReduceMean_1", **rm),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="/ln/Add"),
        helper.make_node("Sqrt", ["ve"], ["std"], name="/ln/Sqrt"),
        helper.make_node("Div", ["d", "std"], ["n"], name="/ln/Div"),
        helper.make_node("Mul", ["n", "ln.weight"], ["nw"], name="/ln/Mul"),
        helper.make_node("Add", ["nw", "ln.bias"], ["y"], name="/ln/Add_1"),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, ["batch", 5, hidden])],
        [helper.make_tensor_value_info("y", F, ["batch", 5, hidden])],
        inits,
        opset=opset,
    )


def torch_gelu(kind: str = "erf", opset: int = 13) -> onnx.ModelProto:
    """``0.5 * x * (1 + erf(x / sqrt 2))`` as torch.onnx writes it, or the tanh form."""
    inits = [_init("one", np.array(1.0, np.float32)), _init("half", np.array(0.5, np.float32))]
    if kind == "erf":
        inits.append(_init("sqrt2", np.array(math.sqrt(2.0), np.float32)))
        nodes = [
            helper.make_node("Div", ["x", "sqrt2"], ["xs"], name="/act/Div"),
            helper.make_node("Erf", ["xs"], ["e"], name="/act/Erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="/act/Add"),
            helper.make_node("Mul", ["x", "e1"], ["xe"], name="/act/Mul"),
            helper.make_node("Mul", ["xe", "half"], ["y"], name="/act/Mul_1"),
        ]
    else:
        inits += [
            _init("three", np.array(3.0, np.float32)),
            _init("c", np.array(0.044715, np.float32)),
            _init("k", np.array(math.sqrt(2 / math.pi), np.float32)),
        ]
        nodes = [
            helper.make_node("Mul", ["x", "half"], ["xh"], name="/act/Mul"),
            helper.make_node("Pow", ["x", "three"], ["x3"], name="/act/Pow"),
            helper.make_node("Mul", ["x3", "c"], ["x3c"], name="/act/Mul_1"),
            helper.make_node("Add", ["x", "x3c"], ["inner"], name="/act/Add"),
            helper.make_node("Mul", ["inner", "k"], ["ik"], name="/act/Mul_2"),
            helper.make_node("Tanh", ["ik"], ["t"], name="/act/Tanh"),
            helper.make_node("Add", ["t", "one"], ["t1"], name="/act/Add_1"),
            helper.make_node("Mul", ["xh", "t1"], ["y"], name="/act/Mul_3"),
        ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, ["batch", 7])],
        [helper.make_tensor_value_info("y", F, ["batch", 7])],
        inits,
        opset=opset,
    )


def constant_chain() -> onnx.ModelProto:
    """A weight computed at run time from constants (Cast + Reshape + Transpose): folded."""
    rng = _rng(7)
    inits = [
        _init("w64", rng.normal(0, 0.3, (3 * 4,)).astype(np.float64)),
        _init("shape", np.array([3, 4], np.int64)),
    ]
    nodes = [
        helper.make_node("Cast", ["w64"], ["w32"], name="cast_w", to=F),
        helper.make_node("Reshape", ["w32", "shape"], ["w34"], name="reshape_w"),
        helper.make_node("Transpose", ["w34"], ["w43"], name="transpose_w", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w34"], ["y"], name="mm"),
        helper.make_node("Identity", ["w43"], ["w_out"], name="w_out"),
    ]
    return model(
        nodes,
        [helper.make_tensor_value_info("x", F, ["batch", 3])],
        [
            helper.make_tensor_value_info("y", F, None),
            helper.make_tensor_value_info("w_out", F, None),
        ],
        inits,
    )


def tf2onnx_shared_bias_numbered_names(channels: int = 6) -> onnx.ModelProto:
    """tf2onnx 1.15.1 (basic-pitch's CQT front end): two Convs share one bias initializer named
    ``<layer>;<layer>`` and tf2onnx numbers the tensors it splits off the same layer by suffix,
    so a Conv output is ``<layer>;<layer>0`` (the name onnxruntime's quantizer gives its copy of
    the shared bias); that output goes ``Neg -> Transpose(0,2,3,1)`` back to NHWC."""
    rng = _rng(7)
    layer = "model_1/cq_t/conv1d_25;model_1/cq_t/conv1d_25"
    inits = [
        _init("w_a", rng.normal(0, 0.3, (channels, 4, 1, 5)).astype(np.float32)),
        _init("w_b", rng.normal(0, 0.3, (channels, 4, 1, 5)).astype(np.float32)),
        _init(layer, rng.normal(0, 0.2, channels).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Transpose", ["input_2:0"], ["t_in"], name=f"{layer}__300", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t_in", "w_a", layer], [f"{layer}0"], name=f"{layer}0",
                         kernel_shape=[1, 5], pads=[0, 2, 0, 2]),
        helper.make_node("Neg", [f"{layer}0"], ["neg"], name="model_1/cq_t/Neg_8;model_1/cq_t/Neg_8"),
        helper.make_node("Transpose", ["neg"], ["real:0"], name=f"{layer}0__306", perm=[0, 2, 3, 1]),
        helper.make_node("Conv", ["t_in", "w_b", layer], [f"{layer}1__conv"], name=f"{layer}1",
                         kernel_shape=[1, 5], pads=[0, 2, 0, 2]),
        helper.make_node("Transpose", [f"{layer}1__conv"], ["imag:0"], name=f"{layer}1__307", perm=[0, 2, 3, 1]),
    ]  # fmt: skip
    return model(
        nodes,
        [helper.make_tensor_value_info("input_2:0", F, ["unk__749", 1, 32, 4])],
        [
            helper.make_tensor_value_info("real:0", F, ["unk__750", 1, 32, channels]),
            helper.make_tensor_value_info("imag:0", F, ["unk__751", 1, 32, channels]),
        ],
        inits,
    )
