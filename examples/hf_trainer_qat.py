"""Hugging Face ``Trainer``: quantization-aware training with ``Trainer(callbacks=[QuantizationCallback(...)])``.

Needs ``pip install "inc-torch[transformers]" scikit-learn``; nothing is downloaded. Run::

    python examples/hf_trainer_qat.py [--out DIR]

A 2-layer BERT, built from a config, learns scikit-learn's 8x8 digits read as 16 tokens (the ink
in each 2x2 block). The fine-tuning run then adds inc's callback: the Trainer trains the model
fake-quantized and the callback converts it to int8 when training ends. ``trainer.save_model``
writes transformers' files plus the int8 model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import inc_torch
from inc_core import QuantizationAwareTrainingConfig, load


def digit_tokens(x: np.ndarray) -> torch.Tensor:
    """Each 8x8 image (values 0..16) as 16 tokens 0..64: the ink in each 2x2 block."""
    blocks = x.reshape(len(x), 4, 2, 4, 2).sum(axis=(2, 4))
    return torch.from_numpy(blocks.reshape(len(x), 16).astype(np.int64))


class Digits(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> transformers.BertForSequenceClassification:
    config = transformers.BertConfig(
        vocab_size=65, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=10,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def pretrain(
    model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, epochs: int = 20
) -> None:
    """The fp32 model the user already has (a plain training loop, seconds)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ids))
        for i in range(0, len(ids), 32):
            batch = order[i : i + 32]
            opt.zero_grad()
            model(input_ids=ids[batch], labels=labels[batch]).loss.backward()
            opt.step()


def accuracy(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(input_ids=ids).logits.argmax(-1) == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where trainer.save_model writes")
    parser.add_argument(
        "--steps", type=int, default=40, help="quantization-aware fine-tuning steps"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="inc-hf-"))
    out = args.out or work / "saved"

    transformers.set_seed(0)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    test_ids, test_labels = digit_tokens(x_test), torch.from_numpy(y_test)

    train_ids, train_labels = digit_tokens(x_train), torch.from_numpy(y_train)
    model = tiny_bert()
    pretrain(model, train_ids, train_labels)
    fp32_acc = accuracy(model.eval(), test_ids, test_labels)

    callback = inc_torch.transformers.QuantizationCallback(QuantizationAwareTrainingConfig())
    trainer_args = transformers.TrainingArguments(
        output_dir=str(work / "checkpoints"),
        max_steps=args.steps,
        per_device_train_batch_size=32,
        learning_rate=5e-4,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model,
        args=trainer_args,
        train_dataset=Digits(train_ids, train_labels),
        callbacks=[callback],
    )
    trainer.train()

    int8 = callback.quantized.model
    qat_acc, int8_acc = (
        accuracy(model.eval(), test_ids, test_labels),
        accuracy(int8, test_ids, test_labels),
    )
    trainer.save_model(str(out))  # transformers' files, and the int8 model in out/int8/
    reloaded = load(out / inc_torch.transformers.INT8_DIR, model=tiny_bert()).model
    same = torch.equal(accuracy_logits(reloaded, test_ids), accuracy_logits(int8, test_ids))
    print(f"fp32 top-1 {fp32_acc:.4f}   QAT (fake-quantized) {qat_acc:.4f}   int8 {int8_acc:.4f}")
    print(f"saved to {out}; the reloaded int8 model gives the same logits: {same}")
    return 0 if same and int8_acc >= fp32_acc - 0.02 else 1


def accuracy_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


if __name__ == "__main__":
    sys.exit(main())
