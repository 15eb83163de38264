"""The weight-only (int4/int8) benchmark of issue 16: fp32 vs inc vs onnxruntime's own
``MatMulNBitsQuantizer``, in one process.

Run: ``./run-tests -e bench-weight-only`` (``python -m benchmarks.weight_only [--only mlp,minilm,lm]``).
Sections: ``mlp`` (an LLM-shaped MLP block, decode-step latency and model size), ``minilm``
(all-MiniLM-L6-v2's sentence embeddings on real reviews), ``lm`` (SmolLM2-135M's perplexity
on real speeches). Writes ``benchmarks/results/weight_only.md`` and its section of BENCHMARKS.md.
"""
