"""The layering of docs/ARCHITECTURE.md, checked on every import of the tree.

The table between the ``import-rules`` markers of docs/ARCHITECTURE.md is the one statement of
who may import whom; this test reads it, so the document and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# The domain does no I/O: none of these may be imported there, even inside a function.
IO_MODULES = (
    "asyncio",
    "asyncpg",
    "psycopg",
    "psycopg_pool",
    "aiokafka",
    "redis",
    "boto3",
    "botocore",
    "httpx",
    "requests",
    "urllib.request",
    "socket",
    "subprocess",
    "fastapi",
    "starlette",
    "torch",
    "diffusers",
    "prometheus_client",
    "eventsourcing.postgres",
)


def import_rules() -> dict[str, frozenset[str]]:
    text = DOC.read_text()
    table = text.split("<!-- import-rules: begin -->")[1].split("<!-- import-rules: end -->")[0]
    rules: dict[str, frozenset[str]] = {}
    for line in table.strip().splitlines()[2:]:  # after the header and its rule
        package, _what, allowed = (cell.strip() for cell in line.strip("|").split("|"))
        rules[package.strip("`")] = frozenset(re.findall(r"`([a-z_]+)`", allowed))
    return rules


RULES = import_rules()


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every absolute import of ``path`` (line, module), nested ones included."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_table_names_every_package_of_the_tree() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(RULES), "docs/ARCHITECTURE.md's import table and the tree differ"
    for package, allowed in RULES.items():
        assert allowed <= set(RULES), f"{package} may import an unknown package"
        assert package not in allowed


@pytest.mark.parametrize("package", sorted(RULES))
def test_no_import_runs_against_the_layering(package: str) -> None:
    allowed = RULES[package] | {package}
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources(package)
        for line, module in imports(path)
        if module.split(".")[0] in RULES and module.split(".")[0] not in allowed
    ]
    assert wrong == [], f"{package} may import only {sorted(RULES[package])}"


def test_the_domain_does_no_io() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources("domain")
        for line, module in imports(path)
        if any(module == io or module.startswith(io + ".") for io in IO_MODULES)
    ]
    assert wrong == []


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    # The checker itself: a projection that imports a workflow is reported.
    module = tmp_path / "upward.py"
    module.write_text("def f():\n    from workflows.settler import Settler\n")
    found = [m for _, m in imports(module) if m.split(".")[0] not in RULES["projections"]]
    assert found == ["workflows.settler"]
