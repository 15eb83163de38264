"""QuantizedModel.save / inc_core.load: native files + inc.json, atomic, checksummed, no pickle."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, QuantizedModel, load, quantization
from inc_core import backend as registry
from inc_core.errors import BackendNotAvailable, ModelError
from inc_core.model import FORMAT_VERSION, MANIFEST

from .reference_backend import NumpyMLP, ReferenceBackend


@pytest.fixture
def quantized(mlp, calib_loader) -> QuantizedModel:
    return quantization.fit(
        mlp, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib_loader
    )


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: to prove a directory was left as it was."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_writes_native_files_and_a_manifest(quantized, tmp_path):
    out = quantized.save(tmp_path / "q")
    assert out == (tmp_path / "q").resolve()
    files = ["inc.json", "layout.json", "report.html", "weights.npz"]
    assert sorted(p.name for p in out.iterdir()) == files
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["backend"] == "reference"
    assert manifest["versions"]["inc-core"] not in ("", None)
    assert manifest["files"] == {
        "layout.json": sha256(out / "layout.json"),
        "weights.npz": sha256(out / "weights.npz"),
        "report.html": sha256(out / "report.html"),
    }
    assert manifest["plan"] == quantized.plan.to_dict()
    assert manifest["plan"]["ops"]["fc1"]["approach"] == "static"
    assert manifest["config"]["approach"] == "static"
    assert manifest["config"]["type"] == "PostTrainingQuantConfig"
    assert manifest["op_report"] == quantized.op_report()
    assert [row["op"] for row in manifest["report"]["per_op"]] == ["fc1", "fc2"]


def test_load_round_trip_predicts_the_same(quantized, tmp_path, blobs):
    x, _ = blobs
    quantized.save(tmp_path / "q")
    loaded = load(tmp_path / "q")
    assert loaded.backend == "reference"
    assert loaded.plan == quantized.plan
    assert loaded.config == quantized.config
    np.testing.assert_array_equal(loaded.model(x), quantized.model(x))


def test_load_accepts_a_string_path(quantized, tmp_path):
    quantized.save(str(tmp_path / "q"))
    assert load(str(tmp_path / "q")).plan == quantized.plan


def test_save_creates_missing_parents_and_replaces_an_earlier_save(quantized, mlp, tmp_path):
    target = tmp_path / "a" / "b" / "q"
    quantized.save(target)
    dynamic = quantization.fit(mlp, PostTrainingQuantConfig(approach="dynamic"))
    dynamic.save(target)
    assert load(target).plan == dynamic.plan
    assert sorted(p.name for p in target.parent.iterdir()) == ["q"]  # no staging, no backup


def test_save_into_an_existing_empty_directory(quantized, tmp_path):
    (tmp_path / "empty").mkdir()
    quantized.save(tmp_path / "empty")
    assert load(tmp_path / "empty").plan == quantized.plan


def test_save_never_replaces_a_directory_holding_the_users_files(quantized, tmp_path):
    home = tmp_path / "project"
    home.mkdir()
    (home / "train.py").write_text("print('my code')")
    with pytest.raises(ModelError, match=r"not empty and is not an earlier inc save"):
        quantized.save(home)
    assert tree(home) == {"train.py": b"print('my code')"}
    with pytest.raises(ModelError, match="not a directory"):
        quantized.save(home / "train.py")
    assert (home / "train.py").read_text() == "print('my code')"


class FailingSave(ReferenceBackend):
    """Writes part of its files, then fails, like a full disk or a converter bug would."""

    name = "failingsave"
    priority = 0

    def save(self, model: NumpyMLP, directory: Path) -> list[str]:
        (directory / "weights.npz").write_bytes(b"half a file")
        raise OSError("disk full")


class NestedSave(ReferenceBackend):
    """Writes a sub-directory, as a TensorFlow SavedModel does."""

    name = "nestedsave"
    priority = 0

    def save(self, model: NumpyMLP, directory: Path) -> list[str]:
        names = super().save(model, directory)
        (directory / "variables").mkdir()
        (directory / "variables" / "data.bin").write_bytes(b"\x00\x01\x02")
        return [*names, "variables"]


class LyingSave(ReferenceBackend):
    name = "lyingsave"
    priority = 0

    def save(self, model: NumpyMLP, directory: Path) -> list[str]:
        return [*super().save(model, directory), "model.onnx"]


@pytest.fixture
def with_backend() -> Iterator[Any]:
    added: list[str] = []

    def add(cls: type[ReferenceBackend], q: QuantizedModel) -> QuantizedModel:
        registry.register(cls)
        added.append(cls.name)
        return QuantizedModel(q.model, cls.name, q.plan, q.config, q.report)

    yield add
    for name in added:
        registry.unregister(name)


def test_a_failing_save_leaves_the_previous_save_intact(quantized, tmp_path, with_backend):
    target = tmp_path / "q"
    quantized.save(target)
    before = tree(target)
    failing = with_backend(FailingSave, quantized)
    with pytest.raises(OSError, match="disk full"):
        failing.save(target)
    assert tree(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no staging dir left behind
    assert load(target).plan == quantized.plan


def test_a_failing_save_to_a_new_directory_leaves_nothing(quantized, tmp_path, with_backend):
    failing = with_backend(FailingSave, quantized)
    with pytest.raises(OSError):
        failing.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_checksums_cover_files_in_sub_directories(quantized, tmp_path, with_backend):
    nested = with_backend(NestedSave, quantized)
    nested.save(tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / MANIFEST).read_text())
    assert "variables/data.bin" in manifest["files"]
    load(tmp_path / "q")
    (tmp_path / "q" / "variables" / "data.bin").write_bytes(b"\x00\x01\x03")
    with pytest.raises(ModelError, match=r"data.bin does not match its checksum"):
        load(tmp_path / "q")


def test_a_backend_reporting_files_it_did_not_write_is_an_error(quantized, tmp_path, with_backend):
    lying = with_backend(LyingSave, quantized)
    with pytest.raises(ModelError, match=r"did not write: \['model.onnx'\]"):
        lying.save(tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(quantized, tmp_path) -> Path:
    return quantized.save(tmp_path / "q")


def test_a_tampered_file_is_refused(saved):
    layout = json.loads((saved / "layout.json").read_text())
    layout["layers"][0]["relu"] = False
    (saved / "layout.json").write_text(json.dumps(layout))
    with pytest.raises(ModelError, match=r"layout.json does not match its checksum"):
        load(saved)


def test_a_missing_file_is_refused(saved):
    (saved / "weights.npz").unlink()
    with pytest.raises(ModelError, match=r"weights.npz is listed in inc.json but missing"):
        load(saved)


def test_a_directory_without_manifest_is_not_a_saved_model(tmp_path):
    with pytest.raises(ModelError, match=r"inc\.json is missing"):
        load(tmp_path)


def rewrite_manifest(saved: Path, **changes: Any) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest.update(changes)
    (saved / MANIFEST).write_text(json.dumps(manifest))


def test_a_damaged_manifest_is_refused(saved):
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load(saved)
    (saved / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ModelError, match="JSON object"):
        load(saved)


def test_a_manifest_without_its_entries_is_refused(saved):
    rewrite_manifest(saved, files=None)
    with pytest.raises(ModelError, match="'files'"):
        load(saved)


def test_another_format_version_is_refused(saved):
    rewrite_manifest(saved, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelError, match=f"format_version {FORMAT_VERSION + 1}"):
        load(saved)


def test_paths_outside_the_directory_are_refused(saved, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    rewrite_manifest(saved, files={"../secret.txt": sha256(secret)})
    with pytest.raises(ModelError, match="outside the model directory"):
        load(saved)


def test_a_save_for_a_backend_not_installed_says_what_to_install(saved):
    rewrite_manifest(saved, backend="pytorch")
    with pytest.raises(BackendNotAvailable, match="pip install inc-torch"):
        load(saved)


UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("code ran")
    return "payload"


class Payload:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_record_unpickling, ())


def test_load_never_unpickles(saved):
    """A weights file carrying a pickle (with a valid checksum) must not run its code."""
    with np.load(saved / "weights.npz") as arrays:
        content = dict(arrays)
    content["w0"] = np.array([Payload()], dtype=object)
    np.savez(saved / "weights.npz", **content)
    manifest = json.loads((saved / MANIFEST).read_text())
    rewrite_manifest(
        saved, files={**manifest["files"], "weights.npz": sha256(saved / "weights.npz")}
    )
    with pytest.raises(ValueError, match="allow_pickle"):
        load(saved)
    assert UNPICKLED == []


def test_a_damaged_plan_is_refused(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["plan"]["ops"]["fc1"]["activation"]["bits"] = 7
    rewrite_manifest(saved, plan=manifest["plan"])
    with pytest.raises(ModelError, match="damaged plan"):
        load(saved)


def test_an_earlier_save_with_the_users_files_added_is_not_replaced(quantized, saved):
    (saved / "NOTES.md").write_text("my notes")
    before = tree(saved)
    with pytest.raises(ModelError, match=r"files the earlier inc save did not write \(NOTES.md\)"):
        quantized.save(saved)
    assert tree(saved) == before


def test_an_earlier_save_with_a_damaged_manifest_is_not_replaced(quantized, saved):
    (saved / MANIFEST).write_text("{")
    before = tree(saved)
    with pytest.raises(ModelError, match="is damaged"):
        quantized.save(saved)
    assert tree(saved) == before
