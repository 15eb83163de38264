"""Every code block of the getting-started pages runs, in the tox env of its framework.

A page's ``python`` blocks are joined in order into one script (as a reader pasting them
would) and run by this env's interpreter in an empty directory; its ``bash`` blocks run after
them there, except ``pip install`` lines, which are checked instead: each names a distribution
of ``packages/`` and extras it declares, in every env. A page's code runs only in the env of its
framework (``ENV_OF_PAGE``; other envs do not collect it), so no env skips a page.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "getting-started"

# page -> the tox env whose framework it uses (None: no framework, runs in every env)
ENV_OF_PAGE: dict[str, str | None] = {
    "install.md": None,
    "examples.md": None,
    "onnx.md": "ort",
    "pytorch.md": "torch",
    "lightning.md": "torch",
    "transformers.md": "torch",
    "keras.md": "tf",
    "mxnet.md": "mxnet",
}
# what a page needs importable when it runs outside tox (no env name to go by)
MODULES_OF_ENV = {
    "ort": ("inc_ort", "onnxruntime", "sklearn"),
    "torch": ("inc_torch", "torch", "lightning", "transformers", "sklearn"),
    "tf": ("inc_tf", "tensorflow", "sklearn"),
    "mxnet": ("inc_mxnet", "mxnet", "sklearn"),
}
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


def blocks(page: Path) -> list[tuple[str, int, str]]:
    """(language, line number, code) of each fenced block of ``page``."""
    text = page.read_text()
    return [(m[1], text.count("\n", 0, m.start()) + 2, m[2]) for m in FENCE.finditer(text)]


def current_env() -> str | None:
    """The tox env running us: tox's variable, else the venv's folder under ``.tox``."""
    if name := os.environ.get("TOX_ENV_NAME"):
        return name
    prefix = Path(sys.prefix)
    return prefix.name if prefix.parent.name == ".tox" else None


def _runs_here(env: str) -> bool:
    here = current_env()
    if here is not None:
        return here == env
    from importlib.util import find_spec

    return all(find_spec(m) is not None for m in MODULES_OF_ENV[env])


def _distributions() -> dict[str, set[str]]:
    """Distribution name -> its extras, for every package of ``packages/``."""
    found = {}
    for pyproject in ROOT.glob("packages/*/pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        found[project["name"]] = set(project.get("optional-dependencies", {}))
    return found


def _check_pip_line(line: str, where: str) -> None:
    dists = _distributions()
    for word in shlex.split(line)[2:]:
        if word.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_./-]+)(?:\[([\w,-]+)\])?(?:[<>=!~].*)?", word)
        assert m, f"{where}: cannot read requirement {word!r}"
        name, extras = m[1], m[2]
        if name.startswith("packages/"):
            name = "inc-" + name.removeprefix("packages/inc-").rstrip("/")
        if name not in dists:
            continue  # a third-party package (torch, lightning, ...): pip finds it on PyPI
        unknown = set((extras or "").split(",")) - dists[name] - {""}
        assert not unknown, (
            f"{where}: {name} has no extra {sorted(unknown)}; it has {sorted(dists[name])}"
        )


def test_every_page_is_mapped_to_an_env() -> None:
    pages = {p.name for p in PAGES.glob("*.md")}
    assert pages == set(ENV_OF_PAGE), (
        f"map each getting-started page to its env: {sorted(pages ^ set(ENV_OF_PAGE))}"
    )


@pytest.mark.parametrize("name", sorted(ENV_OF_PAGE))
def test_page_blocks_are_run_or_checked(name: str) -> None:
    found = blocks(PAGES / name)
    others = {lang for lang, _, _ in found} - {"python", "bash", "text"}
    assert not others, (
        f"{name}: code blocks in {sorted(others)} are not run; use python or bash (text for output)"
    )
    for lang, line, code in found:
        for k, command in enumerate(code.splitlines()):
            if lang == "bash" and command.startswith("pip install"):
                _check_pip_line(command.split("#")[0], f"docs/getting-started/{name}:{line + k}")


#: the pages whose code this env runs: its framework's, and those needing none
PAGES_HERE = sorted(name for name, env in ENV_OF_PAGE.items() if env is None or _runs_here(env))


@pytest.mark.parametrize("name", PAGES_HERE)
def test_page_code_runs(name: str, tmp_path: Path) -> None:
    found = blocks(PAGES / name)
    python = [(line, code) for lang, line, code in found if lang == "python"]
    shell = [(line, code) for lang, line, code in found if lang == "bash"]
    if python:
        script = "".join(f"# docs/getting-started/{name}:{line}\n{code}\n" for line, code in python)
        (tmp_path / "page.py").write_text(script)
        run = subprocess.run(
            [sys.executable, "page.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900
        )
        assert run.returncode == 0, (
            f"{name}'s python blocks failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
        )
    bin_dir = str(Path(sys.executable).parent)
    for line, code in shell:
        commands = [c for c in code.splitlines() if c.strip() and not c.startswith("pip install")]
        if not commands:
            continue
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(commands)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")},
        )
        assert run.returncode == 0, (
            f"docs/getting-started/{name}:{line} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )
