"""The top-level namespace is small, and its three views of the names agree."""

from __future__ import annotations

import ast
from pathlib import Path

import sprout

INIT = Path(sprout.__file__)


def test_the_namespace_is_what_an_app_uses() -> None:
    assert len(sprout.__all__) <= 20
    for name in ("Controller", "Settings", "build_controller", "create_app", "Receipt"):
        assert name in sprout.__all__
    # Concrete plug-ins live in their subpackages.
    for name in ("TraceProvider", "OpenAIEngine", "NVMLMeter", "Ledger", "ReplayJudge"):
        assert name not in sprout.__all__


def test_type_checking_imports_match_the_lazy_table() -> None:
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    guarded = next(n for n in tree.body if isinstance(n, ast.If))
    imported = {
        alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == sprout._EXPORTS
    assert set(sprout.__all__) == {"__version__", *sprout._EXPORTS}
