"""A backend from another distribution (``inc-backend-demo``), found through its entry point.

It brings what inc's own tables do not know: its framework ``demo``, a config backend
``demo_accel`` and a device ``fpga`` (``PostTrainingQuantConfig(backend="demo_accel",
device="fpga")``), and its model type and file ending for install hints. The core learns all
of them from the class attributes below. The model is a chain of numpy dense layers whose int8
behaviour is simulated with ``inc_core.scheme``; the int8 model records the config backend and
device it was built for, so a test can tell that ``check_config`` saw them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inc_core import scheme
from inc_core.backend import Backend
from inc_core.calibration import create_observer
from inc_core.space import OpCapability, OpInfo, QuantPlan, TensorOptions, TensorRange, TensorRanges


@dataclass(frozen=True)
class DemoNet:
    """Dense layers ``relu(x @ w)``; ``plan``/``ranges`` set once quantized."""

    weights: tuple[np.ndarray, ...]
    plan: QuantPlan | None = None
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    ran_on: tuple[str, str] = ("", "")

    def names(self) -> list[str]:
        return [f"dense{i}" for i in range(len(self.weights))]

    def __call__(self, x: Any) -> np.ndarray:
        out = np.asarray(x, dtype=np.float64)
        for name, weight in zip(self.names(), self.weights, strict=True):
            op = self.plan.ops[name] if self.plan is not None else None
            if op is not None and op.quantized:
                assert op.activation is not None and op.weight is not None
                lo, hi = self.ranges[name]
                act = scheme.compute_qparams(lo, hi, dtype=op.activation.dtype, scheme="asym")
                out = scheme.fake_quantize(np.clip(out, lo, hi), act)
                wq = scheme.weight_qparams(weight, dtype=op.weight.dtype, scheme="sym")
                weight = scheme.fake_quantize(weight, wq)
            out = np.maximum(out @ weight, 0.0)
        return out


class DemoBackend(Backend):
    name = "demo"
    package = "inc-backend-demo"
    framework = "demo"
    convention = "onnxrt"
    config_backends = ("default", "demo_accel")
    devices = {"demo_accel": ("cpu", "fpga")}
    model_modules = ("inc_backend_demo",)
    model_suffixes = (".demo.json",)
    priority = 60

    def __init__(self) -> None:
        self.ran_on = ("default", "cpu")

    @classmethod
    def accepts(cls, model: Any) -> bool:
        return isinstance(model, DemoNet) or str(model).lower().endswith(cls.model_suffixes)

    def load_model(self, model: Any, conf: Any) -> DemoNet:
        if isinstance(model, DemoNet):
            return model
        spec = json.loads(Path(model).read_text())
        return DemoNet(tuple(np.asarray(w, dtype=np.float64) for w in spec["weights"]))

    def check_config(self, conf: Any) -> None:
        self.ran_on = (conf.backend, conf.device)

    def ops(self, model: DemoNet) -> list[OpInfo]:
        return [OpInfo(name, "Dense") for name in model.names()]

    def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
        if approach != "static":
            return {}
        act = TensorOptions(("uint8",), ("asym",), ("per_tensor",), ("minmax",))
        return {"Dense": OpCapability(act, TensorOptions(("int8",), ("sym",), ("per_tensor",)))}

    def calibrate(self, model: DemoNet, dataloader: Iterable[Any], plan: QuantPlan) -> TensorRanges:
        observers = {name: create_observer("minmax") for name in model.names()}
        for batch in dataloader:
            out = np.asarray(batch, dtype=np.float64)
            for name, weight in zip(model.names(), model.weights, strict=True):
                observers[name].update(out)
                out = np.maximum(out @ weight, 0.0)
        return {name: TensorRange.of(*obs.range()) for name, obs in observers.items()}

    def quantize(self, model: DemoNet, plan: QuantPlan, ranges: TensorRanges) -> DemoNet:
        used = {name: (float(r.min), float(r.max)) for name, r in ranges.items()}
        return replace(model, plan=plan, ranges=used, ran_on=self.ran_on)

    def predict(self, model: DemoNet, inputs: Any) -> np.ndarray:
        return model(inputs)

    def save(self, model: DemoNet, directory: Path) -> list[str]:
        spec = {
            "weights": [w.tolist() for w in model.weights],
            "plan": model.plan.to_dict() if model.plan is not None else None,
            "ranges": model.ranges,
            "ran_on": list(model.ran_on),
        }
        (directory / "model.demo.json").write_text(json.dumps(spec))
        return ["model.demo.json"]

    def load(self, directory: Path, **kwargs: Any) -> DemoNet:
        spec = json.loads((directory / "model.demo.json").read_text())
        plan = QuantPlan.from_dict(spec["plan"]) if spec["plan"] is not None else None
        return DemoNet(
            tuple(np.asarray(w, dtype=np.float64) for w in spec["weights"]),
            plan,
            {name: (lo, hi) for name, (lo, hi) in spec["ranges"].items()},
            (spec["ran_on"][0], spec["ran_on"][1]),
        )
