"""SmoothQuant's 1/s folded into the norm (or Linear) that produces a Linear's input, where
nothing else reads that output: a pre-norm Llama folds; BERT (post-LayerNorm) does not."""

from __future__ import annotations

import copy

import pytest
import torch

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_core.quantization import prepare_session
from inc_torch import smooth_fold, smooth_quant
from inc_torch.info import info_of

from . import models

SMOOTH = {"smooth_quant": True, "smooth_quant_args": {"alpha": "auto"}}


@pytest.fixture(scope="module")
def llama(digits):
    return models.tiny_llama(digits)


def _linears(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def test_pre_norm_blocks_fold_and_post_norm_blocks_do_not(llama, bert, bert_calib):
    folds = {f.absorber: f.linears for f in smooth_fold.find(llama, _linears(llama), bert_calib[0])}
    attn, mlp = "model.layers.0.self_attn.", "model.layers.0.mlp."
    assert folds["model.layers.0.input_layernorm"] == tuple(
        attn + p for p in ("q_proj", "k_proj", "v_proj")
    )
    assert folds["model.layers.0.post_attention_layernorm"] == (mlp + "gate_proj", mlp + "up_proj")
    # o_proj reads attention, down_proj reads act(gate) * up: no absorber
    assert not any(
        attn + "o_proj" in group or mlp + "down_proj" in group for group in folds.values()
    )
    # BERT's LayerNorm outputs also feed the residual connections
    assert smooth_fold.find(bert, _linears(bert), bert_calib[0]) == []


def test_folded_smoothing_is_exact_before_quantization(llama, bert_calib):
    conf = PostTrainingQuantConfig(approach="static", recipes=SMOOTH)
    plan = prepare_session(llama, conf, bert_calib).default_plan
    scales = smooth_quant.compute(llama, plan, bert_calib)
    assert "model.layers.0.self_attn.q_proj@model.layers.0.input_layernorm" in scales
    group = [s for k, s in scales.items() if k.endswith("@model.layers.0.input_layernorm")]
    assert len(group) == 3 and all((s == group[0]).all() for s in group)  # one s per group
    smoothed = copy.deepcopy(llama)
    smooth_quant.scale_weights(smoothed, scales)
    smooth_quant.install(smoothed, scales)
    norm = "model.layers.0.input_layernorm.weight"
    assert not torch.equal(smoothed.get_parameter(norm), llama.get_parameter(norm))
    ids = bert_calib[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(
            smoothed(input_ids=ids).logits, llama(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )


def test_int8_llama_with_folded_smoothing_keeps_accuracy_and_reloads(
    llama, digits, bert_calib, tmp_path
):
    fp32_accuracy = models.bert_accuracy(llama, digits)
    conf = PostTrainingQuantConfig(approach="static", recipes=SMOOTH, guards=False)
    q = quantization.fit(llama, conf, calib_dataloader=bert_calib)
    smooth = info_of(q.model).smooth
    assert any("@" in key for key in smooth) and any("@" not in key for key in smooth)
    # folded Linears have no input hook; the others (o_proj, down_proj) keep theirs
    q_proj = q.model.get_submodule("model.layers.0.self_attn.q_proj")
    o_proj = q.model.get_submodule("model.layers.0.self_attn.o_proj")
    assert not q_proj._forward_pre_hooks and o_proj._forward_pre_hooks
    assert models.bert_accuracy(q.model, digits) >= fp32_accuracy * 0.99

    q.save(tmp_path / "sq")
    loaded = load(tmp_path / "sq", model=models.tiny_llama(digits))
    ids, _ = models.digit_tokens(digits, "test")
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, q.model(input_ids=ids).logits)


class _OnePlusRMSNorm(torch.nn.Module):
    """Gemma's RMSNorm: ``x * (1 + weight)``, so dividing ``weight`` does not divide the output."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((n,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


class _PreNorm(torch.nn.Module):
    def __init__(self, norm: torch.nn.Module, mode: str = "plain") -> None:
        super().__init__()
        self.norm, self.a, self.b, self.mode = (
            norm,
            torch.nn.Linear(8, 8),
            torch.nn.Linear(8, 8),
            mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(x)
        if self.mode == "twice":
            return self.b(self.a(self.a(h)))
        out = self.b(self.a(h))
        return (out, h) if self.mode == "returns norm" else out


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (_PreNorm(torch.nn.LayerNorm(8)), {"norm": ("a",), "a": ("b",)}),
        (_PreNorm(_OnePlusRMSNorm(8)), {"a": ("b",)}),  # the norm does not scale its output
        (_PreNorm(torch.nn.LayerNorm(8), "returns norm"), {"a": ("b",)}),  # h is an output
        (_PreNorm(torch.nn.LayerNorm(8), "twice"), {}),  # a runs twice: neither side folds
    ],
    ids=["layernorm", "one-plus-weight-norm", "norm-output-returned", "linear-called-twice"],
)
def test_folds_only_what_scales_exactly(digits, model, expected):
    rows = torch.from_numpy(digits.x_test[:32, 0])  # 32 digits as 8 rows of 8 pixels
    folds = smooth_fold.find(model.eval(), ["a", "b"], rows)
    assert {f.absorber: f.linears for f in folds} == expected
