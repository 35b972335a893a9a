"""The rendered units started by systemd itself, with their sandboxes: a user logs in and runs
code in a server that the sandboxed hub submitted as a Slurm job.

``hubstock units`` renders ``hubstock-proxy.service`` and ``hubstock-hub.service`` for the
published hub site; systemd (``systemd_rig``: PID 1 of private namespaces; for OpenPBS, one
booted inside that rig's namespaces) loads them as they are and starts the hub, which pulls in
the proxy. Through the proxy's port, a PAM user logs in, starts a server (a batch job of the
private Slurm or OpenPBS, submitted with ``runuser`` and ``sbatch``, or ``qsub`` and its setuid
``pbs_iff``, from inside the hub's sandbox) and runs code in the stock kernel. The running processes are checked
for what the sandboxes promise, and ``systemd-analyze security`` of the loaded units is printed
(``-s`` shows it) and held to the bounds of the offline check in ``test_hub_config.py``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rigs.clusters import Cluster, PBSCluster, SlurmCluster
from rigs.hub_rig import Hub, ensure_chp, run_code
from rigs.hubsite import KERNEL_NAME, free_port, hub_settings
from rigs.hubsite import test_cache as rigs_cache
from rigs.slurm_rig import create_user, remove_user

from hubstock.hub.units import HUB_UNIT, PROXY_UNIT

pytestmark = pytest.mark.hub

USER = f"hsunit{secrets.token_hex(2)}"
PASSWORD = "Sandboxed-Login-7"


def _status(rig, unit: str) -> dict[str, str]:
    keys = ("ActiveState", "MainPID", "NRestarts")
    out = rig.systemctl("show", unit, *(f"--property={k}" for k in keys)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _proc(rig, pid: str, what: str) -> str:
    """/proc/<pid>/<what> of a process in the rig (its PID as the rig's namespace numbers it)."""
    res = rig.run(["cat", f"/proc/{pid}/{what}"])
    assert res.returncode == 0, res.stderr
    return res.stdout


def _mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """Each mount point's (root in its filesystem, options), the last mount on a point winning."""
    out = {}
    for line in mountinfo.splitlines():
        f = line.split()
        out[f[4]] = (f[3], f[5])
    return out


def _exposure(rig, unit: str) -> tuple[float, str]:
    res = rig.run(["systemd-analyze", "security", "--no-pager", unit])
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+) (\S+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1)), m.group(2)


@pytest.fixture(scope="module")
def user(hub_workdir):
    create_user(USER, PASSWORD, hub_workdir / "homes")
    yield USER
    remove_user(USER)


@pytest.fixture(params=["slurm", pytest.param("pbs", marks=pytest.mark.pbs)])
def cluster(request, hub_workdir):
    """(the scheduler, the systemd that starts the units): for OpenPBS, a systemd booted inside the
    rig's network and mount namespaces, where the hub, its proxy, the jobs and the client meet."""
    if request.param == "pbs":
        from rigs.systemd_rig import SystemdRig

        rig = request.getfixturevalue("openpbs_rig")
        c: Cluster = PBSCluster(rig)
        systemd = SystemdRig(hub_workdir / "systemd-pbs", launcher=rig.ns_argv).start()
    else:
        c = SlurmCluster(request.getfixturevalue("slurm_rig"))
        systemd = request.getfixturevalue("systemd_rig")
    yield c, systemd
    if request.param == "pbs":
        systemd.stop()
    c.cancel_all()
    c.close()


@pytest.fixture
def units(hub_workdir, hub_site, channel, cluster):
    """The hub site set for the scheduler with the proxy as its own unit (as the ``nobody`` user,
    from a copy of the tests' proxy: the unit's ProtectHome= hides the test cache), its units
    rendered with this interpreter's jupyterhub and the scheduler's commands on PATH, as an admin
    runs ``hubstock units`` on the hub node; (work folder, ports)."""
    if any(Path(sys.prefix).is_relative_to(t) for t in ("/tmp", "/var/tmp")):
        pytest.fail(f"the hub's unit runs {sys.prefix}/bin/jupyterhub, which its private /tmp hides")
    c, _ = cluster
    work = hub_workdir / f"units-systemd-{c.name}"
    work.mkdir(mode=0o755, exist_ok=True)
    chp_cached = ensure_chp(rigs_cache())
    chp_dir = chp_cached.parents[2]  # <cache>/chp-X.Y.Z/node_modules/.bin/configurable-http-proxy
    shutil.copytree(chp_dir, work / chp_dir.name, symlinks=True, dirs_exist_ok=True)
    chp = work / chp_cached.relative_to(chp_dir.parent)
    ports = [free_port(), free_port(), free_port()]
    toml = hub_settings(hub_workdir / "root", channel, work / "state", ports=ports, **c.settings(),
                        extra_hub=["proxy_external = true", 'proxy_user = "nobody"'])  # fmt: skip
    (hub_site / "hubstock.toml").write_text(toml.replace(str(chp_cached), str(chp)))
    argv = [sys.executable, "-m", "hubstock", "--site", str(hub_site), "units", "--out", str(work / "units"),
            "--jupyterhub", str(Path(sys.prefix) / "bin" / "jupyterhub")]  # fmt: skip
    res = subprocess.run(  # where the hub runs (the OpenPBS rig's namespaces), as the admin does
        c.launcher(argv) if c.launcher else argv,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": c.hub_env().get("PATH", os.environ["PATH"])},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return work, ports


def test_the_units_run_under_systemd_sandboxed_and_a_user_runs_code_in_a_job(cluster, hub_site, units, user):
    (c, rig), (work, ports) = cluster, units
    logs = {name: rig.install(name, (work / "units" / name).read_text()) for name in (PROXY_UNIT, HUB_UNIT)}
    hub = Hub(hub_site, ports[0], env={}, log_path=logs[HUB_UNIT], netns=c.netns)

    def tails() -> str:
        state = rig.systemctl("status", HUB_UNIT, PROXY_UNIT, check=False).stdout
        return state + "".join(
            f"\n--- {n}\n{p.read_text(errors='replace')[-3000:]}" for n, p in logs.items() if p.exists()
        )

    rig.systemctl("start", HUB_UNIT)  # Wants= and After= the proxy: systemd starts both
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                hub.call(hub._health)  # through the proxy's public port
                break
            except OSError:
                restarts = [_status(rig, u)["NRestarts"] for u in (HUB_UNIT, PROXY_UNIT)]
                assert restarts == ["0", "0"], f"a unit failed and was restarted:\n{tails()}"
                assert time.monotonic() < deadline, f"the hub did not answer through the proxy:\n{tails()}"
                time.sleep(0.3)

        assert not hub.login(USER, "not-the-password")
        status, token = hub.token_for(USER, PASSWORD)  # PAM, from inside the hub's sandbox
        assert status == 201 and token, tails()
        status, body = hub.request("POST", f"/hub/api/users/{USER}/server", token=token, body={})
        assert status in (201, 202), (status, body, tails())
        hub.wait_for_server(USER, token)
        (job,) = c.jobs(active_only=True)  # runuser and sbatch (or qsub) ran in the sandbox
        assert run_code(hub, USER, token, KERNEL_NAME, "print(6 * 7)").strip() == "42"

        proxy, hub_state = _status(rig, PROXY_UNIT), _status(rig, HUB_UNIT)
        assert proxy["ActiveState"] == hub_state["ActiveState"] == "active", (proxy, hub_state)
        assert proxy["NRestarts"] == hub_state["NRestarts"] == "0", tails()
        # the proxy: the unit's user without capabilities, no new privileges, a system call filter
        pstatus = _proc(rig, proxy["MainPID"], "status")
        assert re.search(r"^Uid:\s+65534\s", pstatus, re.M), pstatus
        assert re.search(r"^NoNewPrivs:\s+1$", pstatus, re.M) and re.search(
            r"^Seccomp:\s+2$", pstatus, re.M
        ), pstatus
        assert re.search(r"^CapEff:\s+0+$", pstatus, re.M), pstatus
        # the proxy: the whole filesystem read-only; the hub (root, with its capabilities): a
        # read-only /usr and /etc; both: a /tmp of their own
        pmounts = _mounts(_proc(rig, proxy["MainPID"], "mountinfo"))
        hmounts = _mounts(_proc(rig, hub_state["MainPID"], "mountinfo"))
        assert pmounts["/"][1].startswith("ro"), pmounts["/"]
        assert hmounts["/usr"][1].startswith("ro") and hmounts["/etc"][1].startswith("ro"), hmounts
        for mounts in (pmounts, hmounts):
            assert "/systemd-private-" in mounts["/tmp"][0], mounts.get("/tmp")

        scores = {unit: _exposure(rig, unit) for unit in (PROXY_UNIT, HUB_UNIT)}
        print(f"\nsystemd-analyze security of the running units: {scores}")
        assert scores[PROXY_UNIT][0] <= 4.0 and scores[HUB_UNIT][0] <= 4.0, scores

        status, _ = hub.request("DELETE", f"/hub/api/users/{USER}/server", token=token)
        assert status in (202, 204)
        hub.wait_stopped(USER, token)
        c.wait_no_jobs(timeout=60)
    finally:
        rig.systemctl("stop", HUB_UNIT, PROXY_UNIT, check=False)
