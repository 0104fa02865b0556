"""The README, the landing page: its Python examples run as written, its Quickstart is what CI
runs, its demo excerpt is what the demo prints, and what it repeats from the documentation
site (docs/) is the same there."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = README.parent / "docs"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_example_runs(code, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_second():
    section = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1]
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("sprout demo")
    # The second is CI's own script, which installs what the suite needs and runs all of it.
    assert commands[1] == "bash .ci/run"
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/pip install -q -e '.[dev]'" in ci and "-m pytest -q" in ci


def test_the_demo_excerpt_is_what_the_demo_prints(tmp_path):
    section = README.read_text(encoding="utf-8").split("## What the demo shows", 1)[1]
    excerpt = re.search(r"```\n(.*?)```", section, re.S).group(1).splitlines()
    out = subprocess.run(
        [sys.executable, "-m", "sprout.cli", "demo", "--db", f"sqlite:///{tmp_path / 'd.db'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    printed = set(out.stdout.splitlines())
    shown = [line for line in excerpt if line.strip() and line != "..."]
    assert len(shown) > 15
    assert [line for line in shown if line not in printed] == []


def test_the_readme_is_a_landing_page():
    # The manual lives in docs/; the README keeps the overview, one example of each kind,
    # the headline results and the links into the documentation.
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250
    assert len(BLOCKS) == 1
    for page in ["index", "getting-started", "configuration", "cli", "proxy", "results"]:
        assert f"(docs/{page}.md" in text


def _blocks(text: str) -> list[str]:
    """Tables and fenced blocks: the measured figures and printed output a page shows."""
    fenced = re.findall(r"```[a-z]*\n.*?```", text, re.S)
    tables = re.findall(r"(?:^\|.*\|\n)+", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    return fenced + tables


@pytest.mark.parametrize(
    ("section", "page"),
    [
        ("## Quickstart", "getting-started.md"),
        ("## What the demo shows", "getting-started.md"),
        ("## Results", "results.md"),
    ],
)
def test_what_the_readme_repeats_is_the_same_in_the_docs(section, page):
    text = README.read_text(encoding="utf-8").split(f"\n{section}\n", 1)[1]
    text = re.split(r"\n## ", text, maxsplit=1)[0]
    shown = _blocks(text)
    assert shown
    docs = (DOCS / page).read_text(encoding="utf-8")
    assert [block for block in shown if block not in docs] == []
