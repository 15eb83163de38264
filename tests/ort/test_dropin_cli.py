"""The drop-in ``inc_ort.quantize_static`` / ``quantize_dynamic`` and the ``inc-ort`` CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

import inc_ort
from inc_core import PostTrainingQuantConfig, scheme
from inc_ort import cli

from .conftest import fp32_tensor, top1


def cnn_path_model(path):
    return onnx.load(str(path))


class DigitsReader(CalibrationDataReader):
    """An onnxruntime calibration reader, exactly as onnxruntime's examples write one."""

    def __init__(self, batches) -> None:
        self.data = iter([{"image": x} for x, _ in batches])

    def get_next(self):
        return next(self.data, None)


def q_scale(model, tensor):
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}[q.input[1]]


def test_quantize_static_drop_in_with_onnxruntime_arguments(
    cnn_path, calib, digits, fp32_top1, tmp_path
):
    out = tmp_path / "int8.onnx"
    inc_ort.quantize_static(
        str(cnn_path),
        str(out),
        DigitsReader(calib),
        quant_format=inc_ort.QuantFormat.QDQ,
        per_channel=True,
        activation_type=inc_ort.QuantType.QUInt8,
        weight_type=inc_ort.QuantType.QInt8,
        nodes_to_exclude=["fc1"],
    )
    model = onnx.load(str(out))
    by_name = {n.name: n for n in model.graph.node}
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert by_name["fc1"].input[1] in floats and by_name["conv1"].input[1] not in floats
    x = fp32_tensor(
        cnn_path_model(cnn_path), "relu0_out", np.concatenate([b[0] for b in calib])[:100]
    )
    ref = scheme.compute_qparams(
        x.min(), x.max(), dtype="uint8", scheme="asym", convention="onnxrt"
    )
    assert q_scale(model, "relu0_out") == np.float32(ref.scale)
    assert top1(out, digits) >= fp32_top1 * 0.99


def test_quantize_static_qoperator_and_op_types(cnn, calib, tmp_path):
    out = tmp_path / "qop.onnx"
    q = inc_ort.quantize_static(
        cnn, out, calib, quant_format=inc_ort.QuantFormat.QOperator, op_types_to_quantize=["Conv"]
    )
    counts = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    # the speed guard may keep a conv in fp32 on a loaded machine; it then says so in the report
    slower = {row["op"] for row in q.report["fallback"] if row["why"] == "slower"}
    assert counts["QLinearConv"] == 2 - len(slower & {"conv1", "conv2"})
    assert counts["Gemm"] == 2


def test_quantize_static_takes_an_inc_config(cnn, calib, tmp_path):
    conf = PostTrainingQuantConfig(approach="static", recipes={"gemm_to_matmul": True})
    q = inc_ort.quantize_static(cnn, tmp_path / "conf.onnx", calib, conf=conf)
    assert "Gemm" not in {n.op_type for n in q.model.graph.node}
    assert (tmp_path / "conf.onnx").is_file()


def test_quantize_dynamic_drop_in(cnn, tmp_path, digits, fp32_top1):
    out = tmp_path / "dyn.onnx"
    inc_ort.quantize_dynamic(cnn, out, per_channel=True, use_external_data_format=True)
    assert (tmp_path / "dyn.onnx.data").is_file()
    counts = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert (
        counts["MatMulInteger"] == 2 and counts["Conv"] == 3
    )  # ConvInteger is slower than fp32 here
    assert top1(out, digits) >= fp32_top1 * 0.99


def test_cli_quantize_static_from_npz(cnn_path, calib, digits, fp32_top1, tmp_path, capsys):
    data = tmp_path / "calib.npz"
    np.savez(data, image=np.concatenate([b[0] for b in calib]))
    out = tmp_path / "cli" / "int8.onnx"
    code = cli.main(
        [
            "quantize",
            str(cnn_path),
            str(out),
            "--calib",
            str(data),
            "--format",
            "QOperator",
            "--exclude",
            "fc1",
            "--report",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "3 of 4 ops int8" in printed
    assert re.search(r"batch \d+: fp32 [\d.]+ ms, int8 [\d.]+ ms", printed)
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.strip()}
    assert rows["conv1"][3] == "QLinearConv" and float(rows["conv1"][4]) > 15
    assert rows["fc1"][2] == "fp32" and rows["fc1"][-1] == "-"
    counts = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert counts["QLinearConv"] == 2
    assert top1(out, digits) >= fp32_top1 * 0.99


def test_cli_dynamic_and_errors(cnn_path, tmp_path, capsys):
    out = tmp_path / "dyn.onnx"
    assert cli.main(["quantize", str(cnn_path), str(out), "--approach", "dynamic"]) == 0
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(out)).graph.node}
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((4, 1, 8, 8), np.float32))
    assert cli.main(["quantize", str(cnn_path), str(tmp_path / "x.onnx"), "--calib", str(bad)]) == 2
    assert "pixels" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_console_script_is_installed(tmp_path):
    from pathlib import Path

    script = Path(sys.executable).parent / "inc-ort"
    assert script.is_file(), "pip install inc-ort creates the inc-ort console script"
    result = subprocess.run(
        [str(script), "quantize", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "--calib" in result.stdout


# -- an output path never overwrites the input (issue 13, item 1) ------------------------------


class CountingReader(CalibrationDataReader):
    """A reader that counts get_next calls: a refusal must come before any data is read."""

    def __init__(self, batches) -> None:
        self.inner = DigitsReader(batches)
        self.calls = 0

    def get_next(self):
        self.calls += 1
        return self.inner.get_next()


def _spellings(path, tmp_path, monkeypatch):
    """The input path as the output, spelled as a user might: same, relative, symlink, hard link."""
    import os

    link = tmp_path / "link.onnx"
    link.symlink_to(path)
    hard = tmp_path / "hard.onnx"
    os.link(path, hard)
    monkeypatch.chdir(path.parent)
    return [
        str(path),
        path.name,
        str(path.parent / ".." / path.parent.name / path.name),
        link,
        hard,
    ]


def _model_file(cnn, tmp_path):
    path = tmp_path / "m" / "m.onnx"
    path.parent.mkdir()
    onnx.save_model(cnn, str(path))
    return path


def test_quantize_static_refuses_to_write_over_its_input(cnn, calib, tmp_path, monkeypatch):
    import pytest

    from inc_core.errors import ConfigError

    path = _model_file(cnn, tmp_path)
    before = path.read_bytes()
    for output in _spellings(path, tmp_path, monkeypatch):
        reader = CountingReader(calib)
        with pytest.raises(ConfigError, match="would destroy the fp32 model"):
            inc_ort.quantize_static(str(path), output, reader)
        assert reader.calls == 0, f"{output}: the reader was read before the refusal"
        with pytest.raises(ConfigError, match="input model"):
            inc_ort.quantize_dynamic(path, output)
        assert path.read_bytes() == before


def test_cli_refuses_to_write_over_its_input(cnn, tmp_path, monkeypatch, capsys):
    path = _model_file(cnn, tmp_path)
    before = path.read_bytes()
    missing = tmp_path / "never-read.npz"  # were it read first, the error would name it
    for output in _spellings(path, tmp_path, monkeypatch):
        code = cli.main(["quantize", str(path), str(output), "--calib", str(missing)])
        err = capsys.readouterr().err
        assert code == 2 and "would destroy the fp32 model" in err, err
        assert path.read_bytes() == before


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_output_may_not_replace_the_inputs_external_data(cnn, calib, tmp_path):
    import pytest

    from inc_core.errors import ConfigError

    path = tmp_path / "ext.onnx"
    # onnx's external-data save rewrites the proto it is given: save copies of the fixture
    onnx.save_model(
        _copy(cnn), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    data = (tmp_path / "weights.bin").read_bytes()
    with pytest.raises(ConfigError, match=r"weights\.bin"):
        inc_ort.quantize_static(path, tmp_path / "weights.bin", DigitsReader(calib))
    # an external-data save of w.onnx writes w.onnx.data beside it: refused when that is the input's
    onnx.save_model(
        _copy(cnn), str(path), save_as_external_data=True, location="w.onnx.data", size_threshold=0
    )
    with pytest.raises(ConfigError, match="external data"):
        inc_ort.quantize_dynamic(path, tmp_path / "w.onnx", use_external_data_format=True)
    assert (tmp_path / "weights.bin").read_bytes() == data


def test_save_refuses_the_directory_holding_the_input_model(cnn, tmp_path):
    import pytest

    from inc_core.errors import ConfigError

    path = _model_file(cnn, tmp_path)
    before = path.read_bytes()
    q = inc_ort.quantize_dynamic(str(path), tmp_path / "int8.onnx")
    for target in (path.parent, tmp_path):
        with pytest.raises(ConfigError, match="contains the input model"):
            q.save(target)
    with pytest.raises(ConfigError, match="is the input model"):
        q.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]
    assert (q.save(tmp_path / "saved") / "inc.json").is_file()
