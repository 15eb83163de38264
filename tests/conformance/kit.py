"""What a backend hands the conformance suite: one small real model and its data.

Each plugin adds ``tests/conformance/kits/<backend name>.py`` defining ``BACKEND`` (the entry
point name) and ``make_kit() -> Kit``. The suite runs every kit whose backend is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class Kit:
    #: the fp32 model exactly as a user passes it to ``quantization.fit`` (object or path)
    model: Any
    #: ``(input, label)`` batches for calibration
    calib_loader: Iterable[Any]
    #: labelled batches for evaluation; labels are class indices
    eval_loader: Iterable[Any]
    #: a digest of the user's model (weights, file bytes) to prove fit never modified it
    fingerprint: Callable[[Any], Any]
    #: top-1 accuracy of a native model (fp32 or quantized) on ``eval_loader``
    accuracy: Callable[[Any], float]
