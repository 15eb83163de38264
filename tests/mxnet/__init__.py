import pytest

pytest.importorskip("mxnet", reason="the mxnet tests need mxnet==1.9.1 (tox -e mxnet)")
