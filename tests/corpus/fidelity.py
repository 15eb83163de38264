"""Fidelity of a model's int8 outputs against its fp32 outputs, one metric per task (1.0 = same)."""

from __future__ import annotations

import numpy as np


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> float:
    """Share of samples whose arg-max class is the same (classifiers; last axis = classes)."""
    return float(np.mean(ref.argmax(-1) == test.argmax(-1)))


def score_agreement(ref: np.ndarray, test: np.ndarray, column: int) -> float:
    """1 - mean |difference| of one probability column (binary scores such as NSFW)."""
    return float(1.0 - np.mean(np.abs(ref[..., column] - test[..., column])))


def ctc_greedy(probs: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Greedy CTC decode of N,T,C scores: arg-max per step, merge repeats, drop blanks."""
    out = []
    for steps in probs.argmax(-1):
        seq, prev = [], -1
        for s in steps.tolist():
            if s != prev and s != blank:
                seq.append(s)
            prev = s
        out.append(seq)
    return out


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def sequence_agreement(ref: np.ndarray, test: np.ndarray) -> float:
    """Decoded-symbol agreement of CTC outputs: mean of 1 - edit distance / longer length."""
    scores = []
    for a, b in zip(ctc_greedy(ref), ctc_greedy(test), strict=True):
        scores.append(1.0 - edit_distance(a, b) / max(len(a), len(b), 1))
    return float(np.mean(scores))


def mask_iou(ref: np.ndarray, test: np.ndarray, threshold: float) -> float:
    """IoU of the two thresholded maps, over the whole batch (dense prediction)."""
    a, b = ref > threshold, test > threshold
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean per-sample cosine similarity of flattened outputs (embeddings, posteriorgrams)."""
    a = ref.reshape(len(ref), -1).astype(np.float64)
    b = test.reshape(len(test), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), 1.0)))


def pooled_cosine(ref: np.ndarray, test: np.ndarray, lengths: np.ndarray) -> float:
    """Cosine of mean-pooled token states (N, T, D), each sample over its first ``lengths[i]``
    tokens (the real ones; padding excluded): the sentence-embedding metric of text encoders."""
    if len(lengths) != len(ref):
        raise ValueError(f"{len(ref)} outputs but {len(lengths)} token counts")
    keep = (np.arange(ref.shape[1])[None, :] < lengths[:, None])[..., None]
    pool = lambda x: (x * keep).sum(1) / np.maximum(keep.sum(1), 1)  # noqa: E731
    return cosine(pool(ref.astype(np.float64)), pool(test.astype(np.float64)))


def decision_agreement(ref: np.ndarray, test: np.ndarray, threshold: float = 0.5) -> float:
    """Share of scores on the same side of ``threshold`` (VAD frames, face/non-face)."""
    return float(np.mean((ref > threshold) == (test > threshold)))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def yolo_detections(out: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[np.ndarray]:
    """YOLOv8 head (N, 4 + classes, anchors) -> per image rows (x1, y1, x2, y2, score, class) after NMS."""
    result = []
    for pred in out.transpose(0, 2, 1):
        scores = pred[:, 4:]
        cls, score = scores.argmax(1), scores.max(1)
        keep = score > conf
        cx, cy, w, h = pred[keep, :4].T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        score, cls = score[keep], cls[keep]
        order, kept = np.argsort(-score), []
        while len(order):
            i, order = order[0], order[1:]
            kept.append(i)
            same = cls[order] == cls[i]
            order = order[~(same & (_iou(boxes[i], boxes[order]) > iou))]
        result.append(
            np.column_stack([boxes[kept], score[kept], cls[kept]]) if kept else np.zeros((0, 6))
        )
    return result


def detection_agreement(ref: np.ndarray, test: np.ndarray, match_iou: float = 0.5) -> float:
    """F1 of int8 detections against fp32 detections (same class, IoU >= ``match_iou``)."""
    matched = total_ref = total_test = 0
    for a, b in zip(yolo_detections(ref), yolo_detections(test), strict=True):
        total_ref, total_test = total_ref + len(a), total_test + len(b)
        used = np.zeros(len(b), bool)
        for row in a:
            if not len(b):
                break
            ious = _iou(row[:4], b[:, :4]) * (b[:, 5] == row[5]) * ~used
            j = int(ious.argmax())
            if ious[j] >= match_iou:
                used[j], matched = True, matched + 1
    if total_ref + total_test == 0:
        return 1.0
    return float(2 * matched / (total_ref + total_test))
