"""BatchNormalization folded into the conv before it, with the ReLU after it fused."""

from __future__ import annotations

import numpy as np

from inc_core import PostTrainingQuantConfig, quantization
from inc_tf import fold
from inc_tf import layers as kl

from .conftest import same_weights, weights_of


def test_folded_copy_computes_the_same_function(bn_cnn, digits):
    copy = fold.graph_copy(bn_cnn, fold_batchnorm=True)
    kinds = {layer.name: kl.layer_type(layer) for layer in copy.layers}
    assert kinds["bn1"] == kinds["relu1"] == kinds["bn3"] == "Identity"
    assert copy.get_layer("conv1").activation.__name__ == "relu"
    np.testing.assert_allclose(
        np.asarray(copy(digits.x_test, training=False)),
        np.asarray(bn_cnn(digits.x_test, training=False)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_bn_model_quantizes_to_int8_convs_with_fused_relu(bn_cnn, digits):
    before = weights_of(bn_cnn)
    q = quantization.fit(
        bn_cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=digits.calib()
    )
    assert same_weights(before, weights_of(bn_cnn))
    names = q.model.op_names()
    # no float BatchNormalization (MUL/ADD) or separate RELU left between the convs
    assert "MUL" not in names and "RELU" not in names, names
    assert names.count("QUANTIZE") == 1 and names.count("DEQUANTIZE") == 1, names
    fp32 = digits.accuracy(lambda x: bn_cnn(x, training=False))
    assert digits.accuracy(q.model) >= fp32 * 0.99
