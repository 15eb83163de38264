"""A tiny BERT (built from a config, trained on digit tokens): HF Trainer QAT, SmoothQuant, ipex."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers
from torch.ao.quantization import FakeQuantizeBase

from inc_core import PostTrainingQuantConfig, QuantizationAwareTrainingConfig, load, quantization
from inc_core.errors import GuardWarning
from inc_core.quantization import prepare_session
from inc_torch import smooth_quant
from inc_torch.info import info_of
from inc_torch.transformers import QuantizationCallback

from . import models


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_hf_trainer_callback_trains_fake_quantized_and_yields_int8(bert, digits, tmp_path):
    model = models.tiny_bert(digits)  # a fresh copy the Trainer may own
    baseline = models.bert_accuracy(bert, digits)
    callback = QuantizationCallback(QuantizationAwareTrainingConfig())
    assert isinstance(callback, transformers.TrainerCallback)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=30,
        per_device_train_batch_size=32,
        learning_rate=5e-4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=_Tokens(*models.digit_tokens(digits, "train")),
        callbacks=[callback],
    )
    # swapped at on_init_end, before the Trainer builds its optimizer
    assert any(isinstance(m, FakeQuantizeBase) for m in model.modules())
    weights = {id(p) for p in model.parameters()}
    trainer.train()
    assert {id(p) for group in trainer.optimizer.param_groups for p in group["params"]} <= weights

    int8 = callback.quantized.model
    assert isinstance(
        int8.bert.encoder.layer[0].intermediate.dense.module, torch.ao.nn.quantized.Linear
    )
    assert models.bert_accuracy(int8, digits) >= baseline * 0.99

    callback.save(tmp_path / "int8")
    loaded = load(tmp_path / "int8", model=models.tiny_bert(digits))
    ids, _ = models.digit_tokens(digits, "test")
    with torch.no_grad():
        want = int8(input_ids=ids).logits
        assert torch.equal(loaded.model(input_ids=ids).logits, want)

    # trainer.save_model: transformers' files (the trained weights) plus the int8 model
    trainer.save_model(str(tmp_path / "saved"))
    trained = type(model).from_pretrained(tmp_path / "saved")
    assert not any(isinstance(m, FakeQuantizeBase) for m in trained.modules())
    wrapped = model.get_submodule("bert.encoder.layer.0.intermediate.dense").module  # QuantWrapper
    assert torch.equal(
        trained.get_parameter("bert.encoder.layer.0.intermediate.dense.weight"), wrapped.weight
    )
    reloaded = load(tmp_path / "saved" / "int8", model=trained)
    with torch.no_grad():
        assert torch.equal(reloaded.model(input_ids=ids).logits, want)
    # training again: until it ends, save_pretrained is transformers' own (no stale int8)
    callback.on_train_begin(args, trainer.state, trainer.control, model=model)
    assert "save_pretrained" not in vars(model)


# The mechanism tests below run with guards=False: on a 2-core CPU this tiny BERT's int8 runs
# about 1.4x the time of fp32, so the default speed guard hands back its fp32 build (tested next).


def test_the_speed_guard_hands_back_fp32_when_int8_bert_is_slower(bert, bert_calib, tmp_path):
    ids = bert_calib[0]["input_ids"]
    with torch.no_grad():
        want = bert(input_ids=ids).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GuardWarning)
        q = quantization.fit(
            bert, PostTrainingQuantConfig(approach="static"), calib_dataloader=bert_calib
        )
    said = [str(w.message) for w in caught if issubclass(w.category, GuardWarning)]
    speed = q.report["speed"]
    if speed.get("returned") != "all ops fp32":  # int8 measured as fast on this machine
        assert q.plan.quantized_ops()
        assert not any("the returned model has no int8 op" in m for m in said)
        return
    assert q.plan.quantized_ops() == [] and speed["best_int8_ratio"] > 1.0
    assert any("the returned model has no int8 op" in m for m in said)
    with torch.no_grad():
        assert torch.equal(q.model(input_ids=ids).logits, want)
        assert torch.equal(bert(input_ids=ids).logits, want)  # the user's model untouched
    q.save(tmp_path / "q")
    loaded = load(tmp_path / "q", model=copy.deepcopy(bert))
    assert loaded.plan.quantized_ops() == []
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, want)


def test_static_ptq_on_bert_uses_eager_mode(bert, digits, bert_calib):
    q = quantization.fit(
        bert, PostTrainingQuantConfig(approach="static", guards=False), calib_dataloader=bert_calib
    )
    assert info_of(q.model).mode == "eager"  # HF models are not symbolically traceable by torch.fx
    assert models.bert_accuracy(q.model, digits) >= models.bert_accuracy(bert, digits) * 0.99


@pytest.mark.parametrize("alpha", [0.5, "auto"])
def test_smooth_quant_keeps_accuracy_and_saves_its_scales(
    bert, digits, bert_calib, alpha, tmp_path
):
    recipes = {"smooth_quant": True, "smooth_quant_args": {"alpha": alpha}}
    q = quantization.fit(
        bert,
        PostTrainingQuantConfig(approach="static", recipes=recipes, guards=False),
        calib_dataloader=bert_calib,
    )
    smooth = info_of(q.model).smooth
    assert "bert.encoder.layer.0.attention.self.query" in smooth
    assert all(len(s) == 32 or len(s) == 64 for s in smooth.values())
    assert models.bert_accuracy(q.model, digits) >= models.bert_accuracy(bert, digits) * 0.99

    q.save(tmp_path / "sq")
    loaded = load(tmp_path / "sq", model=models.tiny_bert(digits))
    ids, _ = models.digit_tokens(digits, "test")
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, q.model(input_ids=ids).logits)


def test_smooth_quant_is_exact_before_quantization(bert, bert_calib):
    conf = PostTrainingQuantConfig(approach="static", recipes={"smooth_quant": True})
    plan = prepare_session(bert, conf, bert_calib).default_plan
    scales = smooth_quant.compute(bert, plan, bert_calib)
    smoothed = copy.deepcopy(bert)
    smooth_quant.scale_weights(smoothed, scales)
    smooth_quant.install(smoothed, scales)
    ids = bert_calib[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            smoothed(input_ids=ids).logits, bert(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )


def test_ipex_backend_uses_onednn_and_the_ipex_scheme(bert, digits, bert_calib):
    from inc_core import scheme

    conf = PostTrainingQuantConfig(approach="static", backend="ipex", guards=False)
    q = quantization.fit(bert, conf, calib_dataloader=bert_calib)
    info = info_of(q.model)
    assert info.plan.backend == "ipex"
    # the spec's IPEX int8 scheme: zero point 0, scale = 2 * max|x| / 254
    quant = q.model.bert.encoder.layer[0].intermediate.dense.quant
    key = "bert.encoder.layer.0.intermediate.dense.quant.activation_post_process"
    rng = info.ranges[key]
    expected = scheme.compute_qparams(
        rng.min, rng.max, dtype="int8", scheme="sym", convention="ipex"
    )
    assert int(quant.zero_point) == 0
    assert float(quant.scale) == pytest.approx(float(expected.scale), rel=1e-6)
    assert quant.dtype == torch.qint8
    assert models.bert_accuracy(q.model, digits) >= models.bert_accuracy(bert, digits) * 0.99
