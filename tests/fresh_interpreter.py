"""Runs code in a fresh interpreter of this env, for tests about what an import pulls in
(a clean ``sys.modules``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any


def run(code: str) -> Any:
    """Run ``code`` (dedented) in a new interpreter; it prints one JSON line, returned parsed."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
