"""The core's bad-input and fault catalogue: each case an inc error (or the user's own exception)
naming what was wrong and what is allowed, the user's model untouched, nothing left behind.

The model is the reference backend's numpy MLP; plugins are real distributions written into a
temporary directory on ``sys.path`` (as in ``test_registry``), never mocks of a framework.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, QuantizationAwareTrainingConfig, quantization
from inc_core import backend as registry
from inc_core.errors import BackendNotAvailable, ConfigError, DataError, IncError, ModelError
from inc_core.metric import METRICS
from tests.bad_input import listing

from .reference_backend import NumpyMLP, ReferenceBackend

STATIC = PostTrainingQuantConfig(approach="static")
UNGUARDED = PostTrainingQuantConfig(approach="static", guards=False, calibration_sampling_size=200)


def fingerprint(model: NumpyMLP) -> str:
    """A digest of everything the model holds: weights, biases, names, meta."""
    digest = hashlib.sha256()
    for layer in model.layers:
        digest.update(layer.name.encode())
        digest.update(np.ascontiguousarray(layer.weight).tobytes())
        digest.update(np.ascontiguousarray(layer.bias).tobytes())
        digest.update(repr((layer.relu, layer.input_qparams, layer.weight_qparams)).encode())
    digest.update(json.dumps(model.meta, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def batches(x: np.ndarray, count: int = 4, size: int = 50) -> list[np.ndarray]:
    return [x[i * size : (i + 1) * size].copy() for i in range(count)]


def with_value(x: np.ndarray, batch: int, value: float) -> list[np.ndarray]:
    data = batches(x)
    data[batch][3, 5] = value
    return data


def replaced(x: np.ndarray, batch: int, new: Any) -> list[Any]:
    data: list[Any] = batches(x)
    data[batch] = new
    return data


def split(a: np.ndarray) -> dict[str, np.ndarray]:
    return {"a": a[:, :8], "b": a[:, 8:]}


def failing_loader(x: np.ndarray) -> Iterator[np.ndarray]:
    yield x[:50]
    raise OSError("disk read failed while loading batch 1")


class UserEvalError(RuntimeError):
    """The user's own exception: it must reach the user as it was raised."""


def raising_eval(model: Any) -> float:
    raise UserEvalError("eval_func hit a bug in the user's code")


@dataclass(frozen=True)
class Case:
    """One bad input: what fit gets, the error it must raise, and the words that must be in it."""

    id: str
    kwargs: Callable[[np.ndarray, np.ndarray], dict[str, Any]]
    error: type[BaseException]
    parts: tuple[str, ...]
    model: Callable[[NumpyMLP], Any] = lambda mlp: mlp


CASES = [
    # --- calibration data: each batch is checked against the first, and named by its index
    Case(
        "nan-in-a-later-batch",
        lambda x, y: {"conf": STATIC, "calib_dataloader": with_value(x, 2, np.nan)},
        DataError,
        ("calib_dataloader batch 2", "the input", "1 NaN", "must be finite"),
    ),
    Case(
        "nan-in-a-later-batch-guards-off",
        lambda x, y: {"conf": UNGUARDED, "calib_dataloader": with_value(x, 3, np.nan)},
        DataError,
        ("calib_dataloader batch 3", "NaN", "must be finite"),
    ),
    Case(
        "inf-in-a-later-batch",
        lambda x, y: {"conf": STATIC, "calib_dataloader": with_value(x, 1, -np.inf)},
        DataError,
        ("calib_dataloader batch 1", "1 inf", "must be finite"),
    ),
    Case(
        "nan-in-a-held-out-batch",
        lambda x, y: {
            "conf": PostTrainingQuantConfig(approach="static", calibration_sampling_size=100),
            "calib_dataloader": with_value(x, 2, np.nan),  # read for the fidelity guard
        },
        DataError,
        ("calib_dataloader batch 2", "NaN"),
    ),
    Case(
        "rank-changes-in-a-later-batch",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": replaced(x, 1, x[50:100, :, None]),
        },
        DataError,
        ("calib_dataloader batch 1", "(50, 16, 1)", "rank 3", "batch 0's", "rank 2", "axis 0"),
    ),
    Case(
        "dtype-changes-in-a-later-batch",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": replaced(x, 2, x[100:150].astype(np.float64)),
        },
        DataError,
        ("calib_dataloader batch 2", "float64", "batch 0's has float32", "same dtypes"),
    ),
    Case(
        "dict-keys-change-in-a-later-batch",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": [split(x[:50]), {"a": x[50:100, :8], "c": x[50:100, 8:]}],
        },
        DataError,
        ("calib_dataloader batch 1", "input 'c'", "input 'b'", "same inputs"),
    ),
    Case(
        "input-count-changes-in-a-later-batch",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": [
                ((x[:50, :8], x[:50, 8:]), y[:50]),
                ((x[50:100, :8], x[50:100, 8:12], x[50:100, 12:]), y[50:100]),
            ],
        },
        DataError,
        ("calib_dataloader batch 1", "input 2", "same inputs"),
    ),
    Case(
        "string-array",
        lambda x, y: {"conf": STATIC, "calib_dataloader": [np.full((4, 16), "0.5")]},
        DataError,
        ("calib_dataloader batch 0", "dtype <U3", "strings", "numeric arrays", "tokenize"),
    ),
    Case(
        "bytes-array",
        lambda x, y: {"conf": STATIC, "calib_dataloader": [np.full((4, 16), b"1")]},
        DataError,
        ("calib_dataloader batch 0", "dtype |S1", "bytes", "numeric"),
    ),
    Case(
        "ragged-object-array",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": [np.array([np.zeros(16), np.zeros(8)], dtype=object)],
        },
        DataError,
        ("calib_dataloader batch 0", "dtype object", "ragged", "pad them"),
    ),
    Case(
        "string-array-in-a-later-batch",
        lambda x, y: {"conf": STATIC, "calib_dataloader": replaced(x, 2, np.full((4, 16), "a"))},
        DataError,
        ("calib_dataloader batch 2", "strings"),
    ),
    Case(
        "batch-of-none",
        lambda x, y: {"conf": STATIC, "calib_dataloader": [None]},
        DataError,
        ("calib_dataloader batch 0", "no arrays"),
    ),
    Case(
        "bare-array-as-loader",
        lambda x, y: {"conf": STATIC, "calib_dataloader": x[:64]},
        DataError,
        ("single array of shape (64, 16)", "iterable of batches"),
    ),
    Case(
        "loader-not-iterable",
        lambda x, y: {"conf": STATIC, "calib_dataloader": 42},
        DataError,
        ("calib_dataloader must be iterable", "got int"),
    ),
    Case(
        "empty-loader",
        lambda x, y: {"conf": STATIC, "calib_dataloader": []},
        DataError,
        ("calib_dataloader yielded no samples", "at least one batch"),
    ),
    Case(
        "only-empty-batches",
        lambda x, y: {"conf": STATIC, "calib_dataloader": [x[:0], x[:0]]},
        DataError,
        ("yielded no samples",),
    ),
    Case(
        "loader-raises-midway",
        lambda x, y: {"conf": STATIC, "calib_dataloader": failing_loader(x)},
        OSError,
        ("disk read failed while loading batch 1",),
    ),
    # --- evaluation
    Case(
        "eval-loader-without-labels",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": batches(x),
            "eval_dataloader": batches(x),
            "eval_metric": METRICS("onnxrt")["topk"](),
        },
        DataError,
        ("eval_dataloader must yield (input, label) pairs",),
    ),
    Case(
        "eval-loader-empty",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": batches(x),
            "eval_dataloader": [],
            "eval_metric": METRICS("onnxrt")["topk"](),
        },
        DataError,
        ("eval_dataloader yielded no batches",),
    ),
    Case(
        "eval-metric-not-a-metric",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": batches(x),
            "eval_dataloader": [(x[:50], y[:50])],
            "eval_metric": "acuracy",
        },
        ConfigError,
        ("eval_metric", "reset(), update(preds, labels) and result()", "Accuracy"),
    ),
    Case(
        "eval-func-returns-a-string",
        lambda x, y: {"conf": STATIC, "calib_dataloader": batches(x), "eval_func": lambda m: "0.9"},
        DataError,
        ("eval_func must return a real number", "str", "'0.9'"),
    ),
    Case(
        "eval-func-returns-a-bool",
        lambda x, y: {"conf": STATIC, "calib_dataloader": batches(x), "eval_func": lambda m: True},
        DataError,
        ("eval_func must return a real number", "bool"),
    ),
    Case(
        "eval-func-returns-nan",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": batches(x),
            "eval_func": lambda m: float("nan"),
        },
        DataError,
        ("accuracy is nan", "finite number"),
    ),
    Case(
        "eval-func-raises",
        lambda x, y: {"conf": STATIC, "calib_dataloader": batches(x), "eval_func": raising_eval},
        UserEvalError,
        ("bug in the user's code",),
    ),
    Case(
        "eval-func-and-eval-loader-together",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": batches(x),
            "eval_func": lambda m: 1.0,
            "eval_dataloader": [(x[:50], y[:50])],
            "eval_metric": METRICS("onnxrt")["topk"](),
        },
        ConfigError,
        ("either eval_func or eval_dataloader + eval_metric",),
    ),
    Case(
        "eval-loader-without-metric",
        lambda x, y: {
            "conf": STATIC,
            "calib_dataloader": batches(x),
            "eval_dataloader": [(x[:50], y[:50])],
        },
        ConfigError,
        ("eval_metric is missing",),
    ),
    # --- configuration that only fit can judge
    Case(
        "config-is-a-dict",
        lambda x, y: {"conf": {"approach": "static"}, "calib_dataloader": batches(x)},
        ConfigError,
        ("takes a PostTrainingQuantConfig", "got dict"),
    ),
    Case(
        "qat-config-to-fit",
        lambda x, y: {"conf": QuantizationAwareTrainingConfig(), "calib_dataloader": batches(x)},
        ConfigError,
        ("got QuantizationAwareTrainingConfig", "prepare_compression"),
    ),
    Case(
        "static-without-calibration",
        lambda x, y: {"conf": STATIC},
        ConfigError,
        ("approach='static' needs calibration data", "approach='dynamic'"),
    ),
    Case(
        "op-name-not-in-the-model",
        lambda x, y: {
            "conf": PostTrainingQuantConfig(
                approach="static", op_name_dict={"fc9": {"activation": {"dtype": ["fp32"]}}}
            ),
            "calib_dataloader": batches(x),
        },
        ConfigError,
        ("'fc9'", "matches no op"),
    ),
    Case(
        "op-type-not-in-the-model",
        lambda x, y: {
            "conf": PostTrainingQuantConfig(
                approach="static", op_type_dict={"Conv2d": {"activation": {"dtype": ["fp32"]}}}
            ),
            "calib_dataloader": batches(x),
        },
        ConfigError,
        ("Conv2d", "Dense"),
    ),
    Case(
        "rules-keep-every-op-fp32",
        lambda x, y: {
            "conf": PostTrainingQuantConfig(
                approach="static", op_type_dict={"Dense": {"activation": {"dtype": ["fp32"]}}}
            ),
            "calib_dataloader": batches(x),
        },
        ConfigError,
        ("op_type_dict", "keep every op of the model in fp32", "Remove a rule"),
    ),
    Case(
        "backend-not-served-by-the-plugin",
        lambda x, y: {
            "conf": PostTrainingQuantConfig(approach="static", backend="onnxrt_dnnl_ep"),
            "calib_dataloader": batches(x),
        },
        ConfigError,
        ("backend='onnxrt_dnnl_ep' is not available for numpy models", "allowed: 'default'"),
    ),
    # --- models no backend takes
    Case(
        "model-is-none",
        lambda x, y: {"conf": STATIC, "calib_dataloader": batches(x)},
        ModelError,
        ("builtins.NoneType", "installed backends: reference"),
        model=lambda mlp: None,
    ),
    Case(
        "model-is-not-a-model",
        lambda x, y: {"conf": STATIC, "calib_dataloader": batches(x)},
        ModelError,
        ("builtins.dict", "installed backends"),
        model=lambda mlp: {"layers": mlp.layers},
    ),
    Case(
        "model-path-does-not-exist",
        lambda x, y: {"conf": STATIC, "calib_dataloader": batches(x)},
        ModelError,
        ("no-such-model.bin", "no installed inc backend accepts"),
        model=lambda mlp: "no-such-model.bin",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, mlp: NumpyMLP, blobs: Any, sandbox: Path) -> None:
    x, y = blobs
    kwargs = case.kwargs(x, y)
    model = case.model(mlp)
    before, files = fingerprint(mlp), listing(sandbox)
    with pytest.raises(case.error) as exc:
        quantization.fit(model, **kwargs)
    message = str(exc.value)
    for part in case.parts:
        assert part in message, f"{part!r} missing from: {message}"
    if case.error.__module__.startswith("inc_core"):
        assert isinstance(exc.value, IncError)
    assert fingerprint(mlp) == before
    assert listing(sandbox) == files


def test_a_tuning_error_before_any_trial_leaves_no_workspace(mlp, blobs, sandbox):
    files = listing(sandbox)
    with pytest.raises(UserEvalError):
        quantization.fit(mlp, STATIC, calib_dataloader=batches(blobs[0]), eval_func=raising_eval)
    assert listing(sandbox) == files


def test_a_file_no_backend_reads_is_a_model_error_and_stays(mlp, blobs, sandbox):
    path = sandbox / "work" / "weights.bin"
    path.write_bytes(bytes(range(256)) * 8)
    before, files = path.read_bytes(), listing(sandbox)
    with pytest.raises(ModelError, match=r"weights\.bin.*installed backends: reference"):
        quantization.fit(str(path), STATIC, calib_dataloader=batches(blobs[0]))
    assert path.read_bytes() == before
    assert listing(sandbox) == files


def test_shape_change_that_the_framework_rejects_names_the_batch(mlp, blobs, sandbox):
    # other sizes on axis 1 pass the data check (token sequences vary per batch); when the
    # framework then fails on them, the error names the batch that changed shape
    x = blobs[0]
    data = [x[:50], x[50:100], np.concatenate([x[100:150], x[100:150, :4]], axis=1)]
    before = fingerprint(mlp)
    with pytest.raises(DataError) as exc:
        quantization.fit(mlp, UNGUARDED, calib_dataloader=data)
    message = str(exc.value)
    for part in ("calibration failed", "calib_dataloader batch 2", "(50, 20)", "(50, 16)"):
        assert part in message, message
    assert isinstance(exc.value.__cause__, ValueError)  # numpy's own error, chained
    assert fingerprint(mlp) == before


def test_sequence_lengths_may_differ_between_batches(mlp, blobs):
    # what a per-batch padded tokenizer gives: valid as long as the model takes it
    x = blobs[0]

    class PaddedMLP(ReferenceBackend):
        """Reads the first 16 features of a batch padded to any width."""

        name = "padded"
        priority = 0

        @classmethod
        def accepts(cls, model: Any) -> bool:
            return isinstance(model, NumpyMLP) and model.meta.get("padded") is True

        def calibrate(self, model, dataloader, plan):  # type: ignore[no-untyped-def]
            return super().calibrate(model, [b[:, :16] for b in dataloader], plan)

    registry.register(PaddedMLP)
    try:
        model = NumpyMLP(mlp.layers, {"padded": True})
        padded = [np.pad(x[i : i + 50], ((0, 0), (0, i // 50))) for i in range(0, 200, 50)]
        q = quantization.fit(model, UNGUARDED, calib_dataloader=padded)
        assert q.plan.quantized_ops()
    finally:
        registry.unregister(PaddedMLP.name)


# --- plugins: a real distribution whose framework import fails, and content sniffing

MISSING_RUNTIME = """
import onnxruntime  # the runtime the plugin needs; absent in this environment
"""

SNIFFING = """
from pathlib import Path

import numpy as np

from tests.core.reference_backend import Dense, NumpyMLP, ReferenceBackend

MAGIC = b"MLPNPZ01"


class SniffingBackend(ReferenceBackend):
    name = "tmpsniff"
    package = "inc-tmp-sniff"
    priority = 5

    @classmethod
    def accepts(cls, model):
        return isinstance(model, (str, Path)) and str(model).endswith(".mlpz")

    @classmethod
    def accepts_content(cls, path):
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC

    def load_model(self, model, conf):
        with open(model, "rb") as f:
            f.read(len(MAGIC))
            arrays = np.load(f, allow_pickle=False)
            count = len(arrays.files) // 2
            return NumpyMLP(tuple(
                Dense(f"fc{i}", arrays[f"w{i}"], arrays[f"b{i}"], i < count - 1)
                for i in range(count)
            ))
"""


def install(root: Path, ep_name: str, dist: str, module: str, source: str, attr: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[inc.backends]\n{ep_name} = {module}:{attr}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    registry.reset()
    yield root
    monkeypatch.undo()
    importlib.invalidate_caches()
    for module in ("inc_tmp_ort", "inc_tmp_sniff"):
        sys.modules.pop(module, None)
    registry.reset()


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is not None,
    reason="needs an environment without onnxruntime (the core tox env): the case is a plugin "
    "whose runtime is missing",
)
def test_plugin_installed_without_its_runtime_says_only_that(site, blobs, sandbox):
    # `pip install inc-ort` without onnxruntime: the distribution inc-ort is there, its
    # backend's import fails; the error is that cause and its fix, not "install inc-ort"
    install(site, "onnxrt", "inc-ort", "inc_tmp_ort", MISSING_RUNTIME, "OrtBackend")
    path = sandbox / "work" / "m.onnx"
    path.write_bytes(b"\x08\x07not loaded: the backend is missing")
    before, files = path.read_bytes(), listing(sandbox)
    with pytest.raises(BackendNotAvailable) as exc:
        quantization.fit(str(path), STATIC, calib_dataloader=batches(blobs[0]))
    message = str(exc.value)
    for part in ("inc-ort is installed", "'onnxrt'", "onnxruntime is not installed"):
        assert part in message, message
    assert "pip install onnxruntime" in message
    assert "pip install inc-ort" not in message and "installed backends: none" not in message
    assert isinstance(exc.value.__cause__, ModuleNotFoundError)
    assert path.read_bytes() == before
    assert listing(sandbox) == files


def test_unknown_suffix_is_read_by_the_backend_that_knows_the_content(site, mlp, blobs, sandbox):
    install(site, "tmpsniff", "inc-tmp-sniff", "inc_tmp_sniff", SNIFFING, "SniffingBackend")
    path = sandbox / "work" / "model.bin"  # the content is the plugin's, the name is not
    with path.open("wb") as f:
        f.write(b"MLPNPZ01")
        arrays = {}
        for i, layer in enumerate(mlp.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = layer.weight, layer.bias
        np.savez(f, **arrays)
    before = path.read_bytes()
    q = quantization.fit(str(path), UNGUARDED, calib_dataloader=batches(blobs[0]))
    assert q.backend == "tmpsniff"
    assert q.plan.quantized_ops()
    assert path.read_bytes() == before
    # a file no backend recognises by name or content stays a ModelError naming it
    other = sandbox / "work" / "other.bin"
    other.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match=r"other\.bin"):
        quantization.fit(str(other), UNGUARDED, calib_dataloader=batches(blobs[0]))


def test_an_approach_without_kernels_for_the_models_ops_names_what_it_covers():
    from .tuning_backend import ToyBackend, calib_batches, toy_net

    registry.register(ToyBackend)
    try:
        with pytest.raises(ModelError) as info:
            quantization.fit(
                toy_net(),
                PostTrainingQuantConfig(approach="dynamic"),
                calib_dataloader=calib_batches(),
            )
    finally:
        registry.unregister(ToyBackend.name)
    message = str(info.value)
    assert "no op of the model can be quantized with approach 'dynamic'" in message
    assert "it quantizes these op types (dynamic): none" in message
    assert "quantizable op types found in the model: Add, Conv, MatMul" in message
    assert "approach='static' with calib_dataloader" in message
