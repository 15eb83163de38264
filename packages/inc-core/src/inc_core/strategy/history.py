"""The old place of ``inc_core.history`` and ``inc_core.trial.Trial`` (named in the API
reference); import from those modules."""

from __future__ import annotations

from ..history import FILENAME, FORMAT, Baseline, History, changes, fingerprint, history_path
from ..trial import Trial

__all__ = [
    "FILENAME",
    "FORMAT",
    "Baseline",
    "History",
    "Trial",
    "changes",
    "fingerprint",
    "history_path",
]
