"""The layout's rules, read from the imports: dependencies point one way, the states reach backends only
through the seam, and the light parts of the SDK import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def test_states_use_only_the_backends_seam() -> None:
    concrete = (
        "engine.backends.fireworks",
        "engine.backends.tinker",
        "engine.backends.vllm",
        "engine.local",
        "tinker",
    )
    assert violations("engine/states", concrete) == []


def test_the_lifecycle_machine_depends_on_nothing_above_it() -> None:
    above = (
        "engine.run",
        "engine.config",
        "engine.recipes",
        "engine.backends",
        "engine.states",
        "engine.local",
    )
    assert violations("engine/lifecycle", above) == []


def test_the_seam_and_the_generic_clients_know_no_vendor() -> None:
    assert violations("engine/backends/base.py", ("engine.backends.", "engine.local", "engine.run")) == []
    vendors = ("engine.backends.vllm", "engine.backends.tinker", "engine.local", "engine.run")
    assert violations("engine/sampling", vendors) == []
    assert violations("engine/weights", ("engine.run", "engine.local", "engine.backends.tinker")) == []


def test_backends_never_reach_into_the_run() -> None:
    assert violations("engine/backends", ("engine.run", "engine.states", "engine.config")) == []


@pytest.mark.parametrize(
    "module",
    [
        "engine",
        "engine.sampling",
        "engine.backends.fireworks",
        "engine.backends.base",
        "engine.weights.syncer",
        "engine.weights.names",
        "engine.run.orchestrator",
        "engine.run.sinks",
        "engine.run.run_metrics",
        "engine.report.html",
    ],
)
def test_light_imports_take_no_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"], f"{module} imports torch or transformers"
