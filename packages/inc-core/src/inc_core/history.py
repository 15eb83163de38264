"""The tuning history file: written atomically after every trial, read back to resume.

Used by ``tuning`` (and the trial table in ``report``); the trial record is ``trial.Trial``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .space import QuantPlan
from .trial import Trial

FILENAME = "tuning_history.json"
FORMAT = 2


@dataclass
class Baseline:
    """The fp32 model's measurements (not a trial)."""

    accuracy: float
    latency: float | None = None
    size: int | None = None
    #: relative spread of repeated latency measurements of the fp32 model (timing noise)
    noise: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "latency": self.latency,
            "size": self.size,
            "noise": self.noise,
        }


def fingerprint(
    ops: list[tuple[str, str]],
    config: Mapping[str, Any],
    *,
    weights: str | None = None,
    calibration: str | None = None,
    evaluation: str | None = None,
    eval_data: str | None = None,
) -> dict[str, Any]:
    """What must match for a history to be resumed: the model's ops and weights, the config
    (except the budget, ``max_trials`` and ``timeout``, which a user may raise when resuming),
    the calibration data and the evaluation (who evaluates, and its first batch). A part that
    could not be digested is None and is not compared."""
    conf = json.loads(json.dumps(config, default=str))
    conf.get("tuning_criterion", {}).pop("max_trials", None)
    conf.get("tuning_criterion", {}).pop("timeout", None)
    blob = json.dumps(ops, sort_keys=True)
    return {
        "ops": {"count": len(ops), "digest": hashlib.sha256(blob.encode()).hexdigest()[:16]},
        "config": conf,
        "weights": weights,
        "calibration": calibration,
        "evaluation": evaluation,
        "eval_data": eval_data,
    }


_WHAT = {
    "weights": "the model's weights differ (same ops, other values)",
    "calibration": "the calibration data differ",
    "eval_data": "the first evaluation batch differs",
}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between a history's fingerprint and this run's, in words."""
    out = []
    before, now = stored.get("ops", {}), current["ops"]
    if before != now:
        out.append(
            f"the model's ops differ ({before.get('count')} ops then, {now['count']} now, "
            "or other names/types)"
        )
    old_conf, new_conf = _flat(stored.get("config", {})), _flat(current["config"])
    for key in sorted(set(old_conf) | set(new_conf)):
        if old_conf.get(key) != new_conf.get(key):
            out.append(f"config {key} was {old_conf.get(key)!r}, now {new_conf.get(key)!r}")
    if stored.get("evaluation") != current["evaluation"] and None not in (
        stored.get("evaluation"),
        current["evaluation"],
    ):
        out.append(f"the evaluation was {stored['evaluation']}, now {current['evaluation']}")
    for key, words in _WHAT.items():
        then, now_value = stored.get(key), current[key]
        if then is not None and now_value is not None and then != now_value:
            out.append(words)
    return out


def history_path(location: str | os.PathLike[str]) -> Path:
    """A workspace folder or a history file -> the history file."""
    path = Path(location)
    return path if path.suffix == ".json" else path / FILENAME


class History:
    """The trial table of one tuning run, as a JSON file rewritten after every trial."""

    def __init__(self, path: Path, fingerprint: Mapping[str, Any], strategy: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.strategy = strategy
        self.baseline: Baseline | None = None
        self.trials: list[Trial] = []
        self.elapsed = 0.0

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "strategy": self.strategy,
            "elapsed": self.elapsed,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "trials": [t.to_dict() for t in self.trials],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, default=str)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, location: str | os.PathLike[str], expected: Mapping[str, Any]) -> History:
        """Read a history to resume from; it must come from the same model, data and config."""
        path = history_path(location)
        if not path.is_file():
            raise ConfigError(f"resume_from={str(location)!r}: no tuning history at {path}")
        text = path.read_text(errors="replace")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"resume_from: {path} line {exc.lineno} is not valid JSON ({exc.msg}); the file "
                "is damaged: delete it (or choose another workspace) to tune afresh"
            ) from exc
        if not isinstance(data, dict):
            raise _damaged(path, text, [], "is not a JSON object")
        if data.get("format") != FORMAT:
            raise ConfigError(
                f"resume_from: {path} has format {data.get('format')!r}, this inc reads {FORMAT}"
                " (format 1 did not record the weights and data it was made with, so its trials "
                "cannot be trusted); delete it or choose another workspace to tune afresh"
            )
        _check_schema(path, text, data)
        stored = data["fingerprint"]
        differ = changes(stored, expected)
        if differ:
            raise ConfigError(
                f"resume_from: {path} was written for another run: {'; '.join(differ)}. Its "
                "trials would score a model they never saw. Only max_trials and timeout may "
                "change when resuming; choose another workspace (or delete the file) to tune "
                "afresh"
            )
        history = cls(path, expected, str(data.get("strategy", "")))
        base = data.get("baseline")
        if base is not None:
            history.baseline = Baseline(
                base["accuracy"], base.get("latency"), base.get("size"), base.get("noise", 0.0)
            )
        history.trials = [Trial.from_dict(t) for t in data["trials"]]
        history.elapsed = float(data.get("elapsed", 0.0))
        return history


# -- the file's schema, checked before anything in it is used --------------------------------

_NUMBER = (int, float)
_TRIAL_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    # key: (allowed types, may be null)
    "index": ((int,), False),
    "phase": ((str,), False),
    "accuracy": (_NUMBER, True),
    "loss": (_NUMBER, True),
    "accuracy_met": ((bool,), False),
    "passed": ((bool,), False),
    "slower": ((bool,), True),
    "latency": (_NUMBER, True),
    "size": ((int,), True),
    "error": ((str,), True),
    "seconds": (_NUMBER, True),
    "plan": ((dict,), False),
}


def _kind(types: tuple[type, ...], nullable: bool) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    words = " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))
    if types == _NUMBER:
        words = "a number"
    if dict in types:
        words = "an object"
    return f"{words} or null" if nullable else words


def _check_schema(path: Path, text: str, data: dict[str, Any]) -> None:
    """Every value the resume reads has the type ``save`` writes; else name the file and line."""
    top: dict[str, tuple[tuple[type, ...], bool]] = {
        "fingerprint": ((dict,), False),
        "elapsed": (_NUMBER, True),
        "baseline": ((dict,), True),
        "trials": ((list,), False),
    }
    for key, (types, nullable) in top.items():
        _expect(path, text, [key], data.get(key), types, nullable, key in data)
    base = data["baseline"]
    if base is not None:
        _expect(path, text, ["baseline", "accuracy"], base.get("accuracy"), _NUMBER, False, True)
    for i, trial in enumerate(data["trials"]):
        if not isinstance(trial, dict):
            raise _damaged(path, text, ["trials", i], "is not an object")
        for key, (types, nullable) in _TRIAL_KEYS.items():
            _expect(path, text, ["trials", i, key], trial.get(key), types, nullable, key in trial)
        try:
            QuantPlan.from_dict(trial["plan"])
        except Exception as exc:
            raise _damaged(
                path, text, ["trials", i, "plan"], f"is not a plan ({type(exc).__name__}: {exc})"
            ) from exc


def _expect(
    path: Path,
    text: str,
    where: list[Any],
    value: Any,
    types: tuple[type, ...],
    nullable: bool,
    present: bool,
) -> None:
    if not present:
        raise _damaged(path, text, where[:-1], f"lacks {where[-1]!r}")
    if value is None and nullable:
        return
    wrong_bool = isinstance(value, bool) and bool not in types
    if wrong_bool or not isinstance(value, types):
        raise _damaged(path, text, where, f"is {value!r}; expected {_kind(types, nullable)}")


def _damaged(path: Path, text: str, where: list[Any], problem: str) -> ConfigError:
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where).lstrip(".")
    line = _line_of(text, where)
    return ConfigError(
        f"resume_from: {path} line {line}: {name or 'the file'} {problem}; the tuning history "
        "is damaged: delete it (or choose another workspace) to tune afresh"
    )


def _line_of(text: str, where: list[Any]) -> int:
    """The line where the value at ``where`` (keys and list indices) starts in the JSON text."""
    decoder = json.JSONDecoder()
    pos = _skip(text, 0)
    try:
        for step in where:
            if text[pos] == "{":
                pos = _skip(text, pos + 1)
                while text[pos] != "}":
                    key, pos = decoder.raw_decode(text, pos)
                    pos = _skip(text, _skip(text, pos) + 1)  # past ':'
                    if key == step:
                        break
                    pos = _after_value(decoder, text, pos)
                else:
                    break
            elif text[pos] == "[" and isinstance(step, int):
                pos = _skip(text, pos + 1)
                for _ in range(step):
                    pos = _after_value(decoder, text, pos)
            else:
                break
    except (ValueError, IndexError):
        pass
    return text.count("\n", 0, pos) + 1


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _after_value(decoder: json.JSONDecoder, text: str, pos: int) -> int:
    """Past the value at ``pos`` and the comma after it."""
    _, pos = decoder.raw_decode(text, pos)
    pos = _skip(text, pos)
    if pos < len(text) and text[pos] == ",":
        pos = _skip(text, pos + 1)
    return pos
