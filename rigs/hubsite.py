"""A whole hubstock site on one machine: used by the hub and browser tests and by `nox -s demo`.

``build_site`` writes a site repository (this repository's ``spawner/``,
``hooks/`` and ``extensions/``, a server env, a stock Python kernel env) whose
channel is the offline test channel, then locks, builds and publishes it with the
real ``hubstock`` command. Given a module tree (``rigs/lmod_rig.py``), the site also
has the two other kinds of environment: a venv env (ipykernel from PyPI on the tree's
Python module) with its kernel :data:`VENV_KERNEL`, and a module env (the tree's R
module) with the shipped R kernel template, :data:`R_KERNEL`. ``hub_settings``
renders its ``hubstock.toml`` for a given scheduler and ports; ``start_hub`` runs
JupyterHub on it.

The site's ``[modules] use`` is its own ``modules/`` (as in the site kit), which
``build_site`` links to the tree: every ``hubstock.toml`` these functions write
keeps it, so the module env's lock stays fresh whatever hub settings a test writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import jupyterhub

from .channel import file_url
from .hub_rig import Hub, NetNamespace, ensure_chp

if TYPE_CHECKING:
    from .lmod_rig import ModuleTree

REPO = Path(__file__).resolve().parent.parent
KERNEL_NAME = "python-stock"
KERNEL_DISPLAY_NAME = "Python 3 (stock)"
#: the venv env (ipykernel from PyPI on the module tree's Python) and its kernel
VENV_ENV = "venv"
VENV_KERNEL = "python-venv"
VENV_DISPLAY_NAME = "Python 3 (venv)"
#: the module env (the tree's R module) and its kernel: this repository's kernels/r template
R_ENV = "r"
R_KERNEL = "r"
#: the site's module tree, relative to the site (``[modules] use``): a link to the rig's tree
SITE_MODULES = "modules"
#: a kernel for some Unix groups only (:func:`restricted_kernel`): the stock Python env's spec as
#: an env of its own, closed to a group, and its kernel
LICENSED_ENV = "licensed"
LICENSED_KERNEL = "python-licensed"
LICENSED_DISPLAY_NAME = "Licensed Python (stock)"
#: what the stock page tells the others of it (``[publish] restricted_note``)
RESTRICTED_NOTE = "Licensed software: ask research computing for access."


def tools_python(venv: Path) -> Path:
    """``[personal] tools``: a hubstock install (admin and hub extras) that users can run, made once
    in ``venv`` from the system's Python, as a site puts one on its shared storage (the tests' and
    the bench's own Python may be in root's home)."""
    from hubstock.admin.uv import uv_command

    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([*uv_command(), "venv", "-q", "--python", "/usr/bin/python3", str(venv)], check=True)
        subprocess.run(
            [*uv_command(), "pip", "install", "-q", "--python", str(py), f"{REPO}[admin,hub]"], check=True
        )
    return py


def tree_bytes(path: Path) -> int:
    """The bytes of the files under ``path``, each inode once, symlinks not counted (``du -b``'s sum)."""
    seen, size = set(), 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if (st.st_dev, st.st_ino) not in seen and not stat.S_ISLNK(st.st_mode):
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return size


def free_port(near: int = 0) -> int:
    """A free TCP port on 127.0.0.1: any one, or ``near`` itself if free, else the next free one above it."""
    for port in range(near, 65536) if near else [0]:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds it
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free TCP port from {near} up")


def test_cache() -> Path:
    return Path(os.environ.get("HUBSTOCK_TEST_CACHE") or Path.home() / ".cache" / "hubstock-tests")


def cli(site: Path, *args: str) -> str:
    """Run the real ``hubstock`` command on ``site``; raise with its output if it fails.

    uv's download cache is the test cache's (``UV_CACHE_DIR``, unless already set): PyPI's
    files are fetched once, not once per root."""
    env = {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR") or str(test_cache() / "uv")}
    res = subprocess.run(
        [sys.executable, "-m", "hubstock", "--site", str(site), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        raise RuntimeError(f"hubstock {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def py_env(demo_c: str) -> str:
    return f"dependencies:\n  - python\n  - demo-c {demo_c}\n  - pip:\n    - ipykernel\n"


def venv_kernel_spec(display_name: str = VENV_DISPLAY_NAME) -> dict:
    """The venv env's kernel template."""
    return {
        "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"hubstock": {"env": VENV_ENV, "check": "import ipykernel, sys; print(sys.prefix)"}},
    }


def add_module_kinds(site: Path, tree: ModuleTree) -> None:
    """Add the venv env (ipykernel on ``tree.python_module``) and the module env (``tree.r_module``)
    with their kernels to ``site``, and link the site's ``modules/`` to the tree (idempotent)."""
    link = site / SITE_MODULES
    if link.is_symlink() and link.readlink() != tree.modulepath:
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(tree.modulepath, target_is_directory=True)
    venv = site / "envs" / VENV_ENV
    if not venv.exists():
        venv.mkdir(parents=True)
        (venv / "env.toml").write_text(f'kind = "venv"\n\n[python]\nmodule = "{tree.python_module}"\n')
        (venv / "requirements.in").write_text("ipykernel\n")
    kernel = site / "kernels" / VENV_KERNEL / "kernel.json"
    if not kernel.exists():
        kernel.parent.mkdir(parents=True)
        kernel.write_text(json.dumps(venv_kernel_spec(), indent=1) + "\n")
    r = site / "envs" / R_ENV
    if not r.exists():
        r.mkdir(parents=True)
        (r / "env.toml").write_text(f'kind = "module"\nmodules = ["{tree.r_module}"]\n')
    if not (site / "kernels" / R_KERNEL).exists():  # the shipped template (and logos), on this env
        shutil.copytree(REPO / "kernels" / "r", site / "kernels" / R_KERNEL)
        spec = json.loads((REPO / "kernels" / "r" / "kernel.json").read_text())
        spec["metadata"]["hubstock"]["env"] = R_ENV
        (site / "kernels" / R_KERNEL / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")


def build_site(
    site: Path,
    root: Path,
    channel: Path,
    report: Callable[[str], None] | None = None,
    *,
    modules: ModuleTree | None = None,
) -> Path:
    """Write, lock, build and publish a site with a server env and a stock Python kernel (idempotent);
    with ``modules`` (a ``rigs.lmod_rig.ModuleTree``), also a venv and a module env with their
    kernels (:func:`add_module_kinds`).

    ``report`` gets each line ``hubstock build`` and ``publish`` print (``server: <id> (built)``,
    ``generation 0001 (unchanged)``...)."""
    for part in ("spawner", "hooks", "extensions"):
        if not (site / part).exists():
            shutil.copytree(REPO / part, site / part)
    server = site / "envs" / "server" / "environment.yml"
    if not server.exists():
        server.parent.mkdir(parents=True)
        server.write_text(
            "dependencies:\n  - python\n  - pip:\n"
            f"    - jupyterhub=={jupyterhub.__version__}\n    - jupyterlab\n    - batchspawner==1.3.0\n"
        )
    py = site / "envs" / "python" / "environment.yml"
    if not py.exists():
        py.parent.mkdir(parents=True)
        py.write_text(py_env("0.1"))
    kernel = site / "kernels" / KERNEL_NAME / "kernel.json"
    if not kernel.exists():
        kernel.parent.mkdir(parents=True)
        kernel.write_text(
            json.dumps(
                {
                    "argv": [
                        "{env_prefix}/bin/python",
                        "-m",
                        "ipykernel_launcher",
                        "-f",
                        "{connection_file}",
                    ],
                    "display_name": KERNEL_DISPLAY_NAME,
                    "language": "python",
                    "env": {"STOCK_BUILD": "{env_prefix}"},
                    "metadata": {"hubstock": {"env": "python", "check": "import demo_c"}},
                }
            )
        )
    if modules is not None:
        add_module_kinds(site, modules)
    toml = site / "hubstock.toml"
    if not toml.exists():
        toml.write_text(base_settings(root, channel))
    cli(site, "init-root")  # once per root; again it changes nothing
    cli(site, "lock")
    for step in ("build", "publish"):
        for line in cli(site, step).splitlines():
            if report and line.strip():
                report(line.strip())
    return site


@contextlib.contextmanager
def restricted_kernel(site: Path, group: str) -> Iterator[str]:
    """Publish on ``site`` the env :data:`LICENSED_ENV` (the stock Python env's spec, ``groups =
    [group]`` in its env.toml) with its kernel :data:`LICENSED_KERNEL`; yield the generation. After,
    both leave the site and the site is published again without them."""
    env = site / "envs" / LICENSED_ENV
    kernel = site / "kernels" / LICENSED_KERNEL
    env.mkdir(parents=True, exist_ok=True)
    (env / "environment.yml").write_text((site / "envs" / "python" / "environment.yml").read_text())
    (env / "env.toml").write_text(f'kind = "conda"\ngroups = ["{group}"]\n')
    kernel.mkdir(parents=True, exist_ok=True)
    spec = json.loads((site / "kernels" / KERNEL_NAME / "kernel.json").read_text())
    spec["display_name"] = LICENSED_DISPLAY_NAME
    spec["metadata"]["hubstock"]["env"] = LICENSED_ENV
    (kernel / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    try:
        cli(site, "lock", LICENSED_ENV)
        cli(site, "build", LICENSED_ENV)
        out = cli(site, "publish", "--json")
        yield json.loads(out)["generation"]
    finally:
        shutil.rmtree(env, ignore_errors=True)
        shutil.rmtree(kernel, ignore_errors=True)
        cli(site, "publish")


def base_settings(root: Path, channel: Path) -> str:
    """The root, the channel, and the site's own module tree (``modules/``: used only by the venv
    and module envs :func:`add_module_kinds` adds, with it)."""
    return f'root = "{root}"\nchannels = ["{file_url(channel)}"]\n\n[modules]\nuse = ["{SITE_MODULES}"]\n'


def hub_settings(
    root: Path,
    channel: Path,
    state_dir: Path,
    scheduler: str,
    ports: list[int],
    slurm_conf: Path | None = None,
    authenticator: str = "pam",
    idle_timeout: int = 0,
    extra_hub: list[str] | None = None,
    *,
    hub_ip: str = "127.0.0.1",
    hub_connect_ip: str | None = None,
    environment: dict[str, str] | None = None,
    submit_cmd: str | None = None,
    restricted_note: str | None = RESTRICTED_NOTE,
) -> str:
    """``hubstock.toml`` for a hub on 127.0.0.1: ``scheduler`` is slurm, torque, pbs, local or simple.

    ``hub_ip`` and ``hub_connect_ip``: where the hub's API listens and the name the jobs reach
    it by; ``environment``: the jobs' extra variables (``slurm_conf`` adds SLURM_CONF);
    ``submit_cmd``: the submit command (the torque flavour's default is ``spawner/qsub-stdin``)."""
    chp = ensure_chp(test_cache())
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    lines = [
        base_settings(root, channel),
        "[hub]",
        'ip = "127.0.0.1"',
        f"port = {ports[0]}",
        f'hub_ip = "{hub_ip}"',
        *([f'hub_connect_ip = "{hub_connect_ip}"'] if hub_connect_ip else []),
        f"hub_port = {ports[1]}",
        f"proxy_api_port = {ports[2]}",
        f'proxy_command = ["{chp}"]',
        f'state_dir = "{state_dir}"',
        f'authenticator = "{authenticator}"',
        f"idle_timeout = {idle_timeout}",
        # the rigs' hubs start their own proxy, unless the caller runs it as the proxy's unit does
        *([] if any(x.startswith("proxy_external") for x in extra_hub or []) else ["proxy_external = false"]),
        *(extra_hub or []),
        "",
        "[spawner]",
        f'scheduler = "{scheduler}"',
        f'exec_prefix = "{runuser} -u {{username}} --"',
        "start_timeout = 120",
        "http_timeout = 120",
    ]
    if submit_cmd or scheduler == "torque":
        lines.append(f'submit_cmd = "{submit_cmd or "{site}/spawner/qsub-stdin"}"')
    job_env = {**({"SLURM_CONF": str(slurm_conf)} if slurm_conf else {}), **(environment or {})}
    if job_env:
        lines.append(f"environment = {{{', '.join(f'{k} = {json.dumps(v)}' for k, v in job_env.items())}}}")
    lines += [
        "",
        "[[spawner.queues]]",
        'name = "debug"',
        'description = "Short sessions"',
        "max_cpus = 2",
        'max_memory = "2G"',
        'max_walltime = "01:00:00"',
        "",
        "[[spawner.queues]]",
        'name = "batch"',
        "max_cpus = 1",
        'max_memory = "1G"',
        'max_walltime = "00:30:00"',
        "",
        "[spawner.defaults]",
        'queue = "debug"',
        'memory = "1G"',
        'walltime = "00:30:00"',
    ]
    if restricted_note:
        lines += ["", "[publish]", f"restricted_note = {json.dumps(restricted_note)}"]
    return "\n".join(lines) + "\n"


def start_hub(
    site: Path,
    port: int,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    *,
    start: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    cleanup_servers: bool = True,
    launcher: Callable[[Sequence[str]], list[str]] | None = None,
    netns: NetNamespace | None = None,
) -> Hub:
    """JupyterHub on ``site`` (its hubstock.toml already written), answering on ``port``;
    with ``start=False`` the caller starts it (and so always has the Hub to stop).
    ``ssl_context``, ``cleanup_servers``, ``launcher`` and ``netns`` (a hub inside a rig's
    network namespace): see :class:`rigs.hub_rig.Hub`."""
    # batchspawner runs the status and cancel commands with the hub's own environment:
    # on a real hub node SLURM_CONF is set for the service (or /etc/slurm is used)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        **(extra_env or {}),
    }
    env.pop("HUBSTOCK_ROOT", None)
    env.pop("HUBSTOCK_SITE", None)
    hub = Hub(
        site,
        port,
        env,
        log_path,
        ssl_context=ssl_context,
        cleanup_servers=cleanup_servers,
        launcher=launcher,
        netns=netns,
    )
    return hub.start() if start else hub
