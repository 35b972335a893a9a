"""``hubstock doctor`` on a real site whose kernels run on a site interpreter and on Lmod modules.

The site (built here with the real ``hubstock lock``, ``build`` and ``publish``): a venv server env
on Debian's python3, a venv kernel env ``python`` on a *copy* of that python reached through a
module ``python/X.Y`` of a real Lmod module tree of its own (``rigs.lmod_rig.write_module_tree``,
so changing it touches no other test's tree), and a module env ``r`` on that tree's ``R/X.Y``.
doctor runs its probe job on the local Slurm rig as a test account, without a hub (the hub's
checks are warnings then). A healthy site has no FAIL; a module that the node no longer has is a
FAIL of ``node.modules`` naming the kernel, the module and Lmod's message; a changed interpreter
is a FAIL of ``node.interpreter`` with both sha256. On the hub node (the same machine here) both
are only warnings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jupyterhub
import pytest
from rigs.hubsite import cli, free_port
from rigs.lmod_rig import ModuleTree, write_module_tree
from rigs.slurm_rig import SlurmRig, create_user, remove_user
from tests.helpers import need_root

from hubstock.store.builds import current_build
from hubstock.store.root import Root

pytestmark = pytest.mark.hub

USER = f"hsenv{secrets.token_hex(2)}"  # the probe job's test account: a new one each run


@dataclass(frozen=True)
class EnvSite:
    dir: Path
    root: Path
    tree: ModuleTree
    interp: Path  # the copy of python3 that module python/X.Y gives
    rig: SlurmRig

    def doctor(self) -> tuple[int, dict[str, dict]]:
        """``hubstock doctor --json``: its exit code and its checks by name; no job may be left."""
        env = {k: v for k, v in os.environ.items() if k not in ("HUBSTOCK_ROOT", "HUBSTOCK_SITE")}
        cmd = [sys.executable, "-m", "hubstock", "--site", str(self.dir), "doctor", "--json"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
        assert self.rig.jobs(active_only=True) == [], self.rig.job_states()
        assert p.stdout.strip(), p.stderr
        checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
        assert checks["node.job"]["status"] == "ok", json.dumps(checks["node.job"])
        return p.returncode, checks


def failures(checks: dict[str, dict]) -> dict[str, dict]:
    return {n: c for n, c in checks.items() if c["status"] == "FAIL"}


def _settings(root: Path, state: Path, rig: SlurmRig, init: Path, tree: ModuleTree) -> str:
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    ports = [free_port() for _ in range(3)]
    return f"""\
root = "{root}"

[hub]
ip = "127.0.0.1"
port = {ports[0]}
hub_ip = "127.0.0.1"
hub_port = {ports[1]}
proxy_api_port = {ports[2]}
state_dir = "{state}"

[spawner]
scheduler = "slurm"
exec_prefix = "{runuser} -u {{username}} --"
environment = {{SLURM_CONF = "{rig.slurm_conf}"}}

[[spawner.queues]]
name = "debug"
max_cpus = 1
max_memory = "1G"
max_walltime = "00:30:00"

[spawner.defaults]
queue = "debug"
memory = "1G"
walltime = "00:30:00"

[publish]
default_kernel = "python-stock"

[modules]
init = "{init}"
use = ["{tree.modulepath}"]

[doctor]
user = "{USER}"
timeout = 180
"""


def _kernel(argv: list[str], name: str, language: str, env: str) -> str:
    spec = {"argv": argv, "display_name": name, "language": language, "metadata": {"hubstock": {"env": env}}}
    return json.dumps(spec)


@pytest.fixture(scope="module")
def env_site(hub_workdir: Path, slurm_rig: SlurmRig, lmod_tree) -> Iterator[EnvSite]:
    need_root("the doctor tests")
    init, _shared = lmod_tree  # Lmod and R are installed; this site writes a module tree of its own
    work = hub_workdir / "doctor-envs"
    work.mkdir(mode=0o755)
    system_python = os.path.realpath(shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3")
    interp = work / "python" / Path(system_python).name
    interp.parent.mkdir(mode=0o755)
    shutil.copy2(system_python, interp)
    interp.chmod(0o755)
    tree = write_module_tree(work / "lmod", python=str(interp))

    site = work / "site"
    files = {
        "envs/server/env.toml": 'kind = "venv"\n[python]\npath = "/usr/bin/python3"\n',
        "envs/server/requirements.in": f"jupyterhub=={jupyterhub.__version__}\njupyterlab\nbatchspawner==1.3.0\n",
        "envs/python/env.toml": f'kind = "venv"\n[python]\nmodule = "{tree.python_module}"\n',
        "envs/python/requirements.in": "ipykernel\n",
        "envs/r/env.toml": f'kind = "module"\nmodules = ["{tree.r_module}"]\n',
        "kernels/python-stock/kernel.json": _kernel(
            ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "Python 3 (stock)",
            "python",
            "python",
        ),
        "kernels/r/kernel.json": _kernel(
            ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"], "R", "R", "r"
        ),
        "hubstock.toml": _settings(work / "root", work / "state", slurm_rig, init, tree),
    }
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (work / "state").mkdir(mode=0o700)
    for step in ("init-root", "lock", "build", "publish"):
        cli(site, step)
    homes = work / "homes"
    homes.mkdir(mode=0o755)
    create_user(USER, secrets.token_hex(8), homes)
    try:
        yield EnvSite(dir=site, root=work / "root", tree=tree, interp=interp, rig=slurm_rig)
    finally:
        remove_user(USER)


@contextlib.contextmanager
def moved_away(path: Path) -> Iterator[None]:
    aside = path.with_name(path.name + ".away")
    path.rename(aside)
    try:
        yield
    finally:
        aside.rename(path)


@contextlib.contextmanager
def changed_binary(path: Path) -> Iterator[str]:
    """``path`` replaced (by a rename: the file may be running) by a copy with one more byte,
    as a site's update of its Python would change it; yields the new sha256."""
    original = path.with_name(path.name + ".orig")
    new = path.with_name(path.name + ".new")
    shutil.copy2(path, new)
    with open(new, "ab") as f:
        f.write(b"\0")
    os.link(path, original)
    os.replace(new, path)
    try:
        yield hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        os.replace(original, path)


def test_venv_and_module_envs_that_the_node_has_are_ok(env_site: EnvSite):
    code, checks = env_site.doctor()
    assert failures(checks) == {} and code == 0, json.dumps(failures(checks), indent=1)
    for name in ("generation.interpreter", "generation.modules", "node.interpreter", "node.modules"):
        assert checks[name]["status"] == "ok", json.dumps(checks[name])
    link = env_site.tree.python_bin / "python3"
    assert f"/usr/bin/python3 (server), {link} (python)" in checks["node.interpreter"]["detail"]
    modules = checks["node.modules"]["detail"]
    assert (
        f"{env_site.tree.python_module} (python-stock)" in modules
        and f"{env_site.tree.r_module} (r)" in modules
    )


def test_a_module_missing_on_the_node_is_a_fail_naming_the_kernel_the_module_and_lmods_message(
    env_site: EnvSite,
):
    r = env_site.tree.r_module
    with moved_away(env_site.tree.r_modulefile):
        code, checks = env_site.doctor()
    bad = failures(checks)
    assert list(bad) == ["node.modules"] and code == 1, json.dumps(bad, indent=1)
    detail = bad["node.modules"]["detail"]
    assert detail.startswith("kernel 'r' cannot start on ")
    assert f'module {r} is unknown there (Lmod: The following module(s) are unknown: "{r}")' in detail
    assert bad["node.modules"]["fix"].startswith(
        "install the module on the compute nodes, or fix [modules] use"
    )
    hub = checks["generation.modules"]  # the hub node runs no kernels: only a warning there
    assert hub["status"] == "warn" and f"kernel 'r': module load {r} fails here" in hub["detail"]


def test_a_changed_interpreter_is_a_fail_with_both_hashes(env_site: EnvSite):
    bid = current_build(Root(env_site.root), "python")
    assert bid is not None
    old = hashlib.sha256(env_site.interp.read_bytes()).hexdigest()
    with changed_binary(env_site.interp) as new:
        code, checks = env_site.doctor()
    bad = failures(checks)
    assert list(bad) == ["node.interpreter"] and code == 1, json.dumps(bad, indent=1)
    detail = bad["node.interpreter"]["detail"]
    link = env_site.tree.python_bin / "python3"
    assert detail.startswith(f"the interpreter {link} of env 'python' build {bid[:8]} differs on ")
    assert f"its real binary {env_site.interp} has sha256 {new[:12]}..., not {old[:12]}..." in detail
    assert detail.endswith("the site changed its Python")
    assert bad["node.interpreter"]["fix"] == (
        "rebuild with `hubstock build python` and publish, or restore the interpreter."
    )
    hub = checks["generation.interpreter"]  # the hub node runs no kernels: only a warning there
    assert hub["status"] == "warn" and "differs on the hub node" in hub["detail"]
