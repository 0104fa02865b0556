"""The command line's layout: one module of :mod:`sprout.cli` per top-level command, and
nothing below the command line importing it."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sprout.cli import build_parser
from sprout.cli.app import SUBCOMMAND_MODULES
from tests.support.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "sprout"
CLI = PACKAGE / "cli"


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _funcs(parser: argparse.ArgumentParser) -> Iterator[tuple[str, object]]:
    """(command path, func) of ``parser`` and every parser below it that sets ``func``."""
    if "func" in parser._defaults:
        yield parser.prog, parser._defaults["func"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _funcs(sub)


COMMANDS = _commands(build_parser())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_registered_by_the_module_named_after_it(name: str) -> None:
    module = f"sprout.cli.{name}"
    assert module in SUBCOMMAND_MODULES
    assert (CLI / f"{name}.py").is_file()
    funcs = list(_funcs(COMMANDS[name]))
    assert funcs, f"{name}: no parser sets func"
    for prog, func in funcs:
        # A large command may keep part of itself in sprout.cli.<name>_<part> (ledger_integrity).
        owner = func.__module__  # type: ignore[attr-defined]
        assert owner == module or owner.startswith(f"{module}_"), (prog, owner)


def test_every_command_module_registers_its_command() -> None:
    assert sorted(SUBCOMMAND_MODULES) == sorted(f"sprout.cli.{name}" for name in COMMANDS)
    assert len(set(SUBCOMMAND_MODULES)) == len(SUBCOMMAND_MODULES)


def _imports_cli(tree: ast.AST) -> list[int]:
    """Lines of ``tree`` that import :mod:`sprout.cli` or name it for a dynamic import."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }

    def is_cli(name: str) -> bool:
        return name == "sprout.cli" or name.startswith("sprout.cli.")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hit = any(is_cli(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            hit = node.level == 0 and (
                is_cli(node.module or "")
                or (node.module == "sprout" and any(a.name == "cli" for a in node.names))
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            hit = id(node) not in docstrings and is_cli(node.value.strip())
        else:
            hit = False
        if hit:
            lines.append(node.lineno)
    return lines


def test_nothing_outside_the_cli_package_imports_it() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if CLI in path.parents:
            continue
        text = path.read_text(encoding="utf-8")
        lines = _imports_cli(ast.parse(text, filename=str(path)))
        lines += [
            n
            for n, line in enumerate(text.splitlines(), 1)
            if "from sprout import cli" in line or "import sprout.cli" in line
        ]
        offenders += [f"{path.relative_to(REPO_ROOT)}:{n}" for n in sorted(set(lines))]
    assert offenders == []


def test_the_scan_finds_an_import() -> None:
    code = '"""Docs may name sprout.cli."""\nimport os\n\ndef f():\n    from sprout.cli import x\n'
    assert _imports_cli(ast.parse(code)) == [5]
    assert _imports_cli(ast.parse("from sprout import cli\n")) == [1]
    assert _imports_cli(ast.parse("m = 'sprout.cli.poll'\n")) == [1]


def test_building_the_parser_imports_nothing_heavy() -> None:
    code = (
        "import sys; from sprout.cli import build_parser; build_parser(); "
        "heavy = ['numpy', 'fastapi', 'uvicorn', 'apscheduler', 'torch', 'sklearn', 'sqlalchemy']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
