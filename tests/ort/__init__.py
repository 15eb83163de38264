import pytest

pytest.importorskip("onnxruntime", reason="the ONNX Runtime tests need onnxruntime (tox -e ort)")
