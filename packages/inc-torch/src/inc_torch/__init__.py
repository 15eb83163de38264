"""inc backend for PyTorch: post-training static/dynamic int8, QAT, SmoothQuant, and QAT
callbacks for Lightning (``inc_torch.lightning``) and the Hugging Face Trainer
(``inc_torch.transformers``). The core finds it through the ``inc.backends`` entry point
``pytorch``; users rarely import it directly."""

from __future__ import annotations

__version__ = "0.1.0"
