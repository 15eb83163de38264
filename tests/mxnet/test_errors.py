"""Bad input gets an error that says what was wrong and what is allowed."""

from __future__ import annotations

import mxnet as mx
import pytest
from mxnet import gluon

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError, ModelError


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
