"""The hexagon's import rules (DESIGN §1), read from the source with ``ast``.

- Only ``qzpay/adapters/`` may import a database driver, SQLAlchemy or a provider SDK.
- Adapters import the contracts and the domain, never the services or the facade.
- The core imports no adapter; ``bootstrap.py`` and ``cli.py`` are the composition roots that
  wire adapters in, so they may.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import qzpay

PACKAGE = Path(qzpay.__file__).parent
ROOT = PACKAGE.parent

INFRASTRUCTURE = ("sqlalchemy", "aiosqlite", "asyncpg", "stripe", "mercadopago")
CORE_ONLY = ("qzpay.services", "qzpay.billing", "qzpay.bootstrap")
COMPOSITION_ROOTS = {PACKAGE / "bootstrap.py", PACKAGE / "cli.py"}
CONFORMANCE = PACKAGE / "conformance"
# The suite reads databases raw (SQLAlchemy) and ships factories for our own adapters.
CONFORMANCE_RAW_VIEW = CONFORMANCE / "raw.py"
CONFORMANCE_FACTORIES = CONFORMANCE / "factories.py"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, with its line; relative imports made absolute.

    Imports inside functions count too, and ``from qzpay import services`` counts as
    importing ``qzpay.services``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _sources(where: Path = PACKAGE) -> list[Path]:
    return sorted(where.rglob("*.py"))


def _is_under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def _violations(paths: list[Path], forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    """One line per forbidden import, naming the file, the line and the module."""
    found: dict[tuple[Path, int], str] = {}
    for path in paths:
        for line, name in _imports(path, root):
            if _is_under(name, forbidden):
                found.setdefault((path, line), name)
    return [
        f"{path.relative_to(root)}:{line} imports {name}" for (path, line), name in found.items()
    ]


def _core() -> list[Path]:
    """Everything but the adapters and the conformance suite (a tool for adapter authors)."""
    outside = (PACKAGE / "adapters", CONFORMANCE)
    return [path for path in _sources() if not any(o in path.parents for o in outside)]


def test_the_sources_are_found() -> None:
    names = {path.relative_to(PACKAGE).as_posix() for path in _sources()}
    assert {"billing.py", "adapters/sqlite.py", "services/customers.py"} <= names


def test_only_adapters_import_drivers_sqlalchemy_or_provider_sdks() -> None:
    found = _violations(_core(), INFRASTRUCTURE)
    assert not found, "infrastructure imported outside qzpay/adapters/:\n" + "\n".join(found)


def test_adapters_never_import_services_or_the_facade() -> None:
    found = _violations(_sources(PACKAGE / "adapters"), CORE_ONLY)
    assert not found, "an adapter imports the core's services:\n" + "\n".join(found)


def test_the_core_imports_no_adapter_outside_the_composition_roots() -> None:
    core = [path for path in _core() if path not in COMPOSITION_ROOTS]
    found = _violations(core, ("qzpay.adapters",))
    assert not found, "the core imports an adapter:\n" + "\n".join(found)


def test_the_conformance_suite_tests_storage_through_the_port_only() -> None:
    suite = _sources(CONFORMANCE)
    found = _violations(suite, CORE_ONLY)
    found += _violations([p for p in suite if p != CONFORMANCE_FACTORIES], ("qzpay.adapters",))
    found += _violations(
        [p for p in suite if p not in (CONFORMANCE_RAW_VIEW, CONFORMANCE_FACTORIES)],
        INFRASTRUCTURE,
    )
    assert not found, "the conformance suite reaches past the storage port:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "forbidden", "reported"),
    [
        ("qzpay/services/x.py", "import sqlalchemy.orm\n", "sqlalchemy", "sqlalchemy.orm"),
        ("qzpay/services/x.py", "from stripe import StripeClient\n", "stripe", "stripe"),
        ("qzpay/x.py", "def f():\n    import aiosqlite\n", "aiosqlite", "aiosqlite"),
        (
            "qzpay/adapters/x.py",
            "from ..services import customers\n",
            "qzpay.services",
            "qzpay.services",
        ),
        ("qzpay/adapters/x.py", "from qzpay import services\n", "qzpay.services", "qzpay.services"),
        (
            "qzpay/services/x.py",
            "from ..adapters import memory\n",
            "qzpay.adapters",
            "qzpay.adapters",
        ),
    ],
)
def test_the_checker_names_the_file_and_the_import(
    tmp_path: Path, module: str, source: str, forbidden: str, reported: str
) -> None:
    path = tmp_path / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)

    found = _violations([path], (forbidden,), root=tmp_path)

    line = source.count("\n")
    assert found == [f"{module}:{line} imports {reported}"]
