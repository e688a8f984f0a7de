"""The package's layout rules, checked on the source.

Data flows one way: data -> learn -> infer -> measure -> report, with the shell
(cli, demo, export and orchestration modules) on top and a few shared basics
(errors, atomic, config, and the run-directory contract and bundled model that
training and inference share: rundir, pretrained) below everything. A stage may import itself, the basics
and earlier stages, never a later one; data, measure and report never import
TensorFlow or Keras, so they load and test quickly without it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import bcseg

SRC = Path(bcseg.__file__).parent
STAGES = ["data", "learn", "infer", "measure", "report"]
BASICS = {"errors", "atomic", "config", "outputs", "folder_lock", "journal", "rundir", "pretrained"}
NO_TENSORFLOW = {"data", "measure", "report"}
HEAVY = ("tensorflow", "keras")


def _bcseg_imports(path: Path) -> list[tuple[int, str]]:
    """Every ``bcseg.*`` module (and heavy library) that ``path`` imports, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "bcseg":  # from bcseg import errors
                found += [(node.lineno, f"bcseg.{alias.name}") for alias in node.names]
    return found


def _home(module: str) -> str | None:
    """The stage (or basic) a ``bcseg.x.y`` module belongs to; None for the shell."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "bcseg":
        return None
    return parts[1] if parts[1] in STAGES or parts[1] in BASICS else None


def layout_violations(src: Path) -> list[str]:
    """Imports in ``src`` that break the layout rules, as 'file:line: why' strings."""
    problems = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if stage not in STAGES and stage not in BASICS:
            continue  # the shell may import anything
        for line, module in _bcseg_imports(path):
            where = f"{rel}:{line}"
            if module.split(".")[0] in HEAVY and stage in NO_TENSORFLOW | BASICS:
                problems.append(f"{where}: {stage} imports {module}")
            target = _home(module)
            if module.startswith("bcseg") and target is None and module != "bcseg":
                problems.append(f"{where}: {stage} imports the shell module {module}")
            elif target in STAGES and stage in BASICS:
                problems.append(f"{where}: basic module imports stage {module}")
            elif target in STAGES and STAGES.index(target) > STAGES.index(stage):
                problems.append(f"{where}: {stage} imports the later stage {module}")
    return problems


def test_source_keeps_the_layout_rules():
    assert layout_violations(SRC) == []


def test_layout_rules_catch_an_upward_import(tmp_path):
    # A copy of the package with one upward import and one TensorFlow import added
    # must fail: the rule test is not vacuous.
    for stage in ("data", "measure"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "__init__.py").write_text("")
    (tmp_path / "data" / "io.py").write_text("from bcseg.learn.models import unet\n")
    (tmp_path / "measure" / "metrics.py").write_text("def f():\n    import tensorflow\n")
    problems = layout_violations(tmp_path)
    assert any("data imports the later stage bcseg.learn.models" in p for p in problems)
    assert any("measure imports tensorflow" in p for p in problems)


def test_light_stages_import_without_tensorflow():
    modules = [m.name for m in pkgutil.walk_packages(bcseg.__path__, "bcseg.")
               if m.name.split(".")[1] in NO_TENSORFLOW]
    assert len(modules) >= 10
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_is_a_function_after_importing_every_submodule():
    # A lazily exported name must not be shadowed by a submodule of the same name
    # (``import bcseg.measure.evaluate`` once turned ``bcseg.measure.evaluate`` into a module).
    for module in pkgutil.walk_packages(bcseg.__path__, "bcseg."):
        importlib.import_module(module.name)
    for name in bcseg.__all__:
        value = getattr(bcseg, name)
        assert callable(value) and not isinstance(value, type(bcseg)), name


@pytest.mark.parametrize("name", sorted(bcseg.__all__))
def test_public_name_resolves(name):
    assert getattr(bcseg, name).__name__ == name
