"""Perplexity of a causal language model over a text, with a sliding window; an ``eval_func``.

``perplexity(model, text, tokenizer=tok)`` runs ``model(ids)`` on windows of ``window`` tokens
that start every ``stride`` tokens and scores each token at most once, in the first window
where it is not the window's first token (Hugging Face's sliding-window recipe):
``exp(mean negative log-likelihood)`` of the scored tokens. With ``stride < window`` every
token but the text's first is scored, each with at least ``window - stride`` tokens of context;
``stride == window`` (the default) is non-overlapping windows, the cheapest, where each
window's first token is context only.

The model is any ``torch.nn.Module`` whose call on ``(batch, tokens)`` int64 ids returns
next-token logits ``(batch, tokens, vocab)``: a tensor, an object with ``.logits`` (Hugging
Face ``*ForCausalLM``), a mapping with ``"logits"`` or a tuple whose first item is the logits.
The loss is computed here from the logits, not by the model.

As an evaluation for tuning (perplexity is better when lower, so tell the accuracy criterion)::

    evaluate = perplexity_eval(text, tokenizer=tok, window=512)  # tokenizes once
    conf = PostTrainingQuantConfig(
        approach="weight_only",
        accuracy_criterion=AccuracyCriterion(higher_is_better=False, tolerable_loss=0.01),
    )
    q = quantization.fit(model, conf, eval_func=evaluate)  # <= 1% more perplexity than fp32
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from inc_core.errors import ConfigError, DataError

#: the default window, in tokens (shorter than every current LLM's context)
DEFAULT_WINDOW = 512


def token_ids(text: Any, tokenizer: Any = None) -> torch.Tensor:
    """``text`` as a 1-D int64 tensor of token ids.

    ``text`` is a ``str`` (then ``tokenizer`` is required: a Hugging Face tokenizer, whose
    ``encode`` returns ids, or a ``tokenizers.Tokenizer``, whose ``encode`` returns an
    ``Encoding``), or ids already: a sequence, numpy array or tensor of shape ``(n,)`` or
    ``(1, n)``.
    """
    if isinstance(text, str):
        if tokenizer is None:
            raise DataError(
                "text is a str but no tokenizer was given; pass tokenizer= (a Hugging Face "
                "tokenizer or a tokenizers.Tokenizer) or token ids instead of text"
            )
        encoded = tokenizer.encode(text)
        text = getattr(encoded, "ids", encoded)  # tokenizers.Encoding carries .ids
    if isinstance(text, torch.Tensor):
        array = text.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(text)
        except (TypeError, ValueError) as exc:
            raise DataError(f"token ids must be integers, got {type(text).__name__}") from exc
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise DataError(
            f"token ids must have shape (n,) or (1, n), got {array.shape}; score one text at a time"
        )
    if array.dtype.kind not in "iu":
        raise DataError(f"token ids must be integers, got dtype {array.dtype}")
    if array.size < 2:
        raise DataError(
            f"perplexity needs at least 2 tokens (the first one is only context), got {array.size}"
        )
    if array.min() < 0:
        raise DataError(f"token ids must be >= 0, got {int(array.min())}")
    return torch.from_numpy(array.astype(np.int64))


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` per window: it runs ``ids[begin:end]`` and scores the tokens
    ``ids[first_scored:end]``; no token is scored twice."""
    _check_window(window, stride)
    spans: list[tuple[int, int, int]] = []
    scored_to = 1  # the first token has nothing to predict it
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, end, max(scored_to, begin + 1)))
        scored_to = end
        if end == n_tokens:
            break
    return spans


def perplexity(
    model: torch.nn.Module,
    text: Any,
    *,
    tokenizer: Any = None,
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
    batch_size: int = 1,
) -> float:
    """``exp`` of the mean negative log-likelihood of ``text``'s tokens under ``model`` (lower is better).

    ``stride`` defaults to ``window``; ``batch_size`` windows of equal length run in one call.
    The model runs in eval mode under ``torch.inference_mode`` and its training flag is restored.
    """
    ids = token_ids(text, tokenizer)
    return _perplexity(model, ids, window, window if stride is None else stride, batch_size)


def perplexity_eval(
    text: Any,
    *,
    tokenizer: Any = None,
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
    batch_size: int = 1,
) -> Callable[[torch.nn.Module], float]:
    """An ``eval_func`` for ``quantization.fit``: ``model -> perplexity`` of ``text``.

    The text is tokenized (and the arguments checked) once, here. Lower is better: pair it with
    ``AccuracyCriterion(higher_is_better=False)``.
    """
    ids = token_ids(text, tokenizer)
    step = window if stride is None else stride
    _check_window(window, step)
    _check_batch(batch_size)

    def evaluate(model: torch.nn.Module) -> float:
        return _perplexity(model, ids, window, step, batch_size)

    return evaluate


def _perplexity(
    model: torch.nn.Module, ids: torch.Tensor, window: int, stride: int, batch_size: int
) -> float:
    _check_batch(batch_size)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module returning next-token logits, got {type(model).__name__}"
        )
    spans = windows(int(ids.numel()), window, stride)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    nll, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for group in _batches(spans, batch_size):
                rows = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
                logits = _logits(model(rows), rows.shape)
                # position t's logits predict token t + 1
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                picked = logp.gather(-1, rows[:, 1:, None]).squeeze(-1)
                for row, (begin, _, first) in enumerate(group):
                    scored = picked[row, first - begin - 1 :]
                    nll -= float(scored.double().sum())
                    count += int(scored.numel())
    finally:
        model.train(was_training)
    return math.exp(nll / count)


def _batches(spans: Sequence[tuple[int, int, int]], size: int) -> list[list[tuple[int, int, int]]]:
    """Consecutive windows of one length, ``size`` at most per batch (only the last is shorter)."""
    out: list[list[tuple[int, int, int]]] = []
    for span in spans:
        last = out[-1] if out else None
        if last and len(last) < size and last[0][1] - last[0][0] == span[1] - span[0]:
            last.append(span)
        else:
            out.append([span])
    return out


def _logits(output: Any, shape: torch.Size) -> torch.Tensor:
    """The logits in a model's output, checked against the input ids' ``(batch, tokens)``."""
    logits = output
    if not isinstance(logits, torch.Tensor):
        if isinstance(logits, Mapping) and "logits" in logits:
            logits = logits["logits"]
        elif hasattr(logits, "logits"):
            logits = logits.logits
        elif isinstance(logits, (tuple, list)) and logits:
            logits = logits[0]
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != shape:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(output).__name__
        raise DataError(
            f"the model must return next-token logits of shape (batch, tokens, vocab) = "
            f"({shape[0]}, {shape[1]}, vocab) for ids of shape {tuple(shape)}, got {got}"
        )
    return logits


def _check_window(window: Any, stride: Any) -> None:
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer (tokens)")
    if window < 2:
        raise ConfigError(f"window={window} must be at least 2 tokens (one predicts the next)")
    if stride > window:
        raise ConfigError(
            f"stride={stride} > window={window} would skip the tokens between windows; "
            "allowed: 1 <= stride <= window"
        )


def _check_batch(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer (windows)")
