"""The documentation site (mkdocs.yml, docs/): it builds with --strict, its Python examples
run as written, and its references name every setting and every command-line option."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from sprout.cli import build_parser
from sprout.config import SETTINGS_GROUPS, Settings, settings_by_group
from tests.support.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
PAGES = sorted(DOCS.glob("*.md"))
#: Written separately and added to the nav by hand; every other page must be in the nav.
NOT_IN_NAV = {"architecture.md"}


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in PAGES:
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", _read(page), re.S)):
            blocks.append((f"{page.name}-block{i}", code))
    return blocks


BLOCKS = _python_blocks()


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n#{{1,{level}}} ", body, maxsplit=1)[0]


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify, code spans unwrapped)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", _read(page), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M)}


def test_docs_have_python_examples():
    assert PAGES and BLOCKS


@pytest.mark.slow  # a subprocess each; some start a server
@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_docs_python_example_runs(code, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


@pytest.mark.slow  # a subprocess
def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed (it is in the dev extra)")
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (site / "index.html").is_file()
    assert sorted(p.name for p in (site / "img").glob("*.png")) == sorted(
        p.name for p in (DOCS / "img").glob("*.png")
    )


def test_the_nav_lists_every_page():
    config = yaml.safe_load(_read(REPO_ROOT / "mkdocs.yml"))
    assert config["site_name"] == "Sprout" and config["theme"]["name"] == "material"
    assert config["strict"] is True

    def files(entries):
        for entry in entries:
            value = entry if isinstance(entry, str) else next(iter(entry.values()))
            if isinstance(value, list):
                yield from files(value)
            else:
                yield value

    nav = list(files(config["nav"]))
    assert len(nav) == len(set(nav))
    assert [f for f in nav if not (DOCS / f).is_file()] == []
    assert sorted({p.name for p in PAGES} - NOT_IN_NAV - set(nav)) == []


def test_images_and_page_links_resolve():
    broken = []
    for page in [*PAGES, README]:
        text = re.sub(r"```.*?```", "", _read(page), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve()
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_the_configuration_reference_names_every_setting():
    text = _read(DOCS / "configuration.md")
    missing = [f.name for f in dataclasses.fields(Settings) if f"`{f.name}`" not in text]
    assert missing == []


def test_the_configuration_reference_lists_each_setting_under_its_group():
    """One section per group (a ``##`` or ``###`` heading ending in the group's name as code),
    in the groups' order, whose table rows are exactly that group's settings."""
    text = _read(DOCS / "configuration.md")
    headings = re.findall(r"^(#{2,3} .*\(`(\w+)`\))$", text, re.M)
    assert [group for _, group in headings] == list(SETTINGS_GROUPS)
    for heading, group in headings:
        rows = re.findall(r"^\| `(\w+)` \|", _section(text, heading), re.M)
        assert sorted(rows) == sorted(settings_by_group()[group]), heading


def _commands(parser: argparse.ArgumentParser, prefix: str = "sprout"):
    """(``sprout cmd [action]``, its parser) for every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, f"{prefix} {name}")


def test_the_command_line_reference_names_every_command_and_option():
    text = _read(DOCS / "cli.md")
    missing = []
    for command, parser in _commands(build_parser()):
        level = "##" if command.count(" ") == 1 else "###"
        heading = f"{level} `{command}`"
        if f"\n{heading}\n" not in text:
            missing.append(heading)
            continue
        section = _section(text, heading)
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and f"`{option}" not in section:
                    missing.append(f"{command} {option}")
    assert missing == []
