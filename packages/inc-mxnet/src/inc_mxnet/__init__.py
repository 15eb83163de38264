"""inc backend for MXNet Gluon: ``inc_core.quantization.fit(hybrid_block, PostTrainingQuantConfig(),
calib_dataloader=...)`` picks it for a Gluon ``HybridBlock`` (or an exported symbol/params pair);
the core finds it through the ``inc.backends`` entry point ``mxnet``."""

from __future__ import annotations

from importlib import metadata

try:  # one source of truth: the version in packages/inc-mxnet/pyproject.toml
    __version__ = metadata.version("inc-mxnet")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
