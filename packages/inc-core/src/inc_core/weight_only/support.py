"""Whether a run with ``approach="weight_only"`` can start: the backend's support and the
calibration data its algorithms need, checked before any model work."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .options import CALIBRATED_ALGORITHMS, RULE_DEFAULTS

#: the plugins with weight-only kernels, named while none of them is installed
PLUGINS = (
    "ONNX Runtime (pip install inc-ort: backend 'onnxrt', MatMulNBits) and PyTorch "
    "(pip install inc-torch: backend 'pytorch')"
)


def rule_algorithms(conf: Any) -> set[str]:
    """Every algorithm the config's weight rules name (RTN when none does)."""
    names: set[str] = set()
    for rules in (conf.op_type_dict or {}, conf.op_name_dict or {}):
        for tensors in rules.values():
            names.update(tensors.get("weight", {}).get("algorithm", ()))
    return names or {RULE_DEFAULTS["algorithm"]}


def check_backend(backend: Any, conf: Any, has_calibration: bool) -> None:
    """``ConfigError`` when ``backend`` has no weight-only kernels (naming those that do) or
    when GPTQ/AWQ is asked for without calibration data. No-op for other approaches."""
    if getattr(conf, "approach", None) != "weight_only":
        return
    if not backend.supports_weight_only:
        from .. import backend as registry  # the registry loads plugins: only when needed

        ready = sorted(
            name for name, cls in registry.available().items() if cls.supports_weight_only
        )
        where = (
            f"installed backends that support it: {', '.join(ready)}"
            if ready
            else f"it is available for {PLUGINS}"
        )
        raise ConfigError(
            f"approach='weight_only' is not available for {backend.framework} models "
            f"(backend {backend.name!r}); {where}. For int8 quantization of this model use "
            "approach='static', 'dynamic' or 'auto'"
        )
    calibrated = sorted(rule_algorithms(conf) & set(CALIBRATED_ALGORITHMS))
    if calibrated and not has_calibration:
        raise ConfigError(
            f"algorithm {' and '.join(map(repr, calibrated))} reads calibration activations: "
            "pass calib_dataloader, or use algorithm 'RTN', which needs none"
        )
