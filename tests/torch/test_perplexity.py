"""inc_torch.perplexity against values computed by hand on tiny bigram models, and against
Hugging Face's own causal-LM loss on a small Llama."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError, DataError
from inc_torch.perplexity import perplexity, perplexity_eval, token_ids, windows

# next-token probabilities of the bigram models: row = current token
PROBS = torch.tensor(
    [
        [1 / 2, 1 / 4, 1 / 4],
        [1 / 4, 1 / 2, 1 / 4],
        [1 / 8, 1 / 8, 3 / 4],
    ]
)
# transitions 0->0 (1/2), 0->1 (1/4), 1->1 (1/2), 1->2 (1/4), 2->2 (3/4)
IDS = [0, 0, 1, 1, 2, 2]


class Bigram(torch.nn.Module):
    """Logits log P[current token]: log_softmax gives back the table's probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(3, 3, _weight=PROBS.log().clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class BlindStart(Bigram):
    """The bigram, except that a window's first position predicts uniformly (no context seen):
    the result then depends on where windows start."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.table(ids).clone()
        logits[:, 0] = 0.0
        return logits


class LastOnly(Bigram):
    """Returns only the last position's logits (a classifier head), not one row per token."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)[:, -1]


@pytest.mark.parametrize(
    ("model", "window", "stride", "expected"),
    [
        # every transition scored: (1/2 * 1/4 * 1/2 * 1/4 * 3/4) ** -(1/5)
        (Bigram(), 6, 6, (256 / 3) ** (1 / 5)),
        # context-free, so overlapping windows change nothing
        (Bigram(), 3, 2, (256 / 3) ** (1 / 5)),
        # windows [0,3) and [3,6): token 3 is the second window's first, context only:
        # (1/2 * 1/4 * 1/4 * 3/4) ** -(1/4)
        (Bigram(), 3, 3, (128 / 3) ** (1 / 4)),
        # the first transition predicted uniformly (1/3 instead of 1/2)
        (BlindStart(), 6, None, 128 ** (1 / 5)),
        # stride 1: every later window scores its last token, from real context
        (BlindStart(), 3, 1, 128 ** (1 / 5)),
        # stride 2: tokens 1, 3 and 5 are each predicted from a window's first position
        (BlindStart(), 3, 2, 432 ** (1 / 5)),
        # stride 3: tokens 1 and 4 uniform (1/3), token 3 not scored
        (BlindStart(), 3, 3, 48 ** (1 / 4)),
    ],
)
def test_hand_computed(
    model: torch.nn.Module, window: int, stride: int | None, expected: float
) -> None:
    assert perplexity(model, IDS, window=window, stride=stride) == pytest.approx(expected, rel=1e-6)


def test_windows_score_each_token_once() -> None:
    for n, window, stride in [(6, 3, 1), (100, 16, 5), (100, 16, 16), (17, 16, 8)]:
        scored = [t for _, end, first in windows(n, window, stride) for t in range(first, end)]
        assert len(scored) == len(set(scored))
        if stride < window:
            assert scored == list(range(1, n))


def test_batches_of_windows_give_the_same_value() -> None:
    ids = torch.randint(0, 3, (50,), generator=torch.Generator().manual_seed(0))
    one = perplexity(BlindStart(), ids, window=8, stride=5)
    assert perplexity(BlindStart(), ids, window=8, stride=5, batch_size=4) == pytest.approx(
        one, rel=1e-6
    )


def test_training_flag_is_restored() -> None:
    model = BlindStart().train()
    perplexity(model, IDS, window=3)
    assert model.training


def small_llama(vocab: int) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(config).eval()


def test_one_window_equals_hugging_faces_loss() -> None:
    model = small_llama(vocab=97)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert perplexity(model, ids, window=40) == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_text_through_a_tokenizer_and_as_eval_func() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tests.datasets import minilm_dir

    tok = tokenizers.Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    text = "A thoughtful, well acted film that never quite finds its footing."
    model = small_llama(vocab=tok.get_vocab_size())
    direct = perplexity(model, tok.encode(text).ids, window=8, stride=4)
    assert perplexity(model, text, tokenizer=tok, window=8, stride=4) == direct
    assert perplexity_eval(text, tokenizer=tok, window=8, stride=4)(model) == direct


def test_eval_func_in_tuning_reads_lower_as_better() -> None:
    """fit with perplexity_eval and higher_is_better=False: the baseline is fp32's perplexity and
    a quantized candidate is accepted only within the tolerable rise."""
    model = small_llama(vocab=97)
    ids = torch.randint(0, 97, (64,), generator=torch.Generator().manual_seed(2))
    evaluate = perplexity_eval(ids, window=32)
    conf = PostTrainingQuantConfig(
        approach="dynamic",
        accuracy_criterion=AccuracyCriterion(higher_is_better=False, tolerable_loss=0.05),
    )
    q = quantization.fit(model, conf, eval_func=evaluate)
    fp32 = evaluate(model)
    assert evaluate(q.model) <= fp32 * 1.05 + 1e-9
    # a rise in perplexity is a loss to this criterion, a fall a gain
    assert (
        conf.accuracy_criterion.loss(fp32, fp32 * 1.1)
        > 0
        > conf.accuracy_criterion.loss(fp32, fp32 * 0.9)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"text": "words"}, DataError, "no tokenizer was given"),
        ({"text": [3]}, DataError, "at least 2 tokens"),
        ({"text": [[0, 1], [1, 2]]}, DataError, r"shape \(n,\) or \(1, n\)"),
        ({"text": [0.5, 1.0]}, DataError, "must be integers"),
        ({"text": [0, -1]}, DataError, ">= 0"),
        ({"window": 3, "stride": 4}, ConfigError, "1 <= stride <= window"),
        ({"window": 1}, ConfigError, "at least 2 tokens"),
        ({"window": 2.5}, ConfigError, "positive integer"),
        ({"batch_size": 0}, ConfigError, "batch_size=0"),
        ({"model": "model.pt"}, ConfigError, "torch.nn.Module"),
        ({"model": LastOnly()}, DataError, r"\(batch, tokens, vocab\)"),
    ],
)
def test_bad_input_names_what_is_allowed(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    args: dict[str, object] = {"model": Bigram(), "text": IDS, **kwargs}
    model, text = args.pop("model"), args.pop("text")
    with pytest.raises(error, match=match):
        perplexity(model, text, **args)  # type: ignore[arg-type]


def test_token_ids_accepts_tensors_arrays_and_one_row() -> None:
    expected = torch.tensor(IDS)
    for ids in (IDS, np.array(IDS, np.int32), torch.tensor([IDS]), np.array([IDS])):
        assert torch.equal(token_ids(ids), expected)
