"""``QuantizedModel``: what ``fit`` returns, and its save/load as native files plus inc.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import backend as registry
from .errors import IncError, ModelError
from .space import QuantPlan

FORMAT_VERSION = 1
MANIFEST = "inc.json"


@dataclass
class QuantizedModel:
    """A quantized model in its framework's native form, with how it was made.

    ``model`` is the native object (an ``onnx.ModelProto``, a ``torch.nn.Module``, ...);
    ``plan`` the per-op decisions; ``report`` a JSON-ready dict (trials, accuracy, latency).
    """

    model: Any
    backend: str
    plan: QuantPlan
    config: Mapping[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def op_report(self) -> list[dict[str, Any]]:
        """One row per op: name, type, approach, activation and weight dtypes."""
        rows = []
        for name, op in self.plan.ops.items():
            rows.append(
                {
                    "op": name,
                    "type": self.plan.op_types.get(name, ""),
                    "approach": op.approach,
                    "activation": op.activation.dtype if op.activation else "fp32",
                    "weight": op.weight.dtype if op.weight else "fp32",
                }
            )
        return rows

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the native artifact and inc.json into ``directory``, atomically.

        Either the whole directory is written or, on failure, what was there before is left
        untouched. Returns the directory.
        """
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            backend = registry.by_name(self.backend)
            files = backend.save(self.model, staging)
            manifest = {
                "format_version": FORMAT_VERSION,
                "backend": self.backend,
                "versions": {"inc-core": _version("inc-core"), **backend.versions()},
                "files": {name: _sha256(staging / name) for name in sorted(files)},
                "plan": self.plan.to_dict(),
                "config": dict(self.config),
                "report": self.report,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
            _replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target


def load(directory: str | os.PathLike[str], **kwargs: Any) -> QuantizedModel:
    """Load what ``QuantizedModel.save`` wrote, dispatching to the backend named in inc.json.

    Checksums are verified before any file is handed to the framework; nothing is unpickled.
    """
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{root} is not a saved inc model: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{manifest_path} has format_version {manifest.get('format_version')!r}; this inc-core reads {FORMAT_VERSION}"
        )
    for name, expected in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise ModelError(f"{path} is listed in {MANIFEST} but missing")
        if _sha256(path) != expected:
            raise ModelError(
                f"{path} does not match its checksum in {MANIFEST}: the file was changed or corrupted"
            )
    backend = registry.by_name(manifest["backend"])
    native = backend.load(root, **kwargs)
    return QuantizedModel(
        model=native,
        backend=manifest["backend"],
        plan=QuantPlan.from_dict(manifest["plan"]),
        config=manifest.get("config", {}),
        report=manifest.get("report", {}),
    )


def _replace_dir(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    if not target.is_dir():
        raise IncError(f"cannot save to {target}: it exists and is not a directory")
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(backup)
    try:
        staging.rename(target)
    except BaseException:
        backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple, frozenset)):
        return list(value)
    return str(value)
