"""PyTorch Lightning: quantization-aware training with ``Trainer(callbacks=[QuantizationCallback(...)])``.

Needs ``pip install "inc-torch[lightning]" scikit-learn``. Run::

    python examples/lightning_qat.py [--out DIR]

A small CNN learns scikit-learn's 8x8 digits for a few epochs while inc's callback trains it
fake-quantized; when ``fit`` ends the callback holds the int8 model, which is saved and reloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import inc_torch
from inc_core import QuantizationAwareTrainingConfig, load


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LitDigits(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = DigitsCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the int8 model goes")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="inc-lightning-"))
    out = args.out or work / "int8"

    L.seed_everything(0, verbose=False)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = (
        torch.from_numpy(a) for a in train_test_split(x, y, test_size=0.3, random_state=0)
    )
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)

    module = LitDigits()
    callback = inc_torch.lightning.QuantizationCallback(QuantizationAwareTrainingConfig())
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=work,
    )
    trainer.fit(module, train)

    int8 = callback.quantized.model
    qat_acc, int8_acc = accuracy(module.eval(), x_test, y_test), accuracy(int8, x_test, y_test)
    callback.save(out)
    reloaded = load(out, model=LitDigits()).model
    same = torch.equal(reloaded(x_test), int8(x_test))
    print(f"QAT (fake-quantized) top-1 {qat_acc:.4f}   int8 top-1 {int8_acc:.4f}   saved to {out}")
    print(f"reloaded int8 model gives the same logits: {same}")
    print(
        "per-op plan:",
        ", ".join(f"{r['op']}={r['activation']}" for r in callback.quantized.op_report()),
    )
    return 0 if same and int8_acc >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
