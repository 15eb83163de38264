"""The int8 FX model runs inference through a frozen TorchScript trace of itself (no Python
graph walk per call), with the same outputs, and drops the trace when its weights change."""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch

from inc_core import PostTrainingQuantConfig, load, quantization
from inc_torch import frozen
from inc_torch.info import info_of


def _fit(cnn, calib):
    # guards off: the default guards run the returned model on a calibration batch, which
    # would leave a trace of that shape before these tests count them
    conf = PostTrainingQuantConfig(approach="static", guards=False)
    return quantization.fit(cnn, conf, calib_dataloader=calib)


def test_inference_runs_a_frozen_trace_with_the_graphs_outputs(cnn, calib, digits):
    q = _fit(cnn, calib)
    fast = frozen.of(q.model)
    assert fast is not None and info_of(q.model).mode == "fx"
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        out = q.model(x[:64])
        graph = fast.graph_forward(x[:64])
        assert torch.equal(out, graph)
        assert len(fast.traces) == 1 and not fast.error
        q.model(x[:64])
        q.model(x[:10])  # another shape: its own trace, not the batch-64 one reused
        assert len(fast.traces) == 2
        assert torch.equal(q.model(x[:10]), fast.graph_forward(x[:10]))
    # with autograd on (or in train mode) the Python graph runs, nothing is traced
    assert torch.equal(q.model(x[:5]), graph[:5])
    assert len(fast.traces) == 2


def test_new_weights_or_a_copy_do_not_reuse_a_stale_trace(cnn, calib, digits, tmp_path):
    q = _fit(cnn, calib)
    x = torch.from_numpy(digits.x_test[:64])
    with torch.no_grad():
        before = q.model(x)
    fast = frozen.of(q.model)
    assert fast.traces
    other = _fit(copy.deepcopy(cnn).apply(_perturb), calib)
    q.model.load_state_dict(other.model.state_dict())
    assert not fast.traces  # dropped: it froze the old weights
    with torch.no_grad():
        after = q.model(x)
        assert torch.equal(after, other.model(x)) and not torch.equal(after, before)
    clone = copy.deepcopy(q.model)  # a copy runs its Python graph, with the same outputs
    with torch.no_grad():
        assert torch.equal(clone(x), after)
    q.save(tmp_path)
    with torch.no_grad():
        assert torch.equal(load(tmp_path, model=copy.deepcopy(cnn)).model(x), after)
        assert torch.equal(load(tmp_path).model(x), after)  # the TorchScript archive


def _perturb(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Linear):
        with torch.no_grad():
            module.weight.mul_(1.5)


class Scores(NamedTuple):
    logits: torch.Tensor
    label: torch.Tensor


class _Pair(torch.nn.Module):
    """Returns a NamedTuple, which a trace turns into a plain tuple."""

    def __init__(self, cnn: torch.nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> Scores:
        logits = self.cnn(x)
        return Scores(logits, logits.argmax(1))


def test_a_trace_that_changes_the_output_type_is_not_used(cnn, calib, digits):
    q = _fit(_Pair(copy.deepcopy(cnn)), calib)
    x = torch.from_numpy(digits.x_test[:8])
    with torch.no_grad():
        out = q.model(x)
    fast = frozen.of(q.model)
    assert fast is not None and not fast.traces and fast.error
    assert type(out) is Scores
