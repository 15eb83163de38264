"""Bad input gets an error that says what was wrong and what is allowed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError, DataError, ModelError
from tests.bad_input import Case, assert_refused, conf, listing


class Imperative(gluon.Block):
    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.dense = gluon.nn.Dense(4)

    def forward(self, x):
        return self.dense(x)


class ValueBranching(gluon.HybridBlock):
    """Looks hybridizable but reads tensor values: cannot be traced to a symbol."""

    def __init__(self) -> None:
        super().__init__()
        with self.name_scope():
            self.dense = gluon.nn.Dense(4)

    def hybrid_forward(self, F, x):
        if x.asnumpy().mean() > 0:
            return self.dense(x)
        return x


def _calib():
    return [mx.nd.ones((2, 8)).asnumpy()]


def test_plain_block_is_rejected_as_not_hybridizable():
    net = Imperative()
    net.initialize()
    net(mx.nd.ones((2, 8)))
    with pytest.raises(ModelError, match=r"not a gluon\.HybridBlock, so it cannot be hybridized"):
        quantization.fit(net, PostTrainingQuantConfig(approach="static"), calib_dataloader=_calib())


def test_hybrid_block_that_reads_values_is_rejected_with_the_cause():
    net = ValueBranching()
    net.initialize()
    net(mx.nd.ones((2, 8)))
    with pytest.raises(ModelError, match=r"could not be hybridized.*asnumpy"):
        quantization.fit(net, PostTrainingQuantConfig(approach="static"), calib_dataloader=_calib())


def test_uninitialized_block_says_to_run_a_forward_pass():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4))
    net.initialize()
    with pytest.raises(ModelError, match="run one forward pass"):
        quantization.fit(net, PostTrainingQuantConfig(approach="static"), calib_dataloader=_calib())


def test_unknown_layer_name_lists_close_names(digits_net, digits_calib):
    conf = PostTrainingQuantConfig(
        op_name_dict={"digits_conv9": {"activation": {"dtype": ["fp32"]}}}
    )
    with pytest.raises(ConfigError, match=r"digits_conv9.*matches no op.*digits_conv0"):
        quantization.fit(digits_net, conf, calib_dataloader=digits_calib)


@pytest.mark.parametrize("rules", ["op_type_dict", "op_name_dict"])
def test_asymmetric_scheme_names_the_allowed_schemes(digits_net, digits_calib, rules):
    key = "Convolution" if rules == "op_type_dict" else "digits_conv0"
    conf = PostTrainingQuantConfig(**{rules: {key: {"activation": {"scheme": ["asym"]}}}})
    with pytest.raises(
        ConfigError,
        match=r"mxnet has no asym int8 quantization; allowed dtype/scheme: int8/sym, uint8/sym",
    ):
        quantization.fit(digits_net, conf, calib_dataloader=digits_calib)


def test_dynamic_approach_is_refused(digits_net):
    with pytest.raises(ConfigError, match="approach='dynamic' is not available for mxnet"):
        quantization.fit(digits_net, PostTrainingQuantConfig(approach="dynamic"))


def test_missing_params_next_to_symbol_file(tmp_path):
    (tmp_path / "m-symbol.json").write_text(mx.sym.var("data").tojson())
    with pytest.raises(ModelError, match=r"expected exactly one 'm-NNNN.params'.*found none"):
        quantization.fit(
            str(tmp_path / "m-symbol.json"),
            PostTrainingQuantConfig(approach="static"),
            calib_dataloader=_calib(),
        )


# --- the catalogue's table: the user's block (parameters) and files unchanged, nothing left in
# the working or temporary directory


def small_net() -> gluon.HybridBlock:
    net = gluon.nn.HybridSequential(prefix="small_")
    with net.name_scope():
        net.add(gluon.nn.Conv2D(4, 3, activation="relu"), gluon.nn.Flatten(), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    net(mx.nd.ones((1, 1, 8, 8)))
    return net


def exported(work: Path, prefix: str = "m") -> Path:
    net = small_net()
    net.hybridize()
    net(mx.nd.ones((1, 1, 8, 8)))
    net.export(str(work / prefix))
    return work / f"{prefix}-symbol.json"


def quantized_files(work: Path) -> Path:
    q = quantization.fit(small_net(), STATIC, calib_dataloader=[images()])
    q.save(work / "int8")
    return work / "int8" / "model-symbol.json"


def not_json(work: Path) -> Path:
    (work / "bad-symbol.json").write_text("{not json")
    (work / "bad-0000.params").write_bytes(b"x")
    return work / "bad-symbol.json"


def garbled_params(work: Path) -> Path:
    symbol = exported(work, "g")
    (work / "g-0000.params").write_bytes(b"not an NDArray file")
    return symbol


def recurrent() -> gluon.HybridBlock:
    lstm = gluon.rnn.LSTM(4)
    lstm.initialize()
    lstm(mx.nd.zeros((5, 2, 3)))
    return lstm


def images(n: int = 16, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8)).astype(dtype)


def with_nan(batch: int) -> list[np.ndarray]:
    data = [images() for _ in range(4)]
    data[batch][1, 0, 4, 4] = np.nan
    return data


def fingerprint(model: Any) -> str:
    if isinstance(model, tuple):  # a (symbol_file, params_file) pair
        return "+".join(fingerprint(part) for part in model)
    digest = hashlib.sha256()
    if isinstance(model, gluon.Block):
        for name, param in sorted(model.collect_params().items()):
            digest.update(name.encode())
            try:
                digest.update(param.data(mx.cpu()).asnumpy().tobytes())
            except Exception:  # deferred initialisation: nothing to change yet
                digest.update(b"deferred")
    elif isinstance(model, (str, Path)) and Path(model).is_file():
        digest.update(Path(model).read_bytes())
    return digest.hexdigest()


STATIC = PostTrainingQuantConfig(approach="static", guards=False)


CASES = [
    # --- models
    Case(
        "ndarray-instead-of-model",
        lambda w: mx.nd.ones((2, 2)),
        conf(),
        lambda: [images()],
        ModelError,
        ("inc-mxnet takes a gluon.HybridBlock", "got mxnet.ndarray.ndarray.NDArray"),
    ),
    Case(
        "symbol-without-params",
        lambda w: mx.sym.var("data"),
        conf(),
        lambda: [images()],
        ModelError,
        ("(symbol_file, params_file) pair", "got mxnet.symbol.symbol.Symbol"),
    ),
    Case(
        "int8-block-again",
        lambda w: quantization.fit(small_net(), STATIC, calib_dataloader=[images()]).model,
        conf(),
        lambda: [images()],
        ModelError,
        ("already an int8 model", "fp32 block"),
    ),
    Case(
        "int8-files-again",
        quantized_files,
        conf(),
        lambda: [images()],
        ModelError,
        ("model-symbol.json is already quantized", "_contrib_quantize_v2", "fp32 model"),
    ),
    Case(
        "no-quantizable-op",
        lambda w: recurrent(),
        conf(),
        lambda: [np.zeros((5, 2, 3), "float32")],
        ModelError,
        ("no op that mxnet can quantize", "Convolution, FullyConnected"),
    ),
    # --- files
    Case(
        "params-file-alone",
        lambda w: exported(w).with_name("m-0000.params"),
        conf(),
        lambda: [images()],
        ModelError,
        ("m-0000.params holds parameters only", "-symbol.json"),
    ),
    Case(
        "symbol-file-not-json",
        not_json,
        conf(),
        lambda: [images()],
        ModelError,
        ("could not read MXNet model", "bad-symbol.json", "HybridBlock.export(prefix)"),
    ),
    Case(
        "params-file-garbled",
        garbled_params,
        conf(),
        lambda: [images()],
        ModelError,
        ("could not read MXNet model", "Invalid NDArray file format"),
    ),
    Case(
        "params-pair-missing-file",
        lambda w: (exported(w), w / "nope.params"),
        conf(),
        lambda: [images()],
        ModelError,
        ("nope.params does not exist",),
    ),
    # --- configuration mxnet would otherwise ignore, or cannot honour
    Case(
        "reduce-range",
        lambda w: small_net(),
        conf(reduce_range=True),
        lambda: [images()],
        ConfigError,
        ("reduce_range=True is not available for mxnet", "allowed: None, False"),
    ),
    Case(
        "onnx-quant-format",
        lambda w: small_net(),
        conf(quant_format="QDQ"),
        lambda: [images()],
        ConfigError,
        ("quant_format='QDQ' is an ONNX Runtime setting", "allowed: 'default'"),
    ),
    Case(
        "recipe-mxnet-does-not-run",
        lambda w: small_net(),
        conf(recipes={"smooth_quant": True}),
        lambda: [images()],
        ConfigError,
        ("recipes['smooth_quant']=True is not available for mxnet", "smooth_quant=False"),
    ),
    Case(
        "device-other-than-cpu",
        lambda w: small_net(),
        conf(backend="itex", device="gpu"),
        lambda: [images()],
        ConfigError,
        ("backend='itex' is not available for mxnet models", "allowed: 'default'"),
    ),
    Case(
        "per-channel-weights",
        lambda w: small_net(),
        conf(op_type_dict={"Convolution": {"weight": {"granularity": ["per_channel"]}}}),
        lambda: [images()],
        ConfigError,
        ("weight granularity ['per_channel'] is not supported", "['per_tensor']"),
    ),
    Case(
        "percentile-calibration",
        lambda w: small_net(),
        conf(op_type_dict={"Convolution": {"activation": {"algorithm": ["percentile"]}}}),
        lambda: [images()],
        ConfigError,
        ("activation algorithm ['percentile'] is not supported", "['minmax', 'kl']"),
    ),
    # --- calibration data
    Case(
        "wrong-image-size",
        lambda w: small_net(),
        conf(),
        lambda: [np.zeros((4, 1, 9, 9), "float32")],
        DataError,
        ("calibration inputs of shape data=(4, 1, 9, 9) do not fit the model", "Shape"),
    ),
    Case(
        "flat-vectors-for-images",
        lambda w: small_net(),
        conf(),
        lambda: [np.zeros((4, 64), "float32")],
        DataError,
        ("data=(4, 64) do not fit the model", "4D"),
    ),
    Case(
        "three-arrays-for-one-input",
        lambda w: small_net(),
        conf(),
        lambda: [(images(4), images(4), images(4))],
        DataError,
        ("the model takes 1 input(s) (data), a batch gave 3",),
    ),
    Case(
        "dict-with-the-wrong-name",
        lambda w: small_net(),
        conf(),
        lambda: [{"image": images()}],
        DataError,
        ("keys ['image']", "the model's inputs are ['data']"),
    ),
    Case(
        "nan-in-a-later-batch-of-ndarrays",
        lambda w: small_net(),
        conf(calibration_sampling_size=64),
        lambda: [mx.nd.array(b) for b in with_nan(3)],
        DataError,
        ("calib_dataloader batch 3", "1 NaN", "finite"),
    ),
    Case(
        "string-images",
        lambda w: small_net(),
        conf(),
        lambda: [np.full((4, 1, 8, 8), "0.5")],
        DataError,
        ("dtype <U3", "strings", "numeric"),
    ),
    Case(
        "empty-loader",
        lambda w: small_net(),
        conf(),
        lambda: [],
        DataError,
        ("yielded no samples",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, sandbox: Path) -> None:
    assert_refused(case, sandbox, fingerprint)


def test_exported_files_quantize_and_stay_as_they_were(sandbox: Path) -> None:
    symbol = exported(sandbox / "work")
    params = symbol.with_name("m-0000.params")
    before, files = (symbol.read_bytes(), params.read_bytes()), listing(sandbox)
    q = quantization.fit(str(symbol), STATIC, calib_dataloader=[images()])
    assert q.plan.quantized_ops()
    assert (symbol.read_bytes(), params.read_bytes()) == before
    assert listing(sandbox) == files
