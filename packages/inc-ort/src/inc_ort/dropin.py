"""Drop-in replacements for ``onnxruntime.quantization.quantize_static`` / ``quantize_dynamic``.

Same positional signature as onnxruntime's, so changing the import is enough; onnxruntime's
options are translated into an inc ``PostTrainingQuantConfig`` (or pass ``conf=`` to use inc's
own configuration, rules and recipes). The quantization itself is inc's: calibration through
inc's observers, scales from ``inc_core.scheme``, onnxruntime's quantizer writing the graph.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError
from inc_core.model import check_output

from . import graph, model_io
from ._runtime import onnx, ortq

log = logging.getLogger(__name__)

QuantFormat = ortq.QuantFormat
QuantType = ortq.QuantType
CalibrationMethod = ortq.CalibrationMethod

_ALGORITHMS = {
    CalibrationMethod.MinMax: "minmax",
    CalibrationMethod.Entropy: "kl",
    CalibrationMethod.Percentile: "percentile",
}
# onnxruntime extra_options that are inc recipes
_RECIPE_OPTIONS = {
    "AddQDQPairToWeight": "add_qdq_pair_to_weight",
    "DedicatedQDQPair": "dedicated_qdq_pair",
    "OpTypesToExcludeOutputQuantization": "optypes_to_exclude_output_quant",
    "SmoothQuant": "smooth_quant",
}
_HANDLED_OPTIONS = {
    *_RECIPE_OPTIONS,
    "ActivationSymmetric",
    "WeightSymmetric",
    "SmoothQuantAlpha",
    "SmoothQuantFolding",
    "MatMulConstBOnly",
}


def reader_items(reader: Any) -> Iterator[Any]:
    """The feeds of an onnxruntime ``CalibrationDataReader`` (anything with ``get_next``)."""
    while True:
        item = reader.get_next()
        if item is None:
            return
        yield item


def as_loader(data: Any) -> Iterable[Any] | None:
    """Calibration data as an iterable the core takes: readers are drained through get_next."""
    if data is None:
        return None
    if callable(getattr(data, "get_next", None)):
        return list(reader_items(data))
    return cast("Iterable[Any]", data)


def _dtype(qtype: Any, what: str, allowed: Sequence[str]) -> str:
    name = {QuantType.QInt8: "int8", QuantType.QUInt8: "uint8"}.get(qtype)
    if name is None or name not in allowed:
        raise ConfigError(
            f"{what}={qtype} is not supported by inc-ort; allowed: {', '.join(allowed)}"
        )
    return name


def _fp32() -> dict[str, Any]:
    return {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}


def _node_rules(
    model_input: str | Path | onnx.ModelProto,
    op_types_to_quantize: Sequence[str] | None,
    nodes_to_quantize: Sequence[str] | None,
    nodes_to_exclude: Sequence[str] | None,
    tensor_rules: Mapping[str, Any],
    listed_types: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """onnxruntime's node/type selection as inc's op_type_dict / op_name_dict."""
    present = _op_types(model_input)
    listed_types = [t for t in listed_types if t in present]
    type_rules: dict[str, Any] = (
        {t: dict(tensor_rules) for t in listed_types} if tensor_rules else {}
    )
    if op_types_to_quantize:
        for op_type in listed_types:
            if op_type not in op_types_to_quantize:
                type_rules[op_type] = _fp32()
    name_rules: dict[str, Any] = {}
    if nodes_to_quantize:
        keep = "|".join(re.escape(n) for n in nodes_to_quantize)
        name_rules[f"(?!(?:{keep})$).*"] = _fp32()
    for name in nodes_to_exclude or ():
        name_rules[re.escape(name)] = _fp32()
    return type_rules, name_rules


def _op_types(model_input: str | Path | onnx.ModelProto) -> set[str]:
    if isinstance(model_input, onnx.ModelProto):
        return {n.op_type for n in model_input.graph.node}
    try:
        proto = onnx.load_model(os.fspath(model_input), load_external_data=False)
    except Exception:
        return set(graph.STATIC_OPS)  # fit() reports the unreadable file properly
    return {n.op_type for n in proto.graph.node}


def input_files(model_input: Any) -> list[Path]:
    """The user's files behind ``model_input``: the .onnx file and its external-data files."""
    if isinstance(model_input, onnx.ModelProto) or not isinstance(model_input, (str, os.PathLike)):
        return []
    path = Path(os.fspath(model_input))
    files = [path]
    try:  # only the graph is read here (no tensor data); an unreadable file is fit()'s to report
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return files
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                files.append(path.parent / entry.value)
    return files


def check_paths(model_input: Any, model_output: str | os.PathLike[str]) -> None:
    """Refuse an output that would write over the input model or its external data.

    Called before anything else is read: the output path, and the ``<output>.data`` file an
    external-data save writes beside it, must name none of the input's files, however spelled.
    """
    sources = input_files(model_input)
    out = Path(os.fspath(model_output))
    check_output(out, sources, "model_output")
    check_output(out.with_name(f"{out.name}.data"), sources, "model_output's external data")


def _save(model: onnx.ModelProto, model_output: str | os.PathLike[str], external: bool) -> None:
    out = Path(os.fspath(model_output))
    out.parent.mkdir(parents=True, exist_ok=True)
    model_io.save(model, out, external=True if external else None)


def _check_options(extra: Mapping[str, Any]) -> None:
    ignored = sorted(k for k in extra if k not in _HANDLED_OPTIONS)
    if ignored:
        log.warning("inc-ort ignores these onnxruntime extra_options: %s", ", ".join(ignored))


def quantize_static(
    model_input: str | Path | onnx.ModelProto,
    model_output: str | Path,
    calibration_data_reader: Any = None,
    quant_format: Any = QuantFormat.QDQ,
    op_types_to_quantize: Sequence[str] | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    activation_type: Any = QuantType.QInt8,
    weight_type: Any = QuantType.QInt8,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    use_external_data_format: bool = False,
    calibrate_method: Any = CalibrationMethod.MinMax,
    calibration_providers: Sequence[str] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    calibration_cache_path: str | Path | None = None,
    *,
    conf: PostTrainingQuantConfig | None = None,
) -> Any:
    """onnxruntime's ``quantize_static`` done by inc; returns the ``QuantizedModel`` too.

    ``calibration_data_reader`` is an onnxruntime ``CalibrationDataReader`` or any iterable the
    spec allows. With ``conf``, inc's config decides everything but the files. An output path
    naming the input model (or its external data) is a ``ConfigError``, raised before anything
    is read.
    """
    check_paths(model_input, model_output)
    data = as_loader(calibration_data_reader)
    if data is None:
        raise ConfigError(
            "quantize_static needs calibration_data_reader (inc-ort keeps no calibration cache)"
        )
    if conf is None:
        extra = dict(extra_options or {})
        _check_options(extra)
        if calibrate_method not in _ALGORITHMS:
            raise ConfigError(
                f"calibrate_method={calibrate_method} is not supported; allowed: "
                + ", ".join(str(m) for m in _ALGORITHMS)
            )
        tensor_rules = {
            "activation": {
                "dtype": [_dtype(activation_type, "activation_type", ("uint8", "int8"))],
                "scheme": ["sym" if extra.get("ActivationSymmetric") else "asym"],
                "algorithm": [_ALGORITHMS[calibrate_method]],
            },
        }
        weight_rules = {
            "dtype": [_dtype(weight_type, "weight_type", ("int8",))],
            "granularity": ["per_channel" if per_channel else "per_tensor"],
        }
        type_rules, name_rules = _node_rules(
            model_input,
            op_types_to_quantize,
            nodes_to_quantize,
            nodes_to_exclude,
            tensor_rules,
            graph.STATIC_OPS,
        )
        for op_type in set(graph.WEIGHTED_OPS) & _op_types(model_input):
            if type_rules.get(op_type, {}).get("activation", {}).get("dtype") != ["fp32"]:
                type_rules[op_type] = {**type_rules.get(op_type, {}), "weight": weight_rules}
        recipes = {r: extra[o] for o, r in _RECIPE_OPTIONS.items() if o in extra}
        if extra.get("SmoothQuant"):
            recipes["smooth_quant_args"] = {
                "alpha": extra.get("SmoothQuantAlpha", 0.5),
                "folding": extra.get("SmoothQuantFolding", True),
            }
        conf = PostTrainingQuantConfig(
            approach="static",
            quant_format="QOperator" if quant_format == QuantFormat.QOperator else "QDQ",
            reduce_range=reduce_range,
            op_type_dict=type_rules,
            op_name_dict=name_rules,
            recipes=recipes,
        )
    q = quantization.fit(model_input, conf, calib_dataloader=data)
    _save(q.model, model_output, use_external_data_format)
    return q


def quantize_dynamic(
    model_input: str | Path | onnx.ModelProto,
    model_output: str | Path,
    op_types_to_quantize: Sequence[str] | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    weight_type: Any = QuantType.QInt8,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    use_external_data_format: bool = False,
    extra_options: Mapping[str, Any] | None = None,
    *,
    conf: PostTrainingQuantConfig | None = None,
) -> Any:
    """onnxruntime's ``quantize_dynamic`` done by inc (MatMulInteger / DynamicQuantizeLinear)."""
    check_paths(model_input, model_output)
    if conf is None:
        _check_options(dict(extra_options or {}))
        weight_rules = {
            "weight": {
                "dtype": [_dtype(weight_type, "weight_type", ("int8",))],
                "granularity": ["per_channel" if per_channel else "per_tensor"],
            }
        }
        type_rules, name_rules = _node_rules(
            model_input,
            op_types_to_quantize,
            nodes_to_quantize,
            nodes_to_exclude,
            weight_rules,
            graph.DYNAMIC_OPS,
        )
        conf = PostTrainingQuantConfig(
            approach="dynamic",
            reduce_range=reduce_range,
            op_type_dict=type_rules,
            op_name_dict=name_rules,
        )
    q = quantization.fit(model_input, conf)
    _save(q.model, model_output, use_external_data_format)
    return q
