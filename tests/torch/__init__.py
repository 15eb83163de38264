import pytest

pytest.importorskip("torch", reason="the PyTorch tests need torch (requirements/torch.txt)")
