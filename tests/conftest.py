"""Fixtures for hubstock's tests.

What each fixture gives:

- ``channel`` (session): a real local conda channel built offline by
  ``rigs/channel.py`` (python repackaged from this interpreter plus small
  synthetic packages), cached between runs; read-only: copy it before changing it.
- ``channel_url`` (session): its ``file://`` URL.
- ``world_tmp``: a fresh directory that every user can read (pytest's own tmp is
  mode 700, and some tests run programs as an ordinary user); removed afterwards.
- ``make_site``: ``make_site(envs={"name": "environment.yml text"}, settings="toml text")``
  writes a site repository under ``world_tmp`` whose root is ``<world_tmp>/root``
  (made, as ``hubstock init-root`` does, when the settings keep that root) and returns its :class:`hubstock.site.Site` (for invalid settings, the site
  as it would be with defaults, so the test can run the CLI on it).
- ``hubstock``: runs the real ``hubstock`` command in a subprocess
  (``hubstock(site, "build", ...)``) and returns the CompletedProcess.
- ``as_nobody``: the argv prefix that runs a command as uid/gid 65534 (needs root).
- ``hub_workdir`` (session): a world-readable folder for the hub and browser tests, under
  ``/var/lib`` (a unit's private ``/tmp`` would hide one under ``/tmp``), kept when
  ``HUBSTOCK_KEEP_TEST_DIRS`` is set, to read the hub's and jobs' logs.
- ``slurm_rig`` (session): a private single-node Slurm with its PBS commands, started
  and stopped by PID (``rigs/slurm_rig.py``); needs root.
- ``openpbs_rig`` (session): a private single-node OpenPBS in its own network namespace
  (``rigs/openpbs/``; commands run inside it with ``openpbs_rig.run``); needs root and
  ``HUBSTOCK_OPENPBS_SOURCE`` (built once, cached) or ``HUBSTOCK_OPENPBS_PREFIX``: skipped
  without them, failed in CI.
- ``postgres_rig`` (session): a private PostgreSQL server on 127.0.0.1 for the hub's database
  (``rigs/postgres_rig.py``), stopped by PID; needs root.
- ``gluster`` (session): a GlusterFS volume on the loopback, mounted over FUSE at
  ``gluster.root_mount`` (``rigs/gluster_rig.py``); ``gluster.on_node(argv, path)`` runs argv as
  on another node, with a client of its own mounted at ``path``. Needs root and Debian's
  glusterfs-server and glusterfs-client (``nox -s tests`` installs them).
- ``hub_site`` (session): a published site with a server env and a stock Python kernel, a venv
  env with its Python kernel and a module env with the R kernel, both on ``lmod_tree``'s modules
  (``rigs/hubsite.py``) under ``hub_workdir``; its root is ``hub_workdir/root``.
- ``lmod_tree`` (session): ``(init, tree)``, Lmod's bash init and a real Lmod module tree with
  ``python/X.Y`` and ``R/X.Y`` modules (``rigs/lmod_rig.py``) under ``hub_workdir``; installs
  Lmod, R and IRkernel when root: skipped without them, failed in CI.
- ``systemd_rig`` (session): systemd booted as PID 1 of private namespaces
  (``rigs/systemd_rig.py``), to start rendered units with their sandboxes (``install``,
  ``systemctl``); its logs are under ``hub_workdir/systemd``. Needs root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rigs.channel import cached_channel, file_url
from tests.helpers import need_root

from hubstock.errors import SiteError
from hubstock.site import Settings, Site, load_site
from hubstock.store.rootmark import init_root

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(scope="session", autouse=True)
def _shared_uv_cache() -> Iterator[None]:
    """One uv cache for the whole run, kept between runs: PyPI is fetched once."""
    cache = Path(os.environ.get("HUBSTOCK_TEST_CACHE") or Path.home() / ".cache" / "hubstock-tests") / "uv"
    cache.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("UV_CACHE_DIR")
    os.environ["UV_CACHE_DIR"] = str(cache)
    yield
    if old is None:
        os.environ.pop("UV_CACHE_DIR", None)
    else:
        os.environ["UV_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def channel() -> Path:
    return cached_channel()


@pytest.fixture(scope="session")
def channel_url(channel: Path) -> str:
    return file_url(channel)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hubstock-test-"))
    d.chmod(0o755)
    yield d
    subprocess.run(["chmod", "-R", "u+w", str(d)], check=False)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_site(world_tmp: Path, channel_url: str) -> Callable[..., Site]:
    def make(envs: dict[str, str], settings: str | None = None, name: str = "site") -> Site:
        sdir = world_tmp / name
        for env, text in envs.items():
            (sdir / "envs" / env).mkdir(parents=True, exist_ok=True)
            (sdir / "envs" / env / "environment.yml").write_text(textwrap.dedent(text))
        sdir.mkdir(parents=True, exist_ok=True)
        if settings is None:
            settings = f'root = "{world_tmp / "root"}"\nchannels = ["{channel_url}"]\n'
        (sdir / "hubstock.toml").write_text(textwrap.dedent(settings))
        try:
            site = load_site(sdir)
        except SiteError:  # a test of bad settings: the site as it would be
            return Site(dir=sdir, settings=Settings(), root=world_tmp / "root")
        if site.root == world_tmp / "root":
            init_root(site.root)  # as `hubstock init-root` does, once per root (not for others)
        return site

    return make


@pytest.fixture
def hubstock() -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(site: Site | Path, *args: str, check: bool = False, **kw) -> subprocess.CompletedProcess[str]:
        sdir = site.dir if isinstance(site, Site) else site
        proc = subprocess.run(
            [sys.executable, "-m", "hubstock", "--site", str(sdir), *args],
            capture_output=True,
            text=True,
            **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"hubstock {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


@pytest.fixture(scope="session")
def hub_workdir() -> Iterator[Path]:
    # not under /tmp: the hub's unit has a private /tmp (tests/test_units_systemd.py starts it)
    d = Path(tempfile.mkdtemp(prefix="hubstock-hub-", dir="/var/lib"))
    d.chmod(0o755)
    yield d
    if not os.environ.get("HUBSTOCK_KEEP_TEST_DIRS"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_rig(hub_workdir: Path):
    from rigs.slurm_rig import SlurmRig, require_binaries

    need_root("the hub tests")
    require_binaries()
    rig = SlurmRig(hub_workdir / "slurm").start()
    yield rig
    rig.stop()


@pytest.fixture(scope="session")
def openpbs_rig(hub_workdir: Path):
    from rigs.openpbs import OpenPBSMissing, OpenPBSRig, locate_openpbs

    need_root("the OpenPBS tests")
    try:
        prefix, built = locate_openpbs()
    except OpenPBSMissing as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI must run the pbs tests)")
        pytest.skip(str(exc))
    rig = OpenPBSRig(hub_workdir / "openpbs", prefix=prefix)
    if built is not None:
        rig.timings["build"] = built
    rig.start()
    yield rig
    rig.stop()


@pytest.fixture(scope="session")
def postgres_rig(hub_workdir: Path):
    from rigs.postgres_rig import PostgresRig

    need_root("the hub tests with PostgreSQL")
    rig = PostgresRig(hub_workdir / "postgres").start()
    yield rig
    rig.stop()


@pytest.fixture(scope="session")
def gluster() -> Iterator:
    """A GlusterFS volume served on 127.0.1.1 (``rigs/gluster_rig.py``) and mounted over FUSE at
    ``gluster.root_mount``: where the network-filesystem tests put their root. Needs root."""
    from rigs.gluster_rig import GlusterRig

    need_root("a GlusterFS volume over FUSE")
    work = Path(tempfile.mkdtemp(prefix="hubstock-gluster-"))
    work.chmod(0o755)
    rig = GlusterRig(work).start()
    try:
        rig.root_mount = rig.mount(work / "shared")
        rig.root_mount.chmod(0o755)
        yield rig
    finally:
        rig.stop()
        if not os.environ.get("HUBSTOCK_KEEP_TEST_DIRS"):
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_site(hub_workdir: Path, channel: Path, lmod_tree) -> Path:
    from rigs.hubsite import build_site

    return build_site(hub_workdir / "site", hub_workdir / "root", channel, modules=lmod_tree[1])


@pytest.fixture
def as_nobody() -> list[str]:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root; tests that switch users need root")
        pytest.skip("needs root to run a command as another user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="session")
def lmod_tree(hub_workdir: Path):
    """``(init, tree)``: the Debian Lmod's bash init (a Path) and a ``rigs.lmod_rig.ModuleTree``
    written under ``hub_workdir/lmod`` (world-readable, so the Slurm and OpenPBS rigs' jobs can
    load its modules too): ``tree.python_module`` ("python/3.11") puts this machine's
    /usr/bin/python3 on PATH, ``tree.r_module`` ("R/4.2") Debian's R with IRkernel; ``module use
    tree.modulepath`` first. Installs the Debian packages (lmod r-base-core r-cran-irkernel) when
    root; when they are missing: failed in CI, skipped otherwise."""
    from rigs.lmod_rig import RigError, ensure_debian_packages, write_module_tree

    from hubstock.errors import ModuleError
    from hubstock.lmod import find_init

    try:
        ensure_debian_packages()
        init = find_init()
        tree = write_module_tree(hub_workdir / "lmod")
    except (RigError, ModuleError) as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI must run the Lmod tests)")
        pytest.skip(str(exc))
    return init, tree


@pytest.fixture(scope="session")
def systemd_rig(hub_workdir: Path) -> Iterator:
    from rigs.systemd_rig import SystemdRig

    need_root("the systemd rig")
    rig = SystemdRig(hub_workdir / "systemd").start()
    yield rig
    rig.stop()
