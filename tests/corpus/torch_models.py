"""The corpus's torch models: MTCNN's PNet/RNet/ONet from facenet-pytorch's wheel, real weights.

facenet_pytorch's package ``__init__`` imports torchvision (a CUDA build on PyPI, which does not
load against the CPU torch we pin) and requests, for its detection pipeline and weight download.
The three nets need neither: their class definitions are read from the installed mtcnn.py and
executed as they are, so the real classes load their real weights from the wheel's data/ folder.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tests import datasets
from tests.corpus import data, fidelity

PACKAGE = "facenet-pytorch==2.6.0"


def mtcnn_classes() -> dict[str, type[nn.Module]]:
    """PNet, RNet and ONet as facenet_pytorch/models/mtcnn.py defines them."""
    path = str(
        datasets.package_dir("facenet_pytorch", f"pip install --no-deps {PACKAGE}")
        / "models"
        / "mtcnn.py"
    )
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    wanted = [
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in ("PNet", "RNet", "ONet")
    ]
    namespace = {
        "torch": torch,
        "nn": nn,
        "os": os,
        "np": np,
        "__file__": path,
        "__name__": "facenet_pytorch.models.mtcnn",
    }
    exec(compile(ast.Module(body=wanted, type_ignores=[]), path, "exec"), namespace)
    return {name: namespace[name] for name in ("PNet", "RNet", "ONet")}


@dataclass(frozen=True)
class TorchCorpusModel:
    name: str
    cls: str
    size: int  # input crop side
    batch: int
    task: str
    package: str = PACKAGE
    exporter: str = "torch nn.Module (state dict)"
    metric: str = "face decision agreement (p>0.5)"

    def module(self) -> nn.Module:
        return mtcnn_classes()[self.cls]().eval()

    def batches(self, split: str, n: int, rich: bool = False) -> list[torch.Tensor]:
        # MTCNN's own preprocessing: (x - 127.5) / 128, NCHW
        x = data.crops(
            data.photos(rich),
            n * self.batch,
            (self.size, self.size),
            seed={"calib": 0, "eval": 1}[split],
        )
        t = torch.from_numpy(((x.astype(np.float32) - 127.5) / 128.0).transpose(0, 3, 1, 2).copy())
        return list(t.split(self.batch))

    @staticmethod
    def face_prob(out: tuple[torch.Tensor, ...]) -> np.ndarray:
        prob = out[-1]  # every net returns its face/non-face softmax last
        return prob.detach().numpy().reshape(len(prob), 2, -1)[:, 1].reshape(-1)

    def fidelity(
        self, ref: list[tuple[torch.Tensor, ...]], test: list[tuple[torch.Tensor, ...]]
    ) -> float:
        return fidelity.decision_agreement(
            np.concatenate([self.face_prob(o) for o in ref]),
            np.concatenate([self.face_prob(o) for o in test]),
        )

    def box_cosine(
        self, ref: list[tuple[torch.Tensor, ...]], test: list[tuple[torch.Tensor, ...]]
    ) -> float:
        """Cosine of the box-regression outputs (the first output of every net)."""
        return fidelity.cosine(
            np.concatenate([o[0].detach().numpy() for o in ref]),
            np.concatenate([o[0].detach().numpy() for o in test]),
        )


MODELS = {
    m.name: m
    for m in [
        TorchCorpusModel(
            "mtcnn-pnet", "PNet", 48, 8, "face proposal (fully conv, 48x48 -> 19x19 map)"
        ),
        TorchCorpusModel("mtcnn-rnet", "RNet", 24, 8, "face refine (24x24 crops)"),
        TorchCorpusModel("mtcnn-onet", "ONet", 48, 8, "face output: prob, box, landmarks (48x48)"),
    ]
}
