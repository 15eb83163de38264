"""``OrtBackend``: the inc plugin contract for ONNX Runtime models (paths or ``onnx.ModelProto``).

This module is the entry point the registry loads on every ``fit``, whatever the model's
framework, so it imports neither onnx nor onnxruntime: the helpers below are ``Lazy`` stand-ins
imported at their first use, and ``accepts`` judges a model by a path's suffix or its class's
module before it touches onnx.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from inc_core.backend import Backend
from inc_core.calibration import OBSERVERS
from inc_core.errors import ConfigError, DataError
from inc_core.space import (
    OpCapability,
    OpInfo,
    OpQuant,
    QuantPlan,
    TensorOptions,
    TensorRanges,
)
from inc_core.weight_only.plan import is_weight_only

from ._lazy import Lazy
from .aliases import GENERIC_ALIASES

if TYPE_CHECKING:
    import onnx

    from . import cleanup, graph, kernels, model_io, planner, providers, recipes
    from . import weight_only as woq
    from ._runtime import check_supported, ort
    from .calibrate import collect_ranges, serializable, tensors_to_observe
    from .calibrate import session as exposing_session
    from .canonical import canonicalize
    from .feeds import to_feed
    from .quantizer import IncQDQQuantizer, IncQOperatorQuantizer, check, run
else:
    cleanup = Lazy("inc_ort.cleanup")
    graph = Lazy("inc_ort.graph")
    kernels = Lazy("inc_ort.kernels")
    model_io = Lazy("inc_ort.model_io")
    planner = Lazy("inc_ort.planner")
    providers = Lazy("inc_ort.providers")
    recipes = Lazy("inc_ort.recipes")
    woq = Lazy("inc_ort.weight_only")
    check_supported = Lazy("inc_ort._runtime", "check_supported")
    onnx = Lazy("inc_ort._runtime", "onnx")
    ort = Lazy("inc_ort._runtime", "ort")
    collect_ranges = Lazy("inc_ort.calibrate", "collect_ranges")
    serializable = Lazy("inc_ort.calibrate", "serializable")
    tensors_to_observe = Lazy("inc_ort.calibrate", "tensors_to_observe")
    exposing_session = Lazy("inc_ort.calibrate", "session")
    canonicalize = Lazy("inc_ort.canonical", "canonicalize")
    to_feed = Lazy("inc_ort.feeds", "to_feed")
    IncQDQQuantizer = Lazy("inc_ort.quantizer", "IncQDQQuantizer")
    IncQOperatorQuantizer = Lazy("inc_ort.quantizer", "IncQOperatorQuantizer")
    run = Lazy("inc_ort.quantizer", "run")
    check = Lazy("inc_ort.quantizer", "check")

# Without onnx or onnxruntime the plugin still fails to load, as it did when it imported them
# here: _runtime raises the error naming what to install (find_spec imports nothing).
if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
    importlib.import_module("inc_ort._runtime")

_ALGORITHMS = tuple(a for a in ("minmax", "kl", "percentile", "mse") if a in OBSERVERS)
_ACTIVATION = TensorOptions(
    dtype=("uint8", "int8"),
    scheme=("asym", "sym"),
    granularity=("per_tensor",),
    algorithm=_ALGORITHMS,
)
# TensorRT runs symmetric int8 only.
_ACTIVATION_TRT = TensorOptions(
    dtype=("int8",), scheme=("sym",), granularity=("per_tensor",), algorithm=_ALGORITHMS
)
_CONV_WEIGHT = TensorOptions(
    dtype=("int8",), scheme=("sym",), granularity=("per_channel", "per_tensor")
)
_MATMUL_WEIGHT = TensorOptions(
    dtype=("int8",), scheme=("sym",), granularity=("per_channel", "per_tensor")
)
_DYNAMIC_ACTIVATION = TensorOptions(dtype=("uint8",), scheme=("asym",), algorithm=("minmax",))

log = logging.getLogger(__name__)

#: metadata key recording which graph optimization level load_model applied
_OPT_KEY = "inc.graph_optimization_level"
#: a model serializing to this many bytes or more is serialized for each session it gets, and
#: its calibration session is not kept for the diagnosis: either would hold one more copy of
#: its weights for the whole fit
_KEEP_BYTES = 2**28
#: serialized models kept (the fp32 model and the int8 candidates the guards run in turn)
_KEEP_MODELS = 4


class OrtBackend(Backend):
    """ONNX Runtime: QDQ (default) or QOperator static int8, QIntegerOps dynamic int8."""

    name = "onnxrt"
    package = "inc-ort"
    framework = "onnxrt"
    convention = "onnxrt"
    config_backends = (
        "default",
        "onnxrt_trt_ep",
        "onnxrt_cuda_ep",
        "onnxrt_dnnl_ep",
        "onnxrt_dml_ep",
    )
    op_type_aliases: ClassVar[dict[str, tuple[str, ...]]] = GENERIC_ALIASES
    priority = 50
    #: MatMul -> com.microsoft::MatMulNBits (inc_ort.weight_only)
    supports_weight_only = True

    def __init__(self) -> None:
        self.config_backend = "default"
        #: the run's approach (check_config): weight_only lists and builds MatMulNBits
        self.approach = "auto"
        self._sessions: dict[int, _Cached] = {}
        #: model id -> (model, _signature, serialized bytes): one serialization of a model
        #: serves its calibration, predict/latency and diagnosis sessions
        self._bytes: dict[int, tuple[onnx.ModelProto, tuple[int, ...], bytes]] = {}
        #: the calibration session of the fp32 model, kept until the per-op diagnosis runs its
        #: held-out samples through it (it exposes the ops' outputs too)
        self._exposing: _Exposing | None = None

    def __getstate__(self) -> dict[str, Any]:
        # InferenceSessions do not pickle; a process pool gets the backend without them.
        return {"config_backend": self.config_backend, "approach": self.approach}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config_backend = state["config_backend"]
        self.approach = state.get("approach", "auto")
        self._sessions = {}
        self._bytes = {}
        self._exposing = None

    # ------------------------------------------------------------------ model in
    @classmethod
    def accepts(cls, model: Any) -> bool:
        if isinstance(model, (str, Path)):
            return str(model).lower().endswith(".onnx")
        module = type(model).__module__
        if not module.startswith("onnx"):
            return False
        return isinstance(model, onnx.ModelProto)

    @classmethod
    def accepts_content(cls, path: Path) -> bool:
        return model_io.is_onnx_file(path)

    def check_config(self, conf: Any) -> None:
        check_supported()
        providers.check_provider(conf.backend)
        self.config_backend = conf.backend
        self.approach = conf.approach
        if conf.backend == "onnxrt_trt_ep" and conf.quant_format == "QOperator":
            raise ConfigError(
                "backend='onnxrt_trt_ep' runs QDQ models only; use quant_format='QDQ' or 'default'"
            )

    def load_model(self, model: Any, conf: Any) -> onnx.ModelProto:
        proto = model_io.load(model)
        model_io.check(proto, str(model) if isinstance(model, (str, Path)) else "the ModelProto")
        if getattr(conf, "approach", None) == "weight_only":
            # MatMulNBits replaces MatMuls as the user's graph has them (no fusion into Gemm)
            graph.ensure_names(proto)
            if any(n.op_type == "Gemm" for n in proto.graph.node):
                proto = graph.gemm_to_matmul(proto)
            return proto
        proto = graph.with_quantizable_opset(proto)
        recipe = dict(getattr(conf, "recipes", {}) or {})
        return prepare(proto, recipe)

    def ops(self, model: onnx.ModelProto) -> list[OpInfo]:
        if self.approach == "weight_only":
            return woq.ops(model)
        listed = graph.listed_nodes(model)
        if not listed:  # why, where the ops are only inside Loop/If/Scan bodies
            graph.check_ops_outside_bodies(model)
        return [OpInfo(node.name, node.op_type) for node in listed]

    def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
        if approach == "weight_only":
            return woq.capability()
        if approach == "dynamic":
            return {t: OpCapability(_DYNAMIC_ACTIVATION, _MATMUL_WEIGHT) for t in graph.DYNAMIC_OPS}
        activation = _ACTIVATION_TRT if self.config_backend == "onnxrt_trt_ep" else _ACTIVATION
        caps = {t: OpCapability(activation) for t in graph.ELEMENTWISE_OPS}
        caps.update({t: OpCapability(activation, _CONV_WEIGHT) for t in ("Conv", "ConvTranspose")})
        caps.update({t: OpCapability(activation, _MATMUL_WEIGHT) for t in ("MatMul", "Gemm")})
        return caps

    # ------------------------------------------------------------------ calibrate / quantize
    def calibrate(
        self, model: onnx.ModelProto, dataloader: Iterable[Any], plan: QuantPlan
    ) -> TensorRanges:
        data = list(dataloader)
        if not data:
            raise DataError("calib_dataloader yielded no samples; give it at least one batch")
        if is_weight_only(plan):
            return woq.calibrate(model, data, plan)
        extra: TensorRanges = {}
        fp32 = model
        if plan.recipes.get("smooth_quant"):
            extra = recipes.smooth_quant_scales(model, data, plan)
            model = recipes.apply_smooth_quant(model, extra, plan)
        algorithms = self._algorithms(model, plan)
        means = recipes.bias_correction_inputs(model, plan)
        # the session also exposes the outputs the per-op diagnosis reads of the fp32 model
        # (with these ops: the guards' default plan), so the diagnosis reuses it; not that of
        # a smoothed copy, which the diagnosis never runs
        _, op_tensors = kernels.exposed_outputs(model, plan.quantized_ops())

        def make_session(names: list[str]) -> Any:
            return self._calibration_session(model, [*names, *op_tensors.values()])

        keep = make_session if model is fp32 else None
        ranges = collect_ranges(model, data, algorithms, means, keep)
        ranges.update(extra)
        return ranges

    def _algorithms(self, model: onnx.ModelProto, plan: QuantPlan) -> dict[str, Any]:
        """tensor -> (algorithm, options): kl/mse search for the dtype and scheme it will get."""
        tensors = tensors_to_observe(model, graph.STATIC_OPS)
        static = {n: op for n, op in plan.ops.items() if op.approach == "static"}
        schemes = planner.activation_schemes(model, static)
        out: dict[str, Any] = {}
        for tensor in tensors:
            ts = schemes.get(tensor)
            if ts is None:
                out[tensor] = "minmax"
            else:
                options = {"dtype": ts.dtype, "scheme": ts.scheme, "convention": self.convention}
                out[tensor] = (ts.algorithm, options)
        return out

    def quantize(
        self, model: onnx.ModelProto, plan: QuantPlan, ranges: TensorRanges
    ) -> onnx.ModelProto:
        if is_weight_only(plan):
            return finish(woq.quantize_plan(model, plan, ranges)[0], model)
        work = onnx.ModelProto()
        work.CopyFrom(model)
        if plan.recipes.get("smooth_quant"):
            work = recipes.apply_smooth_quant(work, ranges, plan)
        nodes = planner.split_nodes(work, plan)
        if not nodes.static and not nodes.dynamic:
            out = work
        else:
            qoperator = plan.quant_format == "QOperator"
            if nodes.static:
                # a model over 2 GB: the planner and recipes read its weights in memory, then
                # onnxruntime's quantizer reads them from inc's store one at a time
                big = model_io.detached(work)
                if big:
                    _load_weights(work, set(nodes.static))
                recipes.correct_weights(work, plan, ranges)
                spec = planner.static_spec(work, plan, ranges, nodes, qoperator)
                spec.extra_options.update(recipes.qdq_options(plan, self.config_backend))
                if big:
                    work = model_io.unload(work)
                quantizer = (
                    IncQOperatorQuantizer(work, spec, static=True)
                    if qoperator
                    else IncQDQQuantizer(work, spec)
                )
                work = run(quantizer)
                if not qoperator:
                    cleanup.strip_output_qdq(work)
                    # the listed depthwise convs (graph.is_depthwise) pay only with the
                    # hard-sigmoid gates between them in int8
                    cleanup.int8_gates(work)
                    # after the gates: a pool behind an int8 gate is one the check sees as int8
                    cleanup.float_pools(work, providers.providers_for(self.config_backend))
                cleanup.keep_float(work, {n for n, op in plan.ops.items() if not op.quantized})
            if nodes.dynamic:
                big = model_io.detached(work)
                if big:
                    _load_weights(work, set(nodes.dynamic))
                if any(plan.op_types[n] == "Gemm" for n in nodes.dynamic):
                    # onnxruntime's own Gemm rewrite renames the nodes; ours keeps the names
                    work = graph.gemm_to_matmul(work)
                spec = planner.dynamic_spec(work, plan, nodes)
                if big:
                    work = model_io.unload(work)
                quantizer = IncQOperatorQuantizer(work, spec, static=False)
                # onnxruntime's dynamic quantizer works on a copy it reloaded: let go of ours
                # (for a >2 GB model, the weights it holds)
                del work
                work = run(quantizer)
            out = work
        out = finish(out, model)
        check(out, self._serialized(out))
        return out

    def effective_plan(self, model: onnx.ModelProto, plan: QuantPlan) -> QuantPlan:
        """``plan`` with the ops that first/last/pre_post recipes keep in fp32 shown as fp32."""
        if is_weight_only(plan):
            return plan  # weight_only.quantize_plan builds exactly the plan's ops
        nodes = planner.split_nodes(model, plan)
        floats = {
            name: OpQuant.float("fp32")
            for name in nodes.excluded
            if name in plan.ops and plan.ops[name].quantized
        }
        return plan.with_ops(floats) if floats else plan

    # ------------------------------------------------------------------ run
    def session(self, model: onnx.ModelProto) -> Any:
        """An InferenceSession on the configured execution provider (cached per model object)."""
        return self._cached(model).session

    def _serialized(self, model: onnx.ModelProto) -> bytes | None:
        """``model``'s bytes, serialized once per model object; None for a model a session
        reads through ``model_io`` (detached, or too big for one proto)."""
        if not serializable(model):
            return None
        key, signature = id(model), _signature(model)
        hit = self._bytes.get(key)
        if hit is not None and hit[0] is model and hit[1] == signature:
            self._bytes[key] = self._bytes.pop(key)  # most recently used last
            return hit[2]
        data: bytes = model.SerializeToString()
        if len(data) < _KEEP_BYTES:
            if len(self._bytes) >= _KEEP_MODELS:
                self._bytes.pop(next(iter(self._bytes)))
            self._bytes[key] = (model, signature, data)
        return data

    def _calibration_session(self, model: onnx.ModelProto, names: list[str]) -> Any:
        """The exposing session calibration runs; kept (one at a time) for the diagnosis."""
        data = self._serialized(model)
        sess = exposing_session(model, names, data=data)
        self._exposing = None
        if data is not None and len(data) < _KEEP_BYTES:
            self._exposing = _Exposing(model, _signature(model), frozenset(names), sess)
        return sess

    def _take_exposing(self, model: onnx.ModelProto, names: list[str]) -> Any | None:
        """The kept calibration session when it is ``model``'s and exposes ``names``; handed
        out once (the guards keep the fp32 outputs they got), so it is held no longer."""
        kept = self._exposing
        if kept is None or kept.model is not model or kept.signature != _signature(model):
            return None
        if not kept.names.issuperset(names):
            return None
        self._exposing = None
        return kept.session

    def _cached(self, model: onnx.ModelProto) -> _Cached:
        key = id(model)
        cached = self._sessions.get(key)
        if cached is not None and cached.model is model and cached.signature == _signature(model):
            self._sessions[key] = self._sessions.pop(key)  # most recently used last
            return cached
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle sessions must not spin: the guards time an fp32 and an int8 session in turn, and
        # spinning worker threads of one steal the cores of the other.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if model_io.detached(model):
            # a model over 2 GB: one fp32 and one int8 session at a time (the guards time them
            # in turn; an int8 one holds its int8 weights, 1/4 of the fp32 ones)
            kind = kernels.is_quantized(model)
            for other in [
                k
                for k, c in self._sessions.items()
                if model_io.detached(c.model) and kernels.is_quantized(c.model) == kind
            ]:
                self._sessions.pop(other)
        # An int8 model's session keeps the graph onnxruntime optimized: runs_as reads it
        # instead of building a second session (the guards time the model they return); not
        # for a detached (>2 GB) one, whose optimized graph could not be written in one file.
        keep = kernels.is_quantized(model) and not model_io.detached(model)
        with tempfile.TemporaryDirectory(prefix="inc-ort-session-") as tmp:
            if keep:
                options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            sess = model_io.inference_session(
                model,
                options,
                providers.providers_for(self.config_backend),
                self._serialized(model),
            )
            optimized = Path(options.optimized_model_filepath).read_bytes() if keep else None
        if len(self._sessions) >= 4:
            self._sessions.pop(next(iter(self._sessions)))
        entry = _Cached(model, sess, optimized, _signature(model))
        self._sessions[key] = entry
        return entry

    def _run(self, model: onnx.ModelProto, feed: dict[str, Any]) -> list[Any]:
        """One run; the session counts as warm for inputs of these shapes from then on."""
        cached = self._cached(model)
        outputs = cached.session.run(None, feed)
        cached.warm.add(_shapes(feed))
        return list(outputs)

    def predict(self, model: onnx.ModelProto, inputs: Any) -> Any:
        outputs = self._run(model, to_feed(model, inputs, "evaluation input"))
        return outputs[0] if len(outputs) == 1 else outputs

    def user_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return model

    def latency(self, model: onnx.ModelProto, inputs: Sequence[Any]) -> float:
        cached = self._cached(model)
        feeds = [to_feed(model, batch, "latency input") for batch in inputs]
        # the first run of a session at an input shape picks kernels and grows its memory
        # arena; a prediction on the same shapes (the guards' fidelity check) did that already
        for feed in feeds:
            if _shapes(feed) not in cached.warm:
                self._run(model, feed)
        times = []
        for feed in feeds:
            start = time.perf_counter()
            cached.session.run(None, feed)
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    def model_size(self, model: onnx.ModelProto) -> int:
        return model_io.model_size(model)

    def fingerprint(self, model: onnx.ModelProto) -> str | None:
        """The default digest, plus the content of a detached model's data files (the proto
        only names them), streamed."""
        digest = super().fingerprint(model)
        if not model_io.detached(model):
            return digest
        return model_io.data_digest(model, digest or "")

    def op_outputs(
        self, model: onnx.ModelProto, inputs: Any, ops: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if model_io.detached(model):
            # a second session of a >2 GB model beside the cached one would hold its weights
            # twice more; the per-op diagnosis is left out for such models (report says none)
            log.info("per-op outputs are not computed for models over 2 GB")
            return {}
        exposed, tensors = kernels.exposed_outputs(model, ops)
        if not tensors:
            return {}
        names = list(dict.fromkeys(tensors.values()))
        feed = to_feed(model, inputs, "op outputs")
        sess = self._take_exposing(model, names) if exposed is model else None
        if sess is None:
            data = self._serialized(model) if exposed is model else None
            sess = exposing_session(exposed, names, data=data)
        values = sess.run(names, feed)
        by_tensor = dict(zip(names, values, strict=True))
        return {
            op: by_tensor[tensor]
            for op, tensor in tensors.items()
            if np.issubdtype(np.asarray(by_tensor[tensor]).dtype, np.floating)
        }

    def runs_as(self, model: onnx.ModelProto) -> dict[str, str]:
        if model_io.detached(model):
            # onnxruntime cannot write the optimized graph of a >2 GB model in one file
            return {}
        cached = self._sessions.get(id(model))
        if (
            cached is not None
            and cached.model is model
            and cached.signature == _signature(model)
            and cached.optimized is not None
        ):
            optimized = onnx.load_model_from_string(cached.optimized)
        else:
            optimized = kernels.optimized_graph(model, providers.providers_for(self.config_backend))
        if optimized is None:
            return {}
        nodes = [
            n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        ]
        ops = [kernels.origin(n.name) for n in nodes]
        outputs = {n.output[0]: op for n, op in zip(nodes, ops, strict=True) if n.output}
        return kernels.runs_as(optimized, dict.fromkeys(ops), outputs)

    def variants(self, model: onnx.ModelProto, plan: QuantPlan) -> list[tuple[str, QuantPlan]]:
        """The QOperator build of a QDQ plan, where the user left the format open."""
        if plan.quant_format != "default" or self.config_backend == "onnxrt_trt_ep":
            return []  # a format the user chose, or TensorRT (QDQ only)
        if not any(op.quantized and op.approach == "static" for op in plan.ops.values()):
            return []  # dynamic ops are built one way only
        return [("QOperator", replace(plan, quant_format="QOperator"))]

    def kernel_groups(self, model: onnx.ModelProto) -> dict[str, list[str]]:
        return kernels.kernel_groups(model)

    # ------------------------------------------------------------------ files
    def save(self, model: onnx.ModelProto, directory: Path) -> list[str]:
        return model_io.save(model, directory / model_io.MODEL_FILE)

    def load(self, directory: Path, **kwargs: Any) -> onnx.ModelProto:
        return model_io.load(directory / model_io.MODEL_FILE)

    def versions(self) -> dict[str, str]:
        return {"onnx": onnx.__version__, "onnxruntime": ort.__version__}


@dataclass
class _Cached:
    """A model's session, the input shapes it has run at, and (int8 models) the serialized
    graph onnxruntime optimized for it."""

    model: onnx.ModelProto
    session: Any
    optimized: bytes | None
    signature: tuple[int, ...]
    warm: set[tuple[tuple[str, tuple[int, ...]], ...]] = field(default_factory=set)


@dataclass
class _Exposing:
    """A session of ``model`` with the tensors ``names`` exposed as outputs (no rewrites)."""

    model: onnx.ModelProto
    signature: tuple[int, ...]
    names: frozenset[str]
    session: Any


def _signature(model: onnx.ModelProto) -> tuple[int, ...]:
    """What a cached session or serialization of a model object checks before it is reused:
    the sizes of its graph's lists, which a node, input, output or initializer added or
    removed changes (an edit of a tensor's values in place goes unseen). Cheap where comparing
    the bytes would cost a serialization: inc's own models are never edited once a session ran
    them, and the user's model never reaches a session (``load_model`` copies it)."""
    g = model.graph
    return (
        len(g.node),
        len(g.initializer),
        len(g.input),
        len(g.output),
        len(g.value_info),
        len(model.opset_import),
    )


def _load_weights(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Prepare a detached (>2 GB) model for quantization, in place: shape inference on the
    light proto, recorded the way onnxruntime's quantizer records its own (so it does not copy
    and reload the model to infer shapes), then the data of the quantized nodes' constant
    inputs only, for the planner and recipes (``model_io.unload`` puts them back in the
    store before onnxruntime's quantizer, which reads them from there)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del inferred
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    add_infer_metadata(model)
    wanted = {i for n in model.graph.node if n.name in nodes for i in n.input}
    model_io.materialize(model, wanted)


def _shapes(feed: dict[str, Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((name, tuple(np.shape(value))) for name, value in feed.items()))


def prepare(proto: onnx.ModelProto, recipe: dict[str, Any]) -> onnx.ModelProto:
    """The graph inc quantizes: named nodes, optimized by onnxruntime, recipes' rewrites applied."""
    graph.ensure_names(proto)
    level = recipe.get("graph_optimization_level", "ENABLE_BASIC")
    # DISABLE_ALL is the user's way of saying "quantize my graph as it is"
    canonical, steps = (proto, []) if level == "DISABLE_ALL" else canonicalize(proto)
    for step in steps:
        if step["rewrites"]:
            log.info("canonicalised %s: %d rewrites", step["step"], step["rewrites"])
        elif step["skipped"] and not step["skipped"].startswith("nothing"):
            log.info("canonicalisation step %s skipped: %s", step["step"], step["skipped"])
    optimized = graph.optimize(canonical, level)
    graph.restore_names(optimized, proto)
    graph.ensure_names(optimized)
    if recipe.get("gemm_to_matmul"):
        optimized = graph.gemm_to_matmul(optimized)
    entry = optimized.metadata_props.add()
    entry.key, entry.value = _OPT_KEY, level
    return optimized


def finish(out: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """Drop inc's bookkeeping and keep the input's opset for the default domain."""
    # onnx.infer: set by _load_weights for onnxruntime's quantizer, not the user's
    source_keys = {p.key for p in source.metadata_props}
    keep = [
        p
        for p in out.metadata_props
        if not p.key.startswith("inc.") and (p.key != "onnx.infer" or p.key in source_keys)
    ]
    del out.metadata_props[:]
    out.metadata_props.extend(keep)
    want = {o.domain: o.version for o in source.opset_import}
    for opset in out.opset_import:
        if (
            opset.domain in ("", "ai.onnx")
            and opset.domain in want
            and opset.version < want[opset.domain]
        ):
            opset.version = want[opset.domain]
    return out
