"""The packages of src/ import one way, config -> data -> model -> engine -> training/evaluation -> what
combines them: a module may import its own package and those its package sits on, never one above it
(imports inside functions included)."""

from __future__ import annotations

import ast

from tests.conftest import REPO

BELOW: dict[str, set[str]] = {"utils": set(), "config": {"utils"}}
BELOW["data"] = {"config"} | BELOW["config"]
BELOW["models"] = {"data"} | BELOW["data"]
BELOW["engine"] = {"models"} | BELOW["models"]  # what training, evaluation and export all use
BELOW["training"] = {"engine"} | BELOW["engine"]
BELOW["reporting"] = {"utils"}
BELOW["evaluation"] = {"engine", "reporting"} | BELOW["engine"]
BELOW["deploy"] = {"evaluation"} | BELOW["evaluation"]
BELOW["experiments"] = {"training", "evaluation"} | BELOW["evaluation"]
BELOW["optimization"] = {"experiments"} | BELOW["experiments"] | BELOW["training"]
BELOW["sweeps"] = {"optimization"} | BELOW["optimization"]
BELOW["cli"] = {"sweeps", "deploy"} | BELOW["sweeps"]


def _imported_packages(path) -> set[str]:
    packages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        packages |= {name.split(".")[1] for name in names if name.startswith("src.") and name.count(".") >= 1}
    return packages


def test_no_package_imports_one_above_it():
    upward = []
    for path in sorted((REPO / "src").glob("*/**/*.py")):
        package = path.relative_to(REPO / "src").parts[0]
        allowed = BELOW[package] | {package}
        upward += [f"{path.relative_to(REPO)} imports src.{p}" for p in sorted(_imported_packages(path) - allowed)]
    assert not upward, "\n".join(upward)


def test_every_package_has_its_place():
    packages = {p.name for p in (REPO / "src").iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(BELOW)
