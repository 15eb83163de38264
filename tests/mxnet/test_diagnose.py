"""The guards' hooks on MXNet's oneDNN int8 graphs: per-op outputs, what runs, latency."""

from __future__ import annotations

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.fidelity import sqnr_db
from inc_core.space import OpQuant, QuantPlan
from inc_mxnet.backend import MxnetBackend

from . import models

#: a modest floor for one int8 op's output against fp32 (measured 27-43 dB on these models)
MIN_SQNR_DB = 20.0
FP32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}


def plan_for(backend: MxnetBackend, graph, float_ops: tuple[str, ...] = ()) -> QuantPlan:
    """The capability's default scheme for every op, ``float_ops`` in fp32."""
    caps = backend.capability("static", "cpu")
    ops, types = {}, {}
    for op in backend.ops(graph):
        types[op.name] = op.type
        cap = caps[op.type]
        ops[op.name] = (
            OpQuant.float()
            if op.name in float_ops
            else OpQuant("static", cap.activation.default(), cap.weight.default())
        )
    return QuantPlan(ops=ops, op_types=types)


def build(net, x: np.ndarray, float_ops: tuple[str, ...] = ()):
    backend = MxnetBackend()
    graph = backend.load_model(net, None)
    plan = plan_for(backend, graph, float_ops)
    ranges = backend.calibrate(graph, [x[i : i + 50] for i in range(0, 200, 50)], plan)
    return backend, graph, plan, backend.quantize(graph, plan, ranges)


@pytest.fixture(scope="module")
def mnist():
    data = models.mnist_5k()
    return data, models.trained("mnist", models.mnist_cnn(), data, epochs=3)


@pytest.fixture(params=["digits", "mnist"])
def case(request, digits, digits_net):
    if request.param == "digits":
        return digits_net, digits.x_train, digits.x_test[:32]
    data, net = request.getfixturevalue("mnist")
    return net, data.x_train, data.x_test[:32]


def test_op_outputs_name_the_ops_with_equal_shapes_and_int8_is_close(case):
    net, x, batch = case
    backend, graph, plan, q = build(net, x)
    names = list(plan.ops)
    fp32 = backend.op_outputs(graph, batch, names)
    int8 = backend.op_outputs(q, batch, names)
    assert set(fp32) == set(names) and set(int8) == set(names)
    for name in names:
        assert fp32[name].dtype == np.float32 and int8[name].dtype == np.float32
        assert fp32[name].shape == int8[name].shape and fp32[name].shape[0] == len(batch)
        assert sqnr_db(fp32[name], int8[name]) >= MIN_SQNR_DB, name
    # the last op's output is the model's: op_outputs reads the graph the runtime runs
    last = names[-1]
    np.testing.assert_allclose(fp32[last], backend.predict(graph, batch), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(int8[last], backend.predict(q, batch), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fallback", ["digits_conv1", "digits_dense0"])
def test_runs_as_names_int8_kernels_and_fp32_fallback(digits, digits_net, fallback):
    backend, _, plan, q = build(digits_net, digits.x_train, (fallback,))
    runs = backend.runs_as(q)
    assert set(runs) == set(plan.ops)
    for name, op in plan.ops.items():
        kernel = (
            "_sg_mkldnn_conv"
            if plan.op_types[name] == "Convolution"
            else ("_sg_mkldnn_fully_connected")
        )
        assert runs[name] == f"{kernel} ({'int8' if op.quantized else 'fp32'})", runs
    out = backend.op_outputs(q, digits.x_test[:32], [fallback])
    assert out[fallback].dtype == np.float32  # a float node's output, read as it is


def test_all_fp32_plan_builds_and_runs_fp32(digits, digits_net):
    names = tuple(op.name for op in MxnetBackend().ops(digits_net))
    backend, graph, _, q = build(digits_net, digits.x_train, names)
    assert set(backend.runs_as(q).values()) <= {
        "_sg_mkldnn_conv (fp32)",
        "_sg_mkldnn_fully_connected (fp32)",
    }
    batch = digits.x_test[:16]
    ref, got = backend.op_outputs(graph, batch, names), backend.op_outputs(q, batch, names)
    for name in names:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5)


def test_unknown_names_are_left_out_and_fp32_graphs_run_nothing_int8(digits, digits_net):
    backend, graph, _, q = build(digits_net, digits.x_train)
    assert backend.op_outputs(q, digits.x_test[:4], ["no_such_op"]) == {}
    assert backend.runs_as(graph) == {}


def test_latency_of_fp32_and_int8(digits, digits_net):
    backend, graph, _, q = build(digits_net, digits.x_train)
    batches = [digits.x_test[:16]] * 3
    assert backend.latency(graph, batches) > 0 and backend.latency(q, batches) > 0


def test_fit_op_report_says_what_ran(digits_net, digits_calib):
    # guards=False: the diagnosis is still made, and no timing decides which ops stay int8
    conf = PostTrainingQuantConfig(op_name_dict={"digits_conv1": FP32}, guards=False)
    q = quantization.fit(digits_net, conf, calib_dataloader=digits_calib)
    rows = {row["op"]: row for row in q.op_report()}
    assert rows["digits_conv1"]["runs_as"] == "_sg_mkldnn_conv (fp32)"
    quantized = [r for r in rows.values() if r["op"] in q.plan.quantized_ops()]
    assert quantized
    for row in quantized:
        assert row["runs_as"].endswith("(int8)"), row
        assert row["sqnr_db"] is not None and row["sqnr_db"] >= MIN_SQNR_DB, row
