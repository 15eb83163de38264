"""Small real models for the torch tests: a CNN trained in seconds on scikit-learn's digits."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Digits:
    x_train: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def batches(self, split: str = "test", size: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x_train, self.y_train)
        return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return Digits(x[:1300], y[:1300], x[1300:], y[1300:])


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc2(self.relu3(self.fc1(torch.flatten(x, 1))))


class BranchyCNN(DigitsCNN):
    """The same network with data-dependent control flow: FX cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sign = 1.0 if x.sum() > 0 else -1.0  # a Python branch on tensor values
        x = self.relu1(self.conv1(sign * x))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(torch.flatten(x, 1))))


def cache_dir() -> Path:
    root = os.environ.get("INC_TEST_CACHE") or os.path.join(tempfile.gettempdir(), "inc-test-cache")
    path = Path(root) / "torch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(model: nn.Module, digits: Digits, epochs: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def trained_cnn(digits: Digits, cls: type[nn.Module] = DigitsCNN) -> nn.Module:
    """The digits CNN, trained once and cached as a state dict (INC_TEST_CACHE).

    ``cls`` may be a subclass with the same modules (``BranchyCNN``): it gets the same weights.
    """
    path = cache_dir() / "digitscnn-v1.pt"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(train(DigitsCNN(), digits).state_dict(), path)
    model = cls()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, digits: Digits) -> float:
    logits = model(torch.from_numpy(digits.x_test))
    if not torch.is_tensor(logits):
        logits = logits[0]
    return float((logits.argmax(1).numpy() == digits.y_test).mean())


def fingerprint(model: nn.Module) -> tuple[str, bool]:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest(), model.training


def digit_tokens(digits: Digits, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each digit image as 16 tokens: the ink in each 2x2 block, 0..64 (the vocabulary)."""
    x, y = (digits.x_train, digits.y_train) if split == "train" else (digits.x_test, digits.y_test)
    blocks = (x[:, 0] * 16).reshape(len(x), 4, 2, 4, 2).sum(axis=(2, 4))
    ids = torch.from_numpy(np.rint(blocks.reshape(len(x), 16)).astype(np.int64))
    return ids, torch.from_numpy(y)


def tiny_bert_config():  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(
        vocab_size=65,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_bert(digits: Digits) -> nn.Module:
    """A 2-layer BERT built from a config (no download), trained on digit tokens; cached."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    return _trained_on_tokens(model, digits, cache_dir() / "tiny-bert-digits-v3.pt")


def tiny_llama(digits: Digits) -> nn.Module:
    """A 2-layer Llama (pre-norm: RMSNorm before attention and MLP) built from a config,
    trained on digit tokens; cached. Tokens are 0..64; 65 pads, so the last token classifies."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=66,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        num_labels=10,
        pad_token_id=65,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    return _trained_on_tokens(model, digits, cache_dir() / "tiny-llama-digits-v1.pt")


def _trained_on_tokens(model: nn.Module, digits: Digits, path: Path) -> nn.Module:
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    ids, labels = digit_tokens(digits, "train")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(8):
        perm = torch.randperm(len(ids))
        for i in range(0, len(ids), 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            model(input_ids=ids[idx], labels=labels[idx]).loss.backward()
            opt.step()
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def bert_accuracy(model: nn.Module, digits: Digits) -> float:
    ids, labels = digit_tokens(digits, "test")
    out = model(input_ids=ids)
    logits = out.logits if hasattr(out, "logits") else out
    return float((logits.argmax(-1) == labels).float().mean())
