"""The engine's three wings keep to their rules (DESIGN.md, "Layout").

- ``hub/`` never imports ``admin/``, and importing any ``hubstock.hub`` module loads no
  rattler, conda_lock or uv: the hub node needs no solver;
- ``admin/`` and ``hub/`` read the root only through ``store/``: nobody else spells the
  records' file names.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "hubstock"
HUB_MODULES = sorted(  # every module of the hub wing, its subpackages' too (hubstock.hub.doctor.job...)
    ".".join(("hubstock", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
    for p in (SRC / "hub").rglob("*.py")
    if p.parent != SRC / "hub" or p.stem != "__init__"
)
SOLVER_MODULES = ("rattler", "conda_lock", "uv")


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ["hubstock", *path.relative_to(SRC).parent.parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("module", HUB_MODULES)
def test_importing_a_hub_module_loads_no_solver(module):
    code = (
        f"import sys, json, {module}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {SOLVER_MODULES!r} "
        f"or m.startswith('hubstock.admin'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == [], f"importing {module} loaded them"


def test_the_hub_wing_never_imports_the_admin_wing():
    for py in (SRC / "hub").rglob("*.py"):
        bad = {m for m in _imports(py) if m.startswith("hubstock.admin")}
        assert not bad, f"{py.relative_to(SRC)} imports {sorted(bad)}"


def test_the_store_imports_neither_wing():
    for py in (SRC / "store").rglob("*.py"):
        bad = {m for m in _imports(py) if m.startswith(("hubstock.admin", "hubstock.hub"))}
        assert not bad, f"{py.relative_to(SRC)} imports {sorted(bad)}"


@pytest.mark.parametrize("name", ["manifest.json", ".hubstock-build.json", ".hubstock-complete", "audit.log"])
def test_only_the_store_spells_the_roots_file_names(name):
    for py in SRC.rglob("*.py"):
        if py.parent.name == "store":
            continue
        assert f'"{name}"' not in py.read_text(), f"{py.relative_to(SRC)} spells {name!r}: use hubstock.store"


def test_only_the_store_reads_the_current_link():
    for py in SRC.rglob("*.py"):
        if py.parent.name == "store":
            continue
        text = py.read_text()
        assert "readlink(" not in text and not re.search(r"\b(root|r)\.current\b", text), (
            f"{py.relative_to(SRC)} resolves a current link itself: use hubstock.store"
        )
