"""Parsed infrastructure files for tests/infra (no services needed).

A helper module, not a conftest: the tests import it, so they also run with --noconftest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "infra" / "terraform"


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == '"' and key[-1] == '"' else key


def normalize(value: Any) -> Any:
    """python-hcl2 (>= 5) keeps the quotes of string literals and block labels: drop them."""
    if isinstance(value, dict):
        return {
            _unquote(k): normalize(v)
            for k, v in value.items()
            if k not in ("__comments__", "__is_block__")
        }
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


@dataclass
class Resource:
    type: str
    name: str
    body: dict[str, Any]
    module: str  # "root" or the module folder name
    file: Path

    @property
    def address(self) -> str:
        return f"{self.module}:{self.type}.{self.name}"


@dataclass
class Config:
    """Every .tf file under infra/terraform, parsed and normalised."""

    files: dict[Path, dict[str, Any]] = field(default_factory=dict)

    def module_of(self, path: Path) -> str:
        rel = path.relative_to(TERRAFORM)
        return rel.parts[1] if rel.parts[0] == "modules" else "root"

    def blocks(self, kind: str, module: str | None = None) -> Iterator[tuple[str, Any, Path]]:
        for path, doc in self.files.items():
            if module is not None and self.module_of(path) != module:
                continue
            for item in doc.get(kind, []):
                for name, body in item.items():
                    yield name, body, path

    def resources(self, rtype: str | None = None, module: str | None = None) -> list[Resource]:
        out = []
        for path, doc in self.files.items():
            mod = self.module_of(path)
            if module is not None and mod != module:
                continue
            for item in doc.get("resource", []):
                for t, named in item.items():
                    if rtype is not None and t != rtype:
                        continue
                    for n, body in named.items():
                        out.append(Resource(t, n, body, mod, path))
        return out

    def resource(self, rtype: str, name: str, module: str | None = None) -> Resource:
        found = [r for r in self.resources(rtype, module) if r.name == name]
        assert len(found) == 1, f"expected exactly one {rtype}.{name}, found {len(found)}"
        return found[0]

    def locals(self, module: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for path, doc in self.files.items():
            if self.module_of(path) == module:
                for item in doc.get("locals", []):
                    merged.update(item)
        return merged

    def variables(self, module: str) -> dict[str, dict[str, Any]]:
        return {name: body for name, body, _ in self.blocks("variable", module)}

    def outputs(self, module: str) -> dict[str, dict[str, Any]]:
        return {name: body for name, body, _ in self.blocks("output", module)}

    def module_calls(self) -> dict[str, dict[str, Any]]:
        return {name: body for name, body, _ in self.blocks("module", "root")}

    def modules(self) -> set[str]:
        return {self.module_of(p) for p in self.files}


def load_hcl(path: Path) -> dict[str, Any]:
    hcl2 = pytest.importorskip("hcl2")
    with path.open() as f:
        parsed: dict[str, Any] = normalize(hcl2.load(f))
    return parsed


@lru_cache(maxsize=1)
def load_config() -> Config:
    cfg = Config()
    for path in sorted(TERRAFORM.rglob("*.tf")):
        if ".terraform" in path.parts:
            continue
        cfg.files[path] = load_hcl(path)
    assert cfg.files, "no .tf files found"
    return cfg


@lru_cache(maxsize=1)
def load_tfvars() -> dict[str, dict[str, Any]]:
    return {p.stem: load_hcl(p) for p in sorted((TERRAFORM / "envs").glob("*.tfvars"))}
