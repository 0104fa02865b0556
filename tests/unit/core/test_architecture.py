"""The shape of the package: what may import what, and docs that name what exists.

The import contracts themselves (layers, no cycles) are import-linter's, run by ``.ci/lint``;
these tests add the rules it cannot express.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
PACKAGE = ROOT / "sprout"
#: Third-party packages heavy enough (or optional enough) to import only when used.
HEAVY = {
    "alembic", "apscheduler", "cryptography", "fastapi", "httpx", "litellm", "matplotlib",
    "numpy", "opentelemetry", "pynvml", "requests", "scipy", "sklearn", "sqlalchemy",
    "starlette", "torch", "torchao", "tqdm", "transformers", "uvicorn",
}  # fmt: skip
#: Each command imports its modules when it runs, so that ``sprout --help`` stays fast.
LAZY_PACKAGES = ("sprout.cli",)


def _module_path(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _target(module: str, node: ast.Import | ast.ImportFrom) -> str:
    if isinstance(node, ast.Import):
        return node.names[0].name
    if node.level:
        parts = module.split(".")[: -node.level]
        return ".".join([*parts, node.module] if node.module else parts)
    return node.module or ""


def _imports(module: str, nodes: Iterable[ast.AST]) -> list[tuple[int, str]]:
    """``(line, target)`` of the imports among ``nodes``: each module imported, and for a
    from-import each name too (it may be a submodule)."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _target(module, node)
            found += [(node.lineno, target)]
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


@functools.cache
def _top_level_imports(module: str) -> tuple[str, ...]:
    path = _module_path(module)
    if path is None:
        return ()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # `if TYPE_CHECKING:` blocks are skipped: they never run.
    return tuple(target for _, target in _imports(module, tree.body))


@functools.cache
def is_heavy(module: str) -> bool:
    """Whether importing ``module`` imports a heavy dependency, through everything its import
    runs: its packages' ``__init__`` and their top-level imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.split(".")[0] in HEAVY:
            return True
        if not current.startswith("sprout") or _module_path(current) is None:
            continue  # the standard library, or an attribute named in a from-import
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages run first
        todo += _top_level_imports(current)
    return False


def light_local_imports(path: Path, module: str) -> list[str]:
    """Function-local imports in ``path`` of Sprout modules that import nothing heavy."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    target = _target(module, node)
                    if target.startswith("sprout") and not is_heavy(target):
                        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                        found.append(f"{where}:{node.lineno} imports {target}")
    return found


def test_function_local_imports_are_for_heavy_dependencies_only() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if not module.startswith(LAZY_PACKAGES):
            offenders += light_local_imports(path, module)
    assert offenders == []


def test_the_rule_tells_light_from_heavy(tmp_path: Path) -> None:
    assert is_heavy("sprout.ledger.store")  # SQLAlchemy at its top
    assert not is_heavy("sprout.accounting")
    source = tmp_path / "example.py"
    source.write_text(
        "def f():\n    from sprout.accounting import carbon_g\n"
        "    from sprout.ledger.store import Ledger\n",
        encoding="utf-8",
    )
    assert light_local_imports(source, "sprout.example") == [
        "example.py:2 imports sprout.accounting"
    ]


ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|exc):`~?(sprout(?:\.\w+)+)`")
PATH = re.compile(r"(?<![\w./])(?:sprout|tests|benchmarks)/[\w/]+\.py\b")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize(
    "where",
    ["sprout", "docs"],
)
def test_cross_references_name_what_exists(where: str) -> None:
    files = sorted((ROOT / where).rglob("*.py" if where == "sprout" else "*.md"))
    if where == "docs":
        files.append(ROOT / "README.md")
    stale = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        stale += [f"{path.name}: {ref}" for ref in ROLE.findall(text) if not _resolves(ref)]
        stale += [f"{path.name}: {p}" for p in PATH.findall(text) if not (ROOT / p).exists()]
    assert stale == []


def _all_imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every import in ``path``, function-local and ``TYPE_CHECKING`` ones included."""
    return _imports(module, ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


def _private_owner(target: str) -> str | None:
    """The package that owns ``target``'s first private module (``a.b._c`` -> ``a.b``)."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if (
            part.startswith("_")
            and not part.startswith("__")
            and _module_path(".".join(parts[: i + 1]))
        ):
            return ".".join(parts[:i])
    return None


def test_private_modules_are_imported_only_inside_their_package() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for lineno, target in _all_imports(path, module):
            owner = _private_owner(target)
            if owner is not None and not (module == owner or module.startswith(owner + ".")):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports {target}")
    assert offenders == []


def test_the_privacy_rule_finds_an_outside_import() -> None:
    assert _private_owner("sprout.ledger._rows.encode") == "sprout.ledger"
    assert _private_owner("sprout.ledger.store") is None
    assert _private_owner("sprout.ledger.__init__") is None
