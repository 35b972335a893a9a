"""`nox -s demo`: one command brings the whole hub up on 127.0.0.1; a second run reuses the builds.

The demo runs as `nox -s demo -- --check` runs it (``python -m rigs.demo``), twice on
the same directory. As root its servers are Slurm jobs of a PAM user on the local Slurm rig;
otherwise they are local processes of this user (the ``simple`` scheduler) and the login is
the hub's demo password. Either way ``--check`` opens the login page, logs in with the
printed credentials, starts a server, reads its kernels, stops it and stops everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rigs.hubsite import free_port
from rigs.slurm_rig import SlurmRig, remove_user
from tests.helpers import need_root
from traitlets.config import Config

from hubstock.errors import SiteError
from hubstock.hub.config import apply_site

REPO = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0
BUILD_PHASE = re.compile(r"published generation (\S+) \(kernels: ([^)]*)\) in (\d+) s")


def _run_demo(
    demo_dir: Path, port: int, user: str, timeout: float = 600, extra: tuple[str, ...] = ()
) -> tuple[int, str, float]:
    """(exit status, output, seconds) of one ``--check`` run; on a timeout it is stopped with
    SIGTERM, as Ctrl-C would, so that it still stops what it started."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rigs.demo", "--check"]
        + ["--dir", str(demo_dir), "--port", str(port), "--user", user, *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
        pytest.fail(f"the demo did not finish within {timeout} s:\n{out}")
    return proc.returncode, out, time.monotonic() - t0


def _sigterm_to_its_parent(demo_dir: Path, port: int, user: str, timeout: float = 600) -> tuple[str, float]:
    """(output, seconds) of a demo (not ``--check``) whose parent stands for nox: once the hub is
    up, the parent alone gets SIGTERM and ends at once, as nox does, leaving the demo to stop
    everything on its own. Returns once the demo and all it started have ended (its pipe closed)."""
    t0 = time.monotonic()
    nox = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
    parent = subprocess.Popen(
        [sys.executable, "-c", nox, sys.executable, "-m", "rigs.demo"]
        + ["--dir", str(demo_dir), "--port", str(port), "--user", user],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert parent.stdout is not None
        for line in parent.stdout:  # to the end: every process that holds the pipe has ended
            lines.append(line)
            if "Open http://" in line:  # up, and the address and credentials are printed
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(timeout), "".join(lines)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(10) == -signal.SIGTERM  # ended at once, with no word to its child
        reader.join(300)
        assert not reader.is_alive(), "the demo did not stop after its parent ended:\n" + "".join(lines)
    finally:
        for pid in _left_running(demo_dir) if reader.is_alive() or not up.is_set() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return "".join(lines), time.monotonic() - t0


def _left_running(demo_dir: Path) -> list[int]:
    """Processes that still run in, or from, the demo's directory (hub, proxy, servers, Slurm)."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(demo_dir)) or str(demo_dir) in cmdline:
            left.append(int(entry))
    if AS_ROOT:
        left += SlurmRig(demo_dir / "slurm").stray_processes()
    return sorted(set(left))


@pytest.fixture
def demo_user():
    name = f"hsdemo{secrets.token_hex(2)}"  # never an account of the machine's, never another run's
    yield name
    if AS_ROOT:
        remove_user(name)


@pytest.mark.hub
def test_demo_brings_the_hub_up_and_a_second_run_reuses_the_builds(world_tmp, demo_user):
    demo_dir = world_tmp / "demo"
    port = free_port()
    code, first, first_s = _run_demo(demo_dir, port, demo_user)
    assert code == 0, first
    password_file = demo_dir / ("demo-password" if AS_ROOT else "state/demo_password")
    password = password_file.read_text().strip()
    assert oct(password_file.stat().st_mode & 0o777) == "0o600"
    # the address and the credentials, as printed for the user
    assert f"Open http://127.0.0.1:{port}/   user: {demo_user}   password: {password}" in first, first
    for step in ("the login page answers (200)", f"logged in as {demo_user} with the printed password"):
        assert f"check: {step}" in first, first
    assert f"check: the server is up and /user/{demo_user}/lab is JupyterLab" in first, first
    assert "check: the server lists exactly the published kernels: python-stock" in first, first
    assert "(built)" in first and "generation 0001 (published)" in first, first
    if AS_ROOT:  # the proxy runs on its own: the hub restarts and the user's server answers throughout
        assert "check: the hub restarted in " in first and "requests through the proxy meanwhile" in first, (
            first
        )
    assert "stopped (hub" in first and _left_running(demo_dir) == [], first

    # the second run finds everything built: fresh locks, builds up to date, the same generation;
    # it runs (no --check) until its parent, standing for nox, is sent SIGTERM alone
    second, second_s = _sigterm_to_its_parent(demo_dir, port, demo_user)
    assert "(built)" not in second and second.count("(up to date)") == 2, second
    assert "generation 0001 (unchanged)" in second, second
    assert f"user: {demo_user}   password: {password}" in second, second  # the same credentials
    assert "interrupted" in second and "stopped (hub" in second, second
    assert _left_running(demo_dir) == [], second
    (gen1, kernels1, build1), (gen2, kernels2, build2) = (
        BUILD_PHASE.search(first).groups(),
        BUILD_PHASE.search(second).groups(),
    )
    assert (gen2, kernels2) == (gen1, kernels1)
    times = f"first run {first_s:.0f} s (builds {build1} s), second {second_s:.0f} s (builds {build2} s)"
    assert int(build2) < int(build1) and second_s < first_s, times


@pytest.mark.hub
@pytest.mark.pbs
def test_demo_on_openpbs(world_tmp, demo_user):
    """`nox -s demo -- --scheduler pbs`: the servers are OpenPBS jobs; the hub lives in the rig's
    namespace, and the printed address (this machine's 127.0.0.1) reaches it."""
    from rigs.openpbs import OpenPBSMissing, OpenPBSRig, locate_openpbs

    need_root("the OpenPBS demo")
    try:
        locate_openpbs()
    except OpenPBSMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI must run the pbs tests)")
        pytest.skip(str(exc))
    demo_dir = world_tmp / "demo"
    port = free_port()
    code, out, _ = _run_demo(demo_dir, port, demo_user, extra=("--scheduler", "pbs"))
    assert code == 0, out
    password = (demo_dir / "demo-password").read_text().strip()
    assert f"Open http://127.0.0.1:{port}/   user: {demo_user}   password: {password}" in out, out
    assert f"servers run as OpenPBS jobs of user {demo_user}" in out, out
    for step in (
        "the login page answers on this machine's 127.0.0.1 too (relayed to the hub)",
        f"the server is up and /user/{demo_user}/lab is JupyterLab",
        "the server lists exactly the published kernels: python-stock",
    ):
        assert f"check: {step}" in out, out
    assert "stopped (hub, OpenPBS rig)" in out, out
    assert _left_running(demo_dir) == [] and OpenPBSRig(demo_dir / "openpbs").stray_processes() == []


@pytest.mark.parametrize("euid", [1000, 0])
def test_the_simple_scheduler_runs_servers_as_the_hub_user_and_never_as_root(tmp_path, monkeypatch, euid):
    site = tmp_path / "site"
    (site / "envs").mkdir(parents=True)
    (site / "hooks").symlink_to(REPO / "hooks")
    state = tmp_path / "state"
    (site / "hubstock.toml").write_text(
        f'[hub]\nstate_dir = "{state}"\nauthenticator = "shared-password"\n[spawner]\nscheduler = "simple"\n'
    )
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    c = Config()
    if euid == 0:  # every login would get a root server
        with pytest.raises(SiteError, match="'simple' runs every server as the hub's own user"):
            apply_site(c, site)
        return
    apply_site(c, site)
    assert c.JupyterHub.spawner_class == "jupyterhub.spawner.SimpleLocalProcessSpawner"
    assert c.SimpleLocalProcessSpawner.home_dir_template == f"{state}/homes/{{username}}"
    assert c.JupyterHub.authenticator_class == "shared-password"
    assert (state / "demo_password").read_text().strip() == c.SharedPasswordAuthenticator.user_password
