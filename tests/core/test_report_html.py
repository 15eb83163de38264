"""report.html and ``python -m inc_core.report``: self-contained, the same tables, charts when
matplotlib (inc-core[report]) is installed and tables alone when it is not."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.report import REPORT_HTML, charts, model_sizes, write_html
from inc_core.report import html as report_html

_VOID = {"meta", "br", "img", "input", "link", "hr", "path", "use", "rect", "circle"}


class _Page(HTMLParser):
    """Tags, attributes and text of a page; fails on a closing tag that closes nothing open."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


def assert_self_contained(page: str, parsed: _Page) -> None:
    names = {tag for tag, _ in parsed.tags}
    assert not names & {"script", "link", "iframe", "img", "object", "embed"}, names
    for tag, attrs in parsed.tags:
        for key in ("src", "href", "xlink:href"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (
                f"<{tag} {key}={value!r}> leaves the page"
            )
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(?!#)", page), "a url() that is not a fragment of the page"


@pytest.fixture
def saved(mlp, blobs, calib_loader, tmp_path) -> tuple[Path, dict[str, Any]]:
    """A tuned model saved by q.save, its manifest with the sizes the save hook adds."""
    x, y = blobs

    def eval_func(model: Any) -> float:
        return float((model(x[200:]).argmax(1) == y[200:]).mean())

    conf = PostTrainingQuantConfig(
        approach="static",
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01),
        tuning_criterion=TuningCriterion(max_trials=4),
    )
    q = quantization.fit(
        mlp, conf, calib_dataloader=calib_loader, eval_func=eval_func, workspace=tmp_path / "ws"
    )
    out = q.save(tmp_path / "out")
    manifest = json.loads((out / "inc.json").read_text())
    manifest["sizes"] = model_sizes(out, manifest["files"])
    return out, manifest


def test_page_is_parseable_self_contained_and_shows_every_op_and_sqnr(saved, tmp_path):
    _, manifest = saved
    page_dir = tmp_path / "page"
    page_dir.mkdir()
    name = write_html(page_dir, manifest)
    page = (page_dir / name).read_text(encoding="utf-8")
    parsed = parse(page)
    assert_self_contained(page, parsed)
    text = " ".join(parsed.text)
    ops = manifest["op_report"]
    assert [row["op"] for row in ops] == ["fc1", "fc2"]
    for row in ops:
        assert row["op"] in text
        assert isinstance(row["sqnr_db"], float)
        assert f"{row['sqnr_db']:.1f}" in text
    # the tuning trials are there, the chosen one highlighted
    chosen = manifest["report"]["tuning"]["chosen"]
    marked = [attrs for tag, attrs in parsed.tags if tag == "tr" and attrs.get("class") == "marked"]
    assert chosen == 1 and len(marked) == 1
    assert "fp32 vs int8" in text and "int8 / fp32" in text


def test_without_matplotlib_the_page_has_the_tables_and_says_how_to_get_charts(
    saved, tmp_path, monkeypatch
):
    monkeypatch.setattr(charts, "available", lambda: False)
    page = report_html.render(saved[1])
    parsed = parse(page)
    assert_self_contained(page, parsed)
    assert "<svg" not in page
    assert 'pip install "inc-core[report]"' in page
    assert "per-op plan" in page and "fc1" in page


def test_a_chart_that_fails_costs_the_charts_only(saved, monkeypatch, caplog):
    def broken(facts: Any) -> list[tuple[str, str]]:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(charts, "available", lambda: True)
    monkeypatch.setattr(charts, "all_charts", broken)
    page = report_html.render(saved[1])
    parse(page)
    assert "could not be drawn" in page and "no fonts" in page and "fc2" in page
    assert "charts could not be drawn" in caplog.text


def test_with_matplotlib_the_page_has_the_charts_inline(saved):
    pytest.importorskip(
        "matplotlib", reason="the charts need matplotlib (inc-core[report]); tox -e pip-ort has it"
    )
    manifest = saved[1]
    page = report_html.render(manifest)
    parsed = parse(page)
    assert_self_contained(page, parsed)
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == 3  # fp32 vs int8, tuning trials, per-op SQNR
    titles = [attrs.get("aria-label") for tag, attrs in parsed.tags if tag == "figure"]
    assert titles == ["fp32 vs int8", "tuning trials", "per-op SQNR"]
    sqnr_chart = svgs[2]
    assert "fc1" in sqnr_chart and "fc2" in sqnr_chart  # op names are text, not glyph paths
    assert "chosen (trial 1)" in svgs[1] and "fp32 baseline" in svgs[1]
    assert report_html.render(manifest) == page  # the same model gives the same bytes


def test_the_terminal_report_prints_the_same_tables(saved):
    out_dir, manifest = saved
    result = subprocess.run(
        [sys.executable, "-m", "inc_core.report", str(out_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    text = result.stdout
    for title in ("fp32 vs int8", "run", "tuning trials (* = chosen)", "per-op plan"):
        assert f"\n{title}\n" in f"\n{text}"
    for row in manifest["op_report"]:
        line = next(line for line in text.splitlines() if line.startswith(row["op"] + " "))
        assert f"{row['sqnr_db']:.1f}" in line
    assert re.search(r"^1 +\S+.*\*pass", text, flags=re.M)
    int8 = manifest["sizes"]["int8_bytes"]
    assert int8 and f"{int8 / 1e6:.4g} MB" in text


def test_the_terminal_report_of_a_folder_inc_did_not_write_names_inc_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "inc_core.report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "inc.json is missing" in result.stderr


def test_sizes_count_the_model_files_not_the_report(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 300)
    (tmp_path / "inc.json").write_text("{}")
    (tmp_path / REPORT_HTML).write_text("<html></html>")
    fp32 = tmp_path / "fp32.onnx"
    fp32.write_bytes(b"\0" * 1200)
    sizes = model_sizes(tmp_path, ["model.bin", "inc.json", REPORT_HTML], [str(fp32)])
    assert sizes == {"fp32_bytes": 1200, "int8_bytes": 300}
    assert model_sizes(tmp_path, ["model.bin"]) == {"fp32_bytes": None, "int8_bytes": 300}


def test_save_writes_report_html_listed_and_checked_like_the_model(mlp, calib_loader, tmp_path):
    q = quantization.fit(
        mlp, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib_loader
    )
    out = q.save(tmp_path / "out")
    manifest = json.loads((out / "inc.json").read_text())
    assert REPORT_HTML in manifest["files"]
    assert manifest["sizes"]["int8_bytes"] > 0
    page = (out / REPORT_HTML).read_text(encoding="utf-8")
    assert_self_contained(page, parse(page))
    q.save(out)  # a second save over the first: report.html is inc's, not a foreign file
    assert (out / REPORT_HTML).is_file()
