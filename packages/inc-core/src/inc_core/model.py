"""``QuantizedModel``: what ``fit`` returns, and its save/load as native files plus inc.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import backend as registry
from . import report as report_page
from .errors import ConfigError, ModelError
from .space import QuantPlan
from .weight_only import plan as weight_only_plan
from .weight_only import summary as weight_only_summary

FORMAT_VERSION = 1
MANIFEST = "inc.json"
# Hidden siblings of a save target: the new directory being written and the earlier one being
# replaced. Their names carry the writer's pid, so a later save can tell a crashed writer's
# leftovers (pid gone) from a save running right now in another process.
_STAGING = "inc-staging"
_OLD = "inc-old"


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
    #: the user's model files this model was made from (resolved paths); ``save`` never
    #: writes over them
    sources: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def op_report(self) -> list[dict[str, Any]]:
        """One row per op: name, type, approach, activation and weight dtypes, ``sqnr_db`` (the
        op's output int8 vs fp32 on calibration data; None for fp32 ops or when unknown) and
        ``runs_as`` (what the runtime executes for it; "" when unknown). A weight-only model's
        rows also carry ``bits``, ``group_size``, ``weight_scheme`` and ``algorithm``."""
        diagnosis = self.report.get("op_diagnosis") or {}
        rows = []
        for name, op in self.plan.ops.items():
            known = diagnosis.get(name) or {}
            rows.append(
                {
                    "op": name,
                    "type": self.plan.op_types.get(name, ""),
                    "approach": op.approach,
                    "activation": op.activation.dtype if op.activation else "fp32",
                    "weight": op.weight.dtype if op.weight else "fp32",
                    "sqnr_db": known.get("sqnr_db") if op.quantized else None,
                    "runs_as": known.get("runs_as", ""),
                }
            )
        if weight_only_plan.is_weight_only(self.plan):
            return weight_only_summary.annotate_rows(rows, self.plan)
        return rows

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the native artifact, inc.json and report.html into ``directory``, atomically.

        Either the whole directory is written or, on failure, what was there before is left
        untouched. An existing directory is replaced only when it is empty or holds an earlier
        inc save (an inc.json): other files of the user are never deleted, and a directory
        holding the model this one was made from is refused (``ConfigError``). Leftovers of an
        earlier save to ``directory`` that was killed are removed. Returns the directory.
        """
        target = Path(directory).expanduser().resolve()
        check_output(target, self.sources, "save directory")
        _check_replaceable(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(target)
        staging = _sibling(target, _STAGING)
        staging.mkdir()  # mkdir (unlike mkdtemp) keeps the user's umask for the final directory
        try:
            backend = registry.by_name(self.backend)
            written = backend.save(self.model, staging)
            missing = [name for name in written if not (staging / name).exists()]
            if missing:
                raise ModelError(
                    f"backend {self.backend!r} reported files it did not write: {missing}"
                )
            files = {name: _sha256(staging / name) for name in _files_under(staging)}
            manifest = {
                "format_version": FORMAT_VERSION,
                "backend": self.backend,
                "versions": {
                    "inc-core": _version("inc-core"),
                    backend.package: _version(backend.package),
                    **backend.versions(),
                },
                "files": files,
                "plan": self.plan.to_dict(),
                "op_report": self.op_report(),
                "config": dict(self.config),
                "report": self.report,
            }
            # report.html (tables; charts with inc-core[report]) reads the manifest as JSON
            # holds it; it is listed in files like the model, so load() checks it and a later
            # save over this directory knows it as inc's
            manifest["sizes"] = report_page.model_sizes(staging, files, self.sources)
            text = json.dumps(manifest, indent=2, default=_json_default)
            page = report_page.write_html(staging, json.loads(text))
            files[page] = _sha256(staging / page)
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"{manifest_path} is not an inc manifest (a JSON object)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{manifest_path} has format_version {manifest.get('format_version')!r}; this inc-core reads {FORMAT_VERSION}"
        )
    for key, kind in (("backend", str), ("files", dict), ("plan", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ModelError(f"{manifest_path} lacks a valid {key!r} entry; the file is damaged")
    for name, expected in manifest["files"].items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelError(f"{manifest_path} lists {name!r}, a path outside the model directory")
        path = root / relative
        if not path.is_file():
            raise ModelError(f"{path} is listed in {MANIFEST} but missing")
        if _sha256(path) != expected:
            raise ModelError(
                f"{path} does not match its checksum in {MANIFEST}: the file was changed or corrupted"
            )
    try:
        plan = QuantPlan.from_dict(manifest["plan"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{manifest_path} holds a damaged plan ({exc!r})") from exc
    backend = registry.by_name(manifest["backend"])
    native = backend.load(root, **kwargs)
    return QuantizedModel(
        model=native,
        backend=manifest["backend"],
        plan=plan,
        config=manifest.get("config", {}),
        report=manifest.get("report", {}),
    )


def check_output(output: str | os.PathLike[str], sources: Any, what: str = "output") -> None:
    """Refuse an output path that is, or contains, one of the user's input files.

    Paths are compared resolved (symlinks, ``..``, relative vs absolute) and, where both exist,
    by inode, so two spellings of one file are caught. Called before anything is read.
    """
    out = Path(output).expanduser()
    resolved = out.resolve()
    for source in sources:
        src = Path(source).expanduser()
        same = resolved == src.resolve() or _same_file(out, src)
        inside = resolved in src.resolve().parents
        if same or inside:
            where = "is" if same else "contains"
            raise ConfigError(
                f"{what} {str(output)!r} {where} the input model {str(source)!r}: writing there "
                "would destroy the fp32 model; choose another path"
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: they cannot be one file
        return False


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def remove_stale_siblings(target: Path) -> list[Path]:
    """Delete staging/backup directories of ``target`` left by a save that was killed.

    Only hidden directories named after ``target`` by ``save`` whose writer process is gone
    (on this machine) are removed; a save in progress in another process is left alone.
    """
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for kind in (_STAGING, _OLD):
        for path in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = path.name[len(f".{target.name}.{kind}-") :].split("-", 1)[0]
            if path.is_dir() and not _alive(pid):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` runs here; names without a pid (older inc) count as dead."""
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def _check_replaceable(target: Path) -> None:
    """Refuse to overwrite a file, or a directory holding anything but an earlier inc save."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ModelError(f"cannot save to {target}: it exists and is not a directory")
    if not any(target.iterdir()):
        return
    if not (target / MANIFEST).is_file():
        raise ModelError(
            f"cannot save to {target}: the directory is not empty and is not an earlier inc save "
            f"(no {MANIFEST}); choose a new or empty directory so none of your files are replaced"
        )
    try:
        listed = set(json.loads((target / MANIFEST).read_text())["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"cannot save to {target}: its {MANIFEST} is damaged ({exc!r}), so the files there "
            "cannot be told apart from yours; remove the directory or choose another one"
        ) from exc
    foreign = [name for name in _files_under(target) if name not in listed | {MANIFEST}]
    if foreign:
        raise ModelError(
            f"cannot save to {target}: it holds files the earlier inc save did not write "
            f"({', '.join(foreign[:5])}); move them or choose another directory"
        )


def _files_under(root: Path) -> list[str]:
    """Every file below ``root`` as a POSIX relative path, sorted (what the checksums cover)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _replace_dir(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    backup = _sibling(target, _OLD)
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
