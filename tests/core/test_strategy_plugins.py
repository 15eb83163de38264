"""Strategies are plugins: one registry, built-in classes the source of config's names, and a
strategy from another distribution (``tests/core/strategy_dist``, an installed
``inc-strategy-demo`` with an ``inc.strategies`` entry point) usable by name with no core edit."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core import config as config_module
from inc_core.errors import ConfigError
from inc_core.strategy import Strategy
from inc_core.strategy import registry as strategies
from inc_core.strategy.mse import MseStrategy

from .tuning_backend import Scripted, calib_batches, toy_net

DIST = Path(__file__).parent / "strategy_dist"


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``inc-strategy-demo`` on the path, as ``pip install`` would put it."""
    monkeypatch.syspath_prepend(str(DIST))
    importlib.invalidate_caches()
    strategies.reset()
    yield
    monkeypatch.undo()
    importlib.invalidate_caches()
    sys.modules.pop("inc_strategy_demo", None)
    strategies.reset()


def test_config_names_come_from_the_strategy_classes():
    assert tuple(s.name for s in strategies.BUILTIN) == config_module.STRATEGIES
    assert all(strategies.get(name).name == name for name in config_module.STRATEGIES)


def test_probe_need_is_said_by_the_class():
    wanting = {s.name for s in strategies.BUILTIN if s.needs_probe}
    assert wanting == {"mse", "mse_v2", "sensitivity"}
    assert issubclass(strategies.get("sensitivity"), MseStrategy.__mro__[1])


def test_not_installed_strategy_is_not_allowed():
    strategies.reset()
    with pytest.raises(ConfigError, match=r"strategy='last_first' is not allowed; allowed: 'auto'"):
        TuningCriterion(strategy="last_first")


@pytest.mark.usefixtures("installed", "toy_backend")
def test_installed_strategy_runs_by_name(tmp_path: Path):
    scripted = Scripted([1.0, 0.5, 0.5, 0.5, 1.0, 0.5])
    conf = PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01),
        tuning_criterion=TuningCriterion(strategy="last_first", objective="accuracy"),
    )
    result = quantization.fit(
        toy_net(), conf, calib_dataloader=calib_batches(), eval_func=scripted, workspace=tmp_path
    )
    # the default plan, then each op in fp32 alone from the last op back: this class's order
    fp32 = [tuple(p.float_ops()) for p in scripted.plans[1:]]
    assert fp32 == [(), ("add",), ("mm",), ("conv2",), ("conv1",)]
    assert result.report["tuning"]["strategy"] == "last_first"
    assert result.plan.float_ops() == ["conv2"]


@pytest.mark.usefixtures("installed")
def test_installed_strategy_options_are_checked(tmp_path: Path):
    assert strategies.get("last_first").options == ("skip_default",)
    assert "last_first" in strategies.available()


@pytest.mark.usefixtures("installed")
def test_broken_plugin_is_skipped_and_named(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="inc_core.strategy.registry"):
        assert "not_a_strategy" not in strategies.available()
    assert "skipping strategy not_a_strategy" in caplog.text
    assert "inc_strategy_demo.NotAStrategy is not a subclass of inc_core.strategy.Strategy" in (
        strategies.skipped()["not_a_strategy"]
    )
    with pytest.raises(ConfigError, match=r"strategy='not_a_strategy' is installed but failed to load"):
        TuningCriterion(strategy="not_a_strategy")


def test_registration_checks_the_contract():
    class Nameless(Strategy):
        def search(self):  # type: ignore[override]
            yield from ()

    with pytest.raises(TypeError, match=r"Nameless must set class attribute 'name'"):
        strategies.register(Nameless)

    class Unfinished(Strategy):
        name = "unfinished"

    with pytest.raises(TypeError, match=r"\('unfinished'\) does not implement: search"):
        strategies.register(Unfinished)

    class Shadow(Strategy):
        name = "basic"

        def search(self):  # type: ignore[override]
            yield from ()

    with pytest.raises(TypeError, match=r"'basic' is an inc strategy's name"):
        strategies.register(Shadow)
