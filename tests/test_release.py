"""The release, per machine role: a wheel built from this checkout, installed into a fresh
environment for each role (``uv venv`` + ``uv pip install 'WHEEL[extra]'``), as the README's
"Which extra on which machine" says. The hub node gets no solver or installer (no py-rattler, uv
or conda-lock, counted by listing what is installed); each role's commands that belong to
another role say which extra to install, in one sentence.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rigs.hubsite import test_cache as suite_cache

from hubstock.admin.uv import uv_command
from hubstock.store.rootmark import init_root

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SOLVERS = {"py-rattler", "uv", "conda-lock"}


def _env() -> dict[str, str]:
    return {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR") or str(suite_cache() / "uv")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [*uv_command(), "build", "--wheel", "--out-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        env=_env(),
    )
    (whl,) = out.glob("hubstock-*.whl")
    return whl


def _install(wheel: Path, where: Path, extra: str) -> tuple[Path, dict[str, str]]:
    """A fresh environment with the wheel and ``extra``; its bin folder and what it has (name -> version)."""
    uv = uv_command()
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(where)], check=True, env=_env())
    python = str(where / "bin" / "python")
    spec = f"{wheel}[{extra}]" if extra else str(wheel)
    subprocess.run([*uv, "pip", "install", "--quiet", "--python", python, spec], check=True, env=_env())
    listed = subprocess.run(
        [*uv, "pip", "list", "--python", python, "--format", "freeze"],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout
    have = dict(line.split("==", 1) for line in listed.splitlines() if "==" in line)
    return where / "bin", {name.lower().replace("_", "-"): v for name, v in have.items()}


def _size_mb(env: Path) -> float:
    total = sum(p.lstat().st_size for p in env.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def _hubstock(bindir: Path, *args: str, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bindir / "hubstock"), "--site", str(site), *args], capture_output=True, text=True, env=_env()
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    (site / "envs" / "py").mkdir(parents=True)
    (site / "envs" / "py" / "env.toml").write_text('kind = "venv"\n\n[python]\npath = "/usr/bin/python3"\n')
    (site / "envs" / "py" / "requirements.in").write_text("six\n")
    # the hub's state here, not the default /var/lib/hubstock-hub: doctor loads the hub's config,
    # which makes that folder (and the proxy's token)
    (site / "hubstock.toml").write_text(f'root = "{site / "root"}"\n\n[hub]\nstate_dir = "{site / "state"}"\n')
    init_root(site / "root")  # as `hubstock init-root` makes it
    return site


def test_the_hub_node_gets_no_solver_and_the_admin_commands_say_what_to_install(wheel, tmp_path, site):
    bindir, have = _install(wheel, tmp_path / "hub", "hub")
    print(f"\nhub role: {len(have)} packages, {_size_mb(tmp_path / 'hub'):.0f} MB")
    assert {"hubstock", "jupyterhub", "batchspawner"} <= set(have), have
    assert not SOLVERS & set(have), SOLVERS & set(have)
    # the hub's own code loads without them: its config, spawners, hooks, the stock page
    code = "import hubstock.hub.config, hubstock.hub.spawner, hubstock.hub.hooks, hubstock.hub.stock_page"
    subprocess.run([str(bindir / "python"), "-c", code], check=True)
    for command in ("build", "publish", "verify"):
        res = _hubstock(bindir, command, site=site)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "install them with `pip install 'hubstock[admin]'`" in res.stderr, res.stderr
    res = _hubstock(bindir, "status", site=site)  # reading the root needs no tools
    assert res.returncode == 0, res.stderr
    res = _hubstock(bindir, "doctor", "--no-job", site=site)  # the hub node's own check runs (and fails here)
    assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout, res.stdout + res.stderr


def test_the_admin_machine_gets_its_tools_and_no_hub(wheel, tmp_path, site):
    bindir, have = _install(wheel, tmp_path / "admin", "admin")
    print(f"\nadmin role: {len(have)} packages, {_size_mb(tmp_path / 'admin'):.0f} MB")
    assert {"hubstock", "py-rattler", "uv", "jupyter-client"} <= set(have), have
    assert not {"jupyterhub", "batchspawner", "conda-lock"} & set(have)
    res = _hubstock(bindir, "units", site=site)
    assert res.returncode == 2 and "pip install 'hubstock[hub]'" in res.stderr, res.stderr
    for command in ("lock", "build"):  # a venv env locks and builds with the admin extra alone
        res = _hubstock(bindir, command, site=site)
        assert res.returncode == 0, res.stderr
    assert "py: " in res.stdout and "(built)" in res.stdout, res.stdout
