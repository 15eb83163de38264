"""Post-training static quantization of Gluon CNNs trained on real data."""

from __future__ import annotations

import json
import warnings

import mxnet as mx
import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_core import backend as registry
from inc_mxnet.backend import MxnetBackend
from inc_mxnet.graph import read_calibration

from . import models


def _quantize(net, calib, **conf):
    # these tests check planning, rules and ranges; the default guards (held to the contract by
    # tests/conformance) would add fallbacks that depend on how loaded the machine is
    conf.setdefault("guards", False)
    return quantization.fit(
        net, PostTrainingQuantConfig(approach="static", **conf), calib_dataloader=calib
    )


def _symbol(block) -> mx.sym.Symbol:
    return block.graph


def _quantized_node_ops(block) -> dict[str, str]:
    return {
        n["name"]: n["op"]
        for n in json.loads(_symbol(block).tojson())["nodes"]
        if n["op"] != "null"
    }


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_digits_int8_accuracy_within_one_percent(digits, digits_net, digits_calib, hybridize):
    if hybridize:
        net = models.trained("digits", models.digits_cnn(), digits, epochs=10)
        net.hybridize()
    else:
        net = digits_net
    fp32 = models.accuracy(net, digits.x_test, digits.y_test)
    before = models.fingerprint(net)
    q = _quantize(net, digits_calib)
    assert models.fingerprint(net) == before
    int8 = models.accuracy(q.model, digits.x_test, digits.y_test)
    assert fp32 > 0.9
    assert int8 >= fp32 * 0.99, (fp32, int8)
    assert q.plan.quantized_ops() == [
        "digits_conv0",
        "digits_conv1",
        "digits_dense0",
        "digits_dense1",
    ]
    ops = set(_quantized_node_ops(q.model).values())
    assert {"_contrib_quantize_v2", "_sg_mkldnn_conv", "_sg_mkldnn_fully_connected"} <= ops


def test_mnist_subset_int8_accuracy_within_one_percent():
    data = models.mnist_5k()
    net = models.trained("mnist", models.mnist_cnn(), data, epochs=3)
    fp32 = models.accuracy(net, data.x_test, data.y_test)
    calib = models.batches(data.x_train[:500], data.y_train[:500], 100)
    q = _quantize(net, calib)
    int8 = models.accuracy(q.model, data.x_test, data.y_test)
    assert fp32 > 0.9
    assert int8 >= fp32 * 0.99, (fp32, int8)


def test_user_block_is_unchanged_by_fit(digits_net, digits_calib):
    before = models.fingerprint(digits_net)
    _quantize(digits_net, digits_calib)
    assert models.fingerprint(digits_net) == before
    assert not digits_net._active, "fit must not hybridize the user's block"


def test_graph_thresholds_follow_the_mxnet_convention(digits_net, digits_calib):
    from inc_core import scheme

    backend = MxnetBackend()
    conf = PostTrainingQuantConfig(approach="static")
    session = quantization.prepare_session(digits_net, conf, digits_calib)
    plan = session.default_plan
    ranges = session.ranges_for(plan)
    block = backend.quantize(session.model, plan, ranges)
    table = read_calibration(_symbol(block), block.data_names)
    # every calibrated tensor is in the graph, except the float output of the last layer
    assert set(table) <= set(ranges) and len(table) == len(ranges) - 1
    assert "data" in table and any(e.dtype == "int8" for e in table.values())
    rng = np.random.default_rng(0)
    for tensor, entry in table.items():
        lo, hi = float(ranges[tensor].min), float(ranges[tensor].max)
        # the graph holds the observers' ranges (widened for MXNet's 127.5/255.5-step kernels)
        assert (entry.min, entry.max) == pytest.approx((lo, hi), rel=1e-12, abs=1e-300)
        levels = {"int8": 127.5 / 127, "uint8": 255.5 / 255}[entry.dtype]
        assert entry.attr_max == pytest.approx(hi * levels, rel=1e-12)
        # MXNet's own quantize op, fed the graph's attributes, gives inc's golden integers
        values = rng.uniform(lo * 1.1, hi * 1.1, size=(8, 256)).astype(np.float32)
        q, qmin, qmax = mx.nd.contrib.quantize_v2(
            mx.nd.array(values),
            min_calib_range=entry.attr_min,
            max_calib_range=entry.attr_max,
            out_type=entry.dtype,
        )
        params = scheme.compute_qparams(lo, hi, dtype=entry.dtype, convention="mxnet")
        golden = scheme.quantize(values, params).astype(np.int64)
        got = q.asnumpy().astype(np.int64)
        # MXNet rounds float32 half away from zero, the golden math float64 half to even:
        # they may differ by one step at a tie, nowhere else
        assert np.abs(got - golden).max() <= 1, tensor
        assert np.mean(got == golden) > 0.995, tensor
        # and MXNet's dequantization step is the convention's scale
        back = mx.nd.contrib.dequantize(q, qmin, qmax).asnumpy()
        step = np.median(back[got > 4] / got[got > 4])
        assert step == pytest.approx(float(params.scale), rel=1e-5), tensor


def test_relu_outputs_are_uint8_and_signed_tensors_int8(digits_net, digits_calib):
    q = _quantize(digits_net, digits_calib)
    table = read_calibration(_symbol(q.model), q.model.data_names)
    for tensor, entry in table.items():
        assert entry.dtype == ("uint8" if entry.min >= 0 else "int8"), tensor
    assert table["data"].dtype == "uint8"  # pixels are non-negative


def test_int8_requested_for_the_input_is_honoured(digits_net, digits_calib, digits):
    q = _quantize(
        digits_net, digits_calib, op_name_dict={"digits_conv0": {"activation": {"dtype": ["int8"]}}}
    )
    table = read_calibration(_symbol(q.model), q.model.data_names)
    assert table["data"].dtype == "int8"
    fp32 = models.accuracy(digits_net, digits.x_test, digits.y_test)
    assert models.accuracy(q.model, digits.x_test, digits.y_test) >= fp32 * 0.99


def test_save_load_round_trip_is_native_and_identical(digits_net, digits_calib, digits, tmp_path):
    q = _quantize(digits_net, digits_calib)
    q.save(tmp_path / "q")
    files = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert files == ["inc.json", "model-0000.params", "model-symbol.json", "report.html"]
    loaded = load(tmp_path / "q")
    assert isinstance(loaded.model, mx.gluon.SymbolBlock)
    x = mx.nd.array(digits.x_test)
    np.testing.assert_array_equal(loaded.model(x).asnumpy(), q.model(x).asnumpy())
    assert loaded.plan == q.plan
    # also readable by plain MXNet, without inc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Cannot decide type" for the input
        plain = mx.gluon.SymbolBlock.imports(
            str(tmp_path / "q" / "model-symbol.json"),
            ["data"],
            str(tmp_path / "q" / "model-0000.params"),
        )
    np.testing.assert_array_equal(plain(x).asnumpy(), q.model(x).asnumpy())


@pytest.mark.parametrize("form", ["symbol_path", "pair"])
def test_exported_symbol_files_are_quantized_and_left_alone(
    digits_net, digits_calib, digits, tmp_path, form
):
    net = models.trained("digits", models.digits_cnn(), digits, epochs=10)
    net.hybridize()
    net(mx.nd.array(digits.x_test[:2]))
    net.export(str(tmp_path / "digits"), epoch=3)
    symbol_file, params_file = tmp_path / "digits-symbol.json", tmp_path / "digits-0003.params"
    model = str(symbol_file) if form == "symbol_path" else (symbol_file, params_file)
    before = (symbol_file.read_bytes(), params_file.read_bytes())
    assert registry.for_model(model).name == "mxnet"
    q = _quantize(model, digits_calib)
    assert (symbol_file.read_bytes(), params_file.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits-0003.params",
        "digits-symbol.json",
    ]
    fp32 = models.accuracy(net, digits.x_test, digits.y_test)
    assert models.accuracy(q.model, digits.x_test, digits.y_test) >= fp32 * 0.99
    assert q.plan.quantized_ops() == [
        "digits_conv0",
        "digits_conv1",
        "digits_dense0",
        "digits_dense1",
    ]


def test_op_name_regex_keeps_matching_layers_fp32(digits_net, digits_calib, digits):
    conf = {
        "op_name_dict": {
            "digits_dense.*": {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
        }
    }
    q = _quantize(digits_net, digits_calib, **conf)
    assert q.plan.float_ops() == ["digits_dense0", "digits_dense1"]
    ops = _quantized_node_ops(q.model)
    assert "_sg_mkldnn_conv" in ops.values()
    fc = [name for name, op in ops.items() if op == "_sg_mkldnn_fully_connected"]
    assert fc and all(not name.startswith("quantized_") for name in fc)
    fp32 = models.accuracy(digits_net, digits.x_test, digits.y_test)
    assert models.accuracy(q.model, digits.x_test, digits.y_test) >= fp32 * 0.99


@pytest.mark.parametrize("key", ["FullyConnected", "Linear", "MatMul"])
def test_op_type_rule_and_its_aliases_reach_fully_connected(digits_net, digits_calib, key):
    q = _quantize(digits_net, digits_calib, op_type_dict={key: {"activation": {"dtype": ["fp32"]}}})
    assert q.plan.float_ops() == ["digits_dense0", "digits_dense1"]
    assert q.plan.quantized_ops() == ["digits_conv0", "digits_conv1"]


def test_conv_alias_reaches_convolution(digits_net, digits_calib):
    q = _quantize(
        digits_net, digits_calib, op_type_dict={"Conv": {"activation": {"dtype": ["fp32"]}}}
    )
    assert q.plan.float_ops() == ["digits_conv0", "digits_conv1"]


@pytest.mark.skipif(
    "kl" not in MxnetBackend().capability("static", "cpu")["Convolution"].activation.algorithm,
    reason="inc_core.calibration has no kl observer yet",
)
def test_kl_calibration_narrows_ranges(digits_net, digits_calib, digits):
    minmax = read_calibration(_symbol(_quantize(digits_net, digits_calib).model))
    q = _quantize(
        digits_net, digits_calib, op_name_dict={".*": {"activation": {"algorithm": ["kl"]}}}
    )
    kl = read_calibration(_symbol(q.model), q.model.data_names)
    assert any(kl[t].max < minmax[t].max for t in kl if t in minmax)
    fp32 = models.accuracy(digits_net, digits.x_test, digits.y_test)
    assert models.accuracy(q.model, digits.x_test, digits.y_test) >= fp32 * 0.98


def test_eval_dataloader_path_uses_the_backend(digits_net, digits_calib, digits):
    backend = MxnetBackend()
    graph = backend.load_model(digits_net, None)
    out = backend.predict(graph, digits.x_test[:5])
    np.testing.assert_allclose(
        out, digits_net(mx.nd.array(digits.x_test[:5])).asnumpy(), rtol=1e-4, atol=1e-5
    )


def test_accuracy_aware_tuning_with_eval_func(digits_net, digits_calib, digits):
    from inc_core import AccuracyCriterion, TuningCriterion

    seen = []

    def eval_func(model) -> float:
        seen.append(type(model).__name__)
        return models.accuracy(model, digits.x_test, digits.y_test)

    conf = PostTrainingQuantConfig(
        approach="static",
        accuracy_criterion=AccuracyCriterion(criterion="relative", tolerable_loss=0.01),
        tuning_criterion=TuningCriterion(max_trials=5),
    )
    q = quantization.fit(digits_net, conf, calib_dataloader=digits_calib, eval_func=eval_func)
    fp32 = models.accuracy(digits_net, digits.x_test, digits.y_test)
    assert q.plan.quantized_ops()
    assert models.accuracy(q.model, digits.x_test, digits.y_test) >= fp32 * 0.99
    assert len(seen) >= 2 and set(seen) == {"GraphBlock"}  # baseline + at least one candidate


def test_tuning_with_eval_dataloader_and_metric(digits_net, digits_calib, digits):
    from inc_core.metric import METRICS

    q = quantization.fit(
        digits_net,
        PostTrainingQuantConfig(approach="static"),
        calib_dataloader=digits_calib,
        eval_dataloader=models.batches(digits.x_test, digits.y_test, 100),
        eval_metric=METRICS("mxnet")["Accuracy"](),
    )
    fp32 = models.accuracy(digits_net, digits.x_test, digits.y_test)
    assert models.accuracy(q.model, digits.x_test, digits.y_test) >= fp32 * 0.99


def test_op_names_are_the_gluon_layer_names(digits_net):
    backend = registry.for_model(digits_net)
    ops = backend.ops(backend.load_model(digits_net, None))
    layers = [b for b in digits_net if b.params.keys() and type(b).__name__ in ("Conv2D", "Dense")]
    assert [op.name for op in ops] == [b.name for b in layers]
    assert [op.type for op in ops] == [
        "Convolution",
        "Convolution",
        "FullyConnected",
        "FullyConnected",
    ]


def test_fully_connected_weights_follow_the_convention(digits_net, digits_calib):
    from inc_core import scheme

    q = _quantize(digits_net, digits_calib)
    args, _ = q.model.arrays()
    weight = digits_net[5].weight.data().asnumpy()
    stored = args["digits_dense0_weight_quantize"].asnumpy()
    params = scheme.weight_qparams(weight, dtype="int8", convention="mxnet")
    np.testing.assert_array_equal(stored, scheme.quantize(weight, params))


@pytest.mark.parametrize(
    "layer", ["digits_conv0", "digits_conv1", "digits_dense0", "digits_dense1"]
)
def test_any_single_layer_can_fall_back_to_fp32(digits_net, digits_calib, digits, layer):
    rule = {layer: {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}}
    q = _quantize(digits_net, digits_calib, op_name_dict=rule)
    assert q.plan.float_ops() == [layer]
    table = read_calibration(_symbol(q.model), q.model.data_names)
    assert all(np.isfinite([e.min, e.max]).all() for e in table.values())
    fp32 = models.accuracy(digits_net, digits.x_test, digits.y_test)
    assert models.accuracy(q.model, digits.x_test, digits.y_test) >= fp32 * 0.99


class TwoInputs(mx.gluon.HybridBlock):
    def __init__(self) -> None:
        super().__init__(prefix="two_")
        with self.name_scope():
            self.left = mx.gluon.nn.Dense(8, activation="relu")
            self.right = mx.gluon.nn.Dense(8, activation="relu")
            self.out = mx.gluon.nn.Dense(10)

    def hybrid_forward(self, F, a, b):
        return self.out(F.concat(self.left(a), self.right(b), dim=1))


def test_two_input_block_takes_tuples_and_dicts(digits):
    net = TwoInputs()
    net.initialize(mx.init.Xavier())
    a, b = digits.x_train[:, :, :4].reshape(-1, 32), digits.x_train[:, :, 4:].reshape(-1, 32)
    ref = net(mx.nd.array(a[:50]), mx.nd.array(b[:50])).asnumpy()
    calib = [
        ((a[i : i + 50], b[i : i + 50]), digits.y_train[i : i + 50]) for i in range(0, 200, 50)
    ]
    q = _quantize(net, calib)
    assert q.model.data_names == ("data0", "data1")
    assert q.plan.quantized_ops() == ["two_dense0", "two_dense1", "two_dense2"]
    out = q.model(mx.nd.array(a[:50]), mx.nd.array(b[:50])).asnumpy()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    backend = MxnetBackend()
    by_name = backend.predict(q.model, {"data0": a[:50], "data1": b[:50]})
    np.testing.assert_array_equal(by_name, out)
