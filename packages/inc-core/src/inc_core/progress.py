"""A progress bar for calibration and tuning: tqdm when installed, else plain lines.

Quiet when ``enabled`` is False, or when it is None (the default) and stderr is not a terminal.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    def __init__(
        self, total: int, desc: str, enabled: bool | None = None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.total = total
        self.count = 0
        self.desc = desc
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, unit="trial", file=self.stream, leave=True)

    def stage(self, text: str) -> None:
        """Say what happens before the next trial (calibrating, measuring the baseline)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description(f"{self.desc}: {text}")
        else:
            self.stream.write(f"{self.desc}: {text}\n")
            self.stream.flush()

    def update(self, status: str) -> None:
        """One more trial done; ``status`` summarises it and the best so far."""
        self.count += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description(self.desc)
            self._bar.set_postfix_str(status)
            self._bar.update(1)
        else:
            self.stream.write(f"{self.desc}: trial {self.count}/{self.total} {status}\n")
            self.stream.flush()

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
