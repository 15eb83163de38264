"""One torch corpus model: fp32, inc's default int8 and torch.ao FX PTQ (x86 defaults), timed together."""

from __future__ import annotations

import copy
import traceback
from typing import Any

import torch
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from benchmarks.models import measure
from benchmarks.models.ort_runner import failure
from inc_core import PostTrainingQuantConfig, quantization
from tests.corpus.torch_models import MODELS, TorchCorpusModel

THREADS = 2


def peer(module: torch.nn.Module, calib: list[torch.Tensor]) -> torch.nn.Module:
    """torch.ao's documented FX post-training static flow with the x86 default qconfig mapping."""
    prepared = prepare_fx(copy.deepcopy(module), get_default_qconfig_mapping("x86"), (calib[0],))
    with torch.inference_mode():
        for x in calib:
            prepared(x)
    return convert_fx(prepared)


def bench(name: str, rounds: int, n_calib: int = 4, n_eval: int = 4) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    model: TorchCorpusModel = MODELS[name]
    row = measure.corpus_row(name, model)
    fp32 = model.module()
    calib, evaluation = (
        model.batches("calib", n_calib, rich=True),
        model.batches("eval", n_eval, rich=True),
    )
    variants: dict[str, Any] = {"fp32": fp32}
    try:
        q, secs, mem = measure.measured(
            lambda: quantization.fit(
                fp32, PostTrainingQuantConfig(), calib_dataloader=[(x, 0) for x in calib]
            )
        )
        variants["inc"] = q.model
        row.update(measure.inc_columns(q, secs, mem))
    except Exception as exc:
        row["inc_error"] = failure(exc)
        traceback.print_exc()
    try:
        variants["peer"], row["peer_s"], row["peer_mb"] = measure.measured(
            lambda: peer(fp32, calib)
        )
    except Exception as exc:
        row["peer_error"] = failure(exc)
    with torch.inference_mode():
        outs = {k: [m(x) for x in evaluation] for k, m in variants.items()}
        for k in variants:
            row[f"{k}_fid"] = model.fidelity(outs["fp32"], outs[k])
        x = evaluation[0]
        lat = measure.interleaved({k: (lambda m=m: m(x)) for k, m in variants.items()}, rounds)
    for k, v in lat.items():
        row[f"{k}_ms"] = v * 1e3
    return row
