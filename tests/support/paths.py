"""Where the repository is, for tests that read its files (README.md, docs/, pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

#: The repository root (tests/support/paths.py is two levels below it).
REPO_ROOT = Path(__file__).resolve().parents[2]
