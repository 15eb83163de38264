"""inc_torch.lightning.QuantizationCallback with a real Lightning Trainer on digits."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.ao.quantization import FakeQuantizeBase
from torch.utils.data import DataLoader, TensorDataset

from inc_core import QuantizationAwareTrainingConfig, load
from inc_torch.lightning import QuantizationCallback

from . import models


class LitDigits(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = models.DigitsCNN()
        self.fake_quant_in_validation: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, _idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x=x), y)  # keyword forward

    def validation_step(self, batch, _idx):
        self.fake_quant_in_validation.append(
            any(
                isinstance(m, FakeQuantizeBase) and m.fake_quant_enabled.item()
                for m in self.modules()
            )
        )
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def _loader(digits: models.Digits, split: str) -> DataLoader:
    x, y = (digits.x_train, digits.y_train) if split == "train" else (digits.x_test, digits.y_test)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64)


def _trainer(tmp_path, callback, epochs=1) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        limit_train_batches=8,
        limit_val_batches=2,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


@pytest.fixture
def lit(cnn) -> LitDigits:
    module = LitDigits()
    module.model.load_state_dict(cnn.state_dict())
    return module


def test_fit_trains_fake_quantized_and_yields_int8(lit, digits, cnn_accuracy, tmp_path):
    callback = QuantizationCallback(QuantizationAwareTrainingConfig())
    assert isinstance(callback, L.Callback)
    trainer = _trainer(tmp_path, callback)
    trainer.fit(lit, _loader(digits, "train"), _loader(digits, "test"))
    assert lit.fake_quant_in_validation and all(lit.fake_quant_in_validation)
    int8 = callback.quantized.model
    assert isinstance(int8.model.fc2.module, torch.ao.nn.quantized.Linear)
    assert models.accuracy(int8, digits) >= cnn_accuracy * 0.99

    # fit a second time on the same module: it is already prepared, training goes on
    first = callback.quantized
    _trainer(tmp_path, callback).fit(lit, _loader(digits, "train"))
    assert callback.quantized is not first
    assert models.accuracy(callback.quantized.model, digits) >= cnn_accuracy * 0.99

    callback.save(tmp_path / "int8")
    loaded = load(tmp_path / "int8", model=LitDigits())
    x = torch.from_numpy(digits.x_test[:100])
    with torch.no_grad():
        assert torch.equal(loaded.model(x), callback.quantized.model(x))


def test_checkpoint_during_qat_reloads_into_a_fresh_module_and_resumes(
    lit, digits, cnn_accuracy, tmp_path
):
    trainer = _trainer(tmp_path, QuantizationCallback())
    trainer.fit(lit, _loader(digits, "train"))
    ckpt = tmp_path / "qat.ckpt"
    trainer.save_checkpoint(ckpt)
    assert any("fake_quant" in k for k in torch.load(ckpt, weights_only=False)["state_dict"])

    fresh = LitDigits()
    callback = QuantizationCallback()
    resumed = _trainer(tmp_path, callback, epochs=2)
    resumed.fit(fresh, _loader(digits, "train"), ckpt_path=ckpt)
    assert resumed.current_epoch == 2
    assert models.accuracy(callback.quantized.model, digits) >= cnn_accuracy * 0.99


DDP_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import lightning as L
import torch
from inc_core import QuantizationAwareTrainingConfig
from inc_torch.lightning import QuantizationCallback
from tests.torch import models
from tests.torch.test_lightning import LitDigits, _loader

if __name__ == "__main__":
    digits = models.load_digits()
    lit = LitDigits()
    lit.model.load_state_dict(models.trained_cnn(digits).state_dict())
    callback = QuantizationCallback(QuantizationAwareTrainingConfig())
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=4, accelerator="cpu", devices=2, strategy="ddp",
        callbacks=[callback], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir={out!r},
    )
    trainer.fit(lit, _loader(digits, "train"))
    callback.save({out!r} + "/int8")  # every rank calls it; rank 0 writes
    if trainer.is_global_zero:
        print("WORLD", trainer.world_size)
"""


def test_ddp_with_two_cpu_processes(digits, cnn_accuracy, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "ddp_qat.py"
    script.write_text(DDP_SCRIPT.format(root=root, out=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": root}
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WORLD 2" in run.stdout
    loaded = load(tmp_path / "int8", model=LitDigits())
    assert models.accuracy(loaded.model, digits) >= cnn_accuracy * 0.99
