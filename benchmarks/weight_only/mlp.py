"""(a) An LLM-shaped MLP block at batch 1 (one decode step): latency and weight size.

LLaMA-7B's MLP shapes, SwiGLU: ``down(silu(x @ gate) * (x @ up))`` with gate/up 4096x11008 and
down 11008x4096 (135M weights, 541 MB in fp32); weights seeded N(0, 0.02) (latency and size do
not depend on their values). ONNX Runtime and torch each run it with 2 intra-op threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from .common import Fitted, inc_fit, interleaved, model_bytes, timed, weight_only_conf

HIDDEN, FFN = 4096, 11008
THREADS = 2
SCHEMES = ((4, 32, "sym"), (8, -1, "sym"))


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"gate": (HIDDEN, FFN), "up": (HIDDEN, FFN), "down": (FFN, HIDDEN)}
    return {k: (rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in shapes.items()}


def onnx_block(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "gate"], ["g"], name="gate_proj"),
        helper.make_node("Sigmoid", ["g"], ["sg"], name="sigmoid"),
        helper.make_node("Mul", ["g", "sg"], ["silu"], name="silu"),
        helper.make_node("MatMul", ["x", "up"], ["u"], name="up_proj"),
        helper.make_node("Mul", ["silu", "u"], ["h"], name="gated"),
        helper.make_node("MatMul", ["h", "down"], ["y"], name="down_proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "llm_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, HIDDEN])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class TorchBlock(torch.nn.Module):
    def __init__(self, w: dict[str, np.ndarray]) -> None:
        super().__init__()
        # nn.Linear keeps (out, in): the transpose of the ONNX B
        self.gate_proj = torch.nn.Linear(HIDDEN, FFN, bias=False)
        self.up_proj = torch.nn.Linear(HIDDEN, FFN, bias=False)
        self.down_proj = torch.nn.Linear(FFN, HIDDEN, bias=False)
        with torch.no_grad():
            for name in ("gate", "up", "down"):
                getattr(self, f"{name}_proj").weight.copy_(torch.from_numpy(w[name].T.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def peer(
    model: onnx.ModelProto, bits: int, block: int, sym: bool, level: int = 4
) -> onnx.ModelProto:
    """onnxruntime's own weight-only quantizer (RTN, its default algorithm) on a copy of ``model``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    # the quantizer rewrites the graph it is given in place: hand it a copy
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    quantizer = MatMulNBitsQuantizer(
        copy, bits=bits, block_size=block, is_symmetric=sym, accuracy_level=level
    )
    quantizer.process()
    return quantizer.model.model


def _rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def stock_kernels(block: TorchBlock) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """torch's own weight-packed matmuls (int8 per channel; int4 sym g32), for reference: what a
    plain swap onto them gives (not inc)."""
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    lin = {n: getattr(block, f"{n}_proj").weight.detach() for n in ("gate", "up", "down")}
    i8 = {}
    for n, w in lin.items():
        s = w.abs().amax(1) / 127
        i8[n] = (torch.round(w / s[:, None]).clamp(-128, 127).to(torch.int8), s)
    mm8 = torch.ops.aten._weight_int8pack_mm

    def int8(x: torch.Tensor) -> torch.Tensor:
        g, u = mm8(x, *i8["gate"]), mm8(x, *i8["up"])
        return mm8(torch.nn.functional.silu(g) * u, *i8["down"])

    out["torch _weight_int8pack_mm (per channel)"] = int8
    i4 = {}
    for n, w in lin.items():
        rows, k = w.shape
        groups = w.reshape(rows, k // 32, 32)
        scale = groups.abs().amax(-1) / 7.5
        q = (
            (torch.round(groups / scale[..., None]) + 8)
            .clamp(0, 15)
            .to(torch.int32)
            .reshape(rows, k)
        )
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.stack([scale.T, torch.zeros_like(scale.T)], -1).contiguous()
        i4[n] = (packed, sz)
    mm4 = torch.ops.aten._weight_int4pack_mm_for_cpu

    def int4(x: torch.Tensor) -> torch.Tensor:
        g, u = mm4(x, i4["gate"][0], 32, i4["gate"][1]), mm4(x, i4["up"][0], 32, i4["up"][1])
        h = torch.nn.functional.silu(g) * u
        return mm4(h, i4["down"][0], 32, i4["down"][1])

    out["torch _weight_int4pack_mm_for_cpu (sym g32)"] = int4
    return out


def run(rounds: int) -> list[dict[str, Any]]:
    w = weights()
    fp32 = onnx_block(w)
    rng = np.random.default_rng(1)
    probes = rng.standard_normal((8, 1, HIDDEN)).astype(np.float32)
    x1 = probes[0]
    rows: list[dict[str, Any]] = []

    # ONNX Runtime
    ort_models: dict[str, tuple[onnx.ModelProto, float]] = {"fp32": (fp32, 0.0)}
    for bits, block, sym, what in (
        (4, 32, True, "sym g32"),
        (4, 128, False, "asym g128, its default"),
    ):
        model, secs = timed(lambda b=bits, k=block, s=sym: peer(fp32, b, k, s))
        ort_models[f"onnxruntime MatMulNBitsQuantizer int{bits} {what}, accuracy_level=4"] = (
            model,
            secs,
        )
    pending: dict[str, Fitted] = {}
    for bits, group, scheme in SCHEMES:
        g = "per-channel" if group == -1 else f"g{group}"
        name = f"inc int{bits} {scheme} {g} RTN"
        fitted = inc_fit(fp32, weight_only_conf(bits, group, scheme, "RTN"))
        if fitted.ok:
            ort_models[name] = (fitted.model, fitted.seconds)
        else:
            pending[name] = fitted
    sessions = {k: session(m) for k, (m, _) in ort_models.items()}
    ref = np.concatenate([sessions["fp32"].run(None, {"x": p})[0] for p in probes])
    lat = interleaved(
        {k: (lambda s=s: s.run(None, {"x": x1})) for k, s in sessions.items()}, rounds
    )
    fp32_bytes = fp32.ByteSize()
    for name, (model, secs) in ort_models.items():
        out = np.concatenate([sessions[name].run(None, {"x": p})[0] for p in probes])
        rows.append(
            _row(
                "ONNX Runtime",
                name,
                lat[name],
                lat["fp32"],
                model.ByteSize(),
                fp32_bytes,
                _rel_error(out, ref),
                secs,
            )
        )
    rows += [_pending_row("ONNX Runtime", name, f) for name, f in pending.items()]

    # torch
    torch.set_num_threads(THREADS)
    block = TorchBlock(w).eval()
    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"fp32": block}
    sizes = {"fp32": model_bytes(block)}
    secs_of = {"fp32": 0.0}
    for name, fn in stock_kernels(block).items():
        runners[name] = fn
    sizes["torch _weight_int8pack_mm (per channel)"] = sum(
        t.numel() * (1 + 4 / t.shape[1])
        for t in (block.gate_proj.weight, block.up_proj.weight, block.down_proj.weight)
    )
    sizes["torch _weight_int4pack_mm_for_cpu (sym g32)"] = sum(
        t.numel() * (0.5 + 8 / 32)
        for t in (block.gate_proj.weight, block.up_proj.weight, block.down_proj.weight)
    )
    tpending: dict[str, Fitted] = {}
    for bits, group, scheme in SCHEMES:
        g = "per-channel" if group == -1 else f"g{group}"
        name = f"inc int{bits} {scheme} {g} RTN"
        fitted = inc_fit(block, weight_only_conf(bits, group, scheme, "RTN"))
        if fitted.ok:
            runners[name], sizes[name], secs_of[name] = (
                fitted.model,
                model_bytes(fitted.model),
                fitted.seconds,
            )
        else:
            tpending[name] = fitted
    tprobes = torch.from_numpy(probes)
    with torch.inference_mode():
        tref = np.concatenate([block(p).numpy() for p in tprobes])
        tx1 = tprobes[0]
        tlat = interleaved({k: (lambda f=f: f(tx1)) for k, f in runners.items()}, rounds)
        for name, fn in runners.items():
            out = np.concatenate([fn(p).numpy() for p in tprobes])
            rows.append(
                _row(
                    "torch",
                    name,
                    tlat[name],
                    tlat["fp32"],
                    int(sizes[name]),
                    sizes["fp32"],
                    _rel_error(out, tref),
                    secs_of.get(name, 0.0),
                )
            )
    rows += [_pending_row("torch", name, f) for name, f in tpending.items()]
    return rows


def _row(
    runtime: str,
    variant: str,
    secs: float,
    fp32_secs: float,
    size: int,
    fp32_size: int,
    err: float,
    qsecs: float,
) -> dict[str, Any]:
    return {
        "runtime": runtime,
        "variant": variant,
        "ms": f"{secs * 1e3:.2f}",
        "speedup": f"{fp32_secs / secs:.2f}x",
        "size": f"{size / 2**20:.1f} MB ({size / fp32_size:.3f}x)",
        "error": f"{err:.4f}",
        "quant_s": f"{qsecs:.1f}",
    }


def _pending_row(runtime: str, variant: str, fitted: Fitted) -> dict[str, Any]:
    cell = fitted.cell()
    return {
        "runtime": runtime,
        "variant": variant,
        "ms": cell,
        "speedup": "-",
        "size": "-",
        "error": "-",
        "quant_s": "-",
    }
