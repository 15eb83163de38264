"""The old name of ``inc_torch.model_io`` (documented in the API reference); use that module."""

from __future__ import annotations

from .model_io import META, SCRIPT, WEIGHTS, load, save

__all__ = ["META", "SCRIPT", "WEIGHTS", "load", "save"]
