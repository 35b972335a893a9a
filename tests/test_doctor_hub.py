"""``hubstock doctor`` on a real site: the local Slurm rig, a running hub, a PAM test account.

A healthy site gives all ok, the probe job included (it runs on the rig's node as the test
account and reaches the hub's API). Then each broken variant gives exactly its own FAIL line,
with a fix, and nothing else fails; no job is left in the scheduler after any run. Variants
that need a different hubstock.toml get a site folder of their own (the site's spawner/ and
that hubstock.toml); those that break the root or the hub's state change it for the test only.
A last test interrupts doctor while its probe job runs, and the job is cancelled. The healthy
site is also checked on the OpenPBS rig (marked ``pbs``), with the hub in the rig's namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rigs.hubsite import free_port, hub_settings, start_hub
from rigs.slurm_rig import SlurmRig, create_user, remove_user
from tests.helpers import need_root

from hubstock.store.generations import resolve_current
from hubstock.store.root import Root
from hubstock.store.rootmark import write_marker

pytestmark = pytest.mark.hub

USER = f"hsdoc{secrets.token_hex(2)}"  # the probe job's test account: a new one each run


@pytest.fixture(scope="module")
def probe_user(hub_workdir: Path) -> Iterator[str]:
    need_root("the doctor tests")
    homes = hub_workdir / "homes"
    homes.mkdir(mode=0o755, exist_ok=True)
    create_user(USER, secrets.token_hex(8), homes)
    yield USER
    remove_user(USER)


class DoctorSite:
    """A running hub on its own site folder, and site folders for doctor beside it."""

    def __init__(self, workdir: Path, root: Path, channel: Path, rig: SlurmRig) -> None:
        self.workdir, self.root, self.channel, self.rig = workdir, root, channel, rig
        self.ports = [free_port() for _ in range(3)]
        self.state = workdir / "state"
        self.hub_dir = self.site("hub")

    def settings(
        self,
        *,
        root: Path | None = None,
        state: Path | None = None,
        scheduler: str = "slurm",
        extra_hub: list[str] | None = None,
        spawner: str = "",
        tail: str = "",
    ) -> str:
        text = hub_settings(
            root or self.root, self.channel, state or self.state, scheduler, self.ports,
            self.rig.slurm_conf, extra_hub=extra_hub,
        )  # fmt: skip
        text = text.replace("start_timeout = 120\n", f"start_timeout = 120\n{spawner}", 1)
        return f'{text}{tail}\n[doctor]\nuser = "{USER}"\ntimeout = 120\n'

    def site(self, name: str, **kw: object) -> Path:
        """A site folder: the hub site's spawner/ and a hubstock.toml (see :meth:`settings`)."""
        d = self.workdir / name
        if not d.exists():
            shutil.copytree(self.workdir.parent / "site" / "spawner", d / "spawner")
        (d / "hubstock.toml").write_text(self.settings(**kw))  # type: ignore[arg-type]
        return d

    def doctor(
        self, site: Path, *args: str, json_out: bool = True, around: Any = None
    ) -> tuple[int, list[dict], str]:
        """Run ``hubstock doctor`` on ``site`` (inside ``around``, a context manager, if given);
        then no job may be left in the scheduler."""
        env = {k: v for k, v in os.environ.items() if k not in ("HUBSTOCK_ROOT", "HUBSTOCK_SITE")}
        cmd = [
            sys.executable,
            "-m",
            "hubstock",
            "--site",
            str(site),
            "doctor",
            *(["--json"] if json_out else []),
            *args,
        ]
        with around or contextlib.nullcontext():
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
        assert self.rig.jobs(active_only=True) == [], self.rig.job_states()
        assert not list(Path(f"~{USER}").expanduser().glob(".hubstock-doctor-*"))
        if not json_out:
            return p.returncode, [], p.stdout + p.stderr
        assert p.stdout.strip(), p.stderr
        return p.returncode, json.loads(p.stdout)["checks"], p.stderr


@pytest.fixture(scope="module")
def ds(hub_workdir, hub_site, channel, slurm_rig, probe_user) -> Iterator[DoctorSite]:
    d = DoctorSite(hub_workdir / "doctor", hub_workdir / "root", channel, slurm_rig)
    hub = start_hub(d.hub_dir, d.ports[0], d.workdir / "hub.log", extra_env=slurm_rig.env)
    yield d
    hub.stop()


def only_failure(checks: list[dict], name: str) -> dict:
    """The one check that is not ok: ``name``, a FAIL with a one-sentence fix."""
    bad = [c for c in checks if c["status"] != "ok"]
    assert [c["name"] for c in bad] == [name], json.dumps(bad, indent=1)
    assert bad[0]["status"] == "FAIL" and bad[0]["fix"].endswith(".") and "\n" not in bad[0]["fix"]
    return bad[0]


# generation.interpreter, generation.modules, node.interpreter, node.modules: the site's venv and module envs
EVERY_CHECK = {
    "root", "root.owner", "root.writable", "root.lock", "generation", "generation.interpreter",
    "generation.modules", "version.jupyterhub", "version.batchspawner", "hub", "port.port", "port.hub_port",
    "port.proxy_api_port", "hub.state_dir", "hub.secrets", "hub.tls", "hub.pam", "hub.allowed_group",
    "disk.state_dir", "disk.root",
    "spawner", "scheduler", "queue.debug", "queue.batch", "scheduler.nodes", "node.job", "node.root", "node.python", "node.glibc",
    "node.linux", "node.hub_api", "node.interpreter", "node.modules",
}  # fmt: skip


@pytest.mark.parametrize("scheduler", ["slurm", "torque", pytest.param("pbs", marks=pytest.mark.pbs)])
def test_a_healthy_site_is_all_ok(request, scheduler):
    """On the Slurm rig, through Slurm's commands and its Torque wrappers; and on the OpenPBS rig."""
    if scheduler == "pbs":
        code, checks, err, connect = doctor_on_openpbs(request)
    else:
        ds = request.getfixturevalue("ds")
        site = ds.site(f"healthy-{scheduler}", scheduler=scheduler)  # torque: the rig's qsub-stdin
        code, checks, err = ds.doctor(site)
        connect = f"127.0.0.1:{ds.ports[1]}"
    assert {c["name"]: c["status"] for c in checks} == dict.fromkeys(EVERY_CHECK, "ok"), err
    assert code == 0
    by_name = {c["name"]: c for c in checks}
    assert f"as {USER} in queue 'debug' ran on" in by_name["node.job"]["detail"]
    assert "in use by this hub" in by_name["port.hub_port"]["detail"]
    assert f"{connect}/hub/api" in by_name["node.hub_api"]["detail"]


def doctor_on_openpbs(
    request: pytest.FixtureRequest, mom_down: bool = False
) -> tuple[int, list[dict], str, str]:
    """doctor on the OpenPBS rig: the hub, its proxy, doctor and the job all in the rig's network
    namespace; the job reaches the hub's API by the rig's host name (hub_connect_ip). ``mom_down``:
    with pbs_mom stopped meanwhile."""
    rig = request.getfixturevalue("openpbs_rig")  # first: without OpenPBS, skip before anything starts
    clusters = pytest.importorskip("rigs.clusters", reason="the hub tests' face of the OpenPBS rig")
    hub_workdir, channel = request.getfixturevalue("hub_workdir"), request.getfixturevalue("channel")
    hub_site, user = request.getfixturevalue("hub_site"), request.getfixturevalue("probe_user")
    cluster = clusters.PBSCluster(rig)
    workdir = hub_workdir / "doctor-pbs"
    ports = [free_port() for _ in range(3)]
    site = workdir / "site"
    shutil.copytree(hub_site / "spawner", site / "spawner", dirs_exist_ok=True)
    (site / "hubstock.toml").write_text(
        hub_settings(hub_workdir / "root", channel, workdir / "state", ports=ports, **cluster.settings())
        + f'\n[doctor]\nuser = "{user}"\ntimeout = 120\n'
    )
    hub = start_hub(
        site, ports[0], workdir / "hub.log", extra_env=cluster.hub_env(), launcher=cluster.launcher,
        netns=cluster.netns,
    )  # fmt: skip
    try:
        cmd = [sys.executable, "-m", "hubstock", "--site", str(site), "doctor", "--json"]
        if mom_down:
            rig.stop_mom()
        try:
            p = rig.run(cmd, timeout=400, check=False)
        finally:
            if mom_down:
                rig.start_mom()
        assert cluster.jobs() == []
    finally:
        hub.stop()
        cluster.close()
    assert p.stdout.strip(), p.stderr
    return p.returncode, json.loads(p.stdout)["checks"], p.stderr, f"{rig.host}:{ports[1]}"


def test_the_text_output_is_one_line_per_check(ds):
    code, _, out = ds.doctor(ds.site("healthy-slurm"), "--no-job", json_out=False)
    lines = out.strip().splitlines()
    node = [n for n in EVERY_CHECK if n.startswith("node.")]  # the node's checks need the job
    assert code == 0 and len(lines) == len(EVERY_CHECK) - len(node)
    assert all(line.startswith("ok    ") for line in lines), out


def test_a_queue_missing_in_the_scheduler(ds):
    gpu = '\n[[spawner.queues]]\nname = "gpu"\nmax_cpus = 1\nmax_memory = "1G"\nmax_walltime = "00:30:00"\n'
    code, checks, _ = ds.doctor(ds.site("missing-queue", tail=gpu))
    bad = only_failure(checks, "queue.gpu")
    assert code == 1 and "no partition 'gpu'" in bad["detail"] and "batch, debug" in bad["detail"]


def test_a_queue_whose_limit_is_lower_than_the_forms(ds):
    ds.rig.run(["scontrol", "update", "PartitionName=batch", "MaxTime=00:10:00"])
    try:
        code, checks, _ = ds.doctor(ds.site("healthy-slurm"))
    finally:
        ds.rig.run(["scontrol", "update", "PartitionName=batch", "MaxTime=UNLIMITED"])
    bad = only_failure(checks, "queue.batch")
    assert "max_walltime 00:30:00 but partition allows 00:10:00 (MaxTime)" in bad["detail"]
    assert "max_walltime = '00:10:00'" in bad["fix"] and code == 1


def test_a_wrong_hub_connect_ip(ds):
    site = ds.site("connect-ip", extra_hub=['hub_connect_ip = "127.0.0.2"'])
    code, checks, _ = ds.doctor(site)
    bad = only_failure(checks, "node.hub_api")
    assert f"127.0.0.2:{ds.ports[1]}" in bad["detail"] and "hub_connect_ip" in bad["fix"] and code == 1


def test_a_server_build_with_another_jupyterhub(ds):
    """A copy of the root (builds hard-linked, the generation copied) whose server build's
    jupyterhub dist-info says 5.0.0, and whose manifest points at the copy's builds."""
    copy = ds.workdir / "root-other-jupyterhub"
    if not copy.exists():
        copy.mkdir(mode=0o755)
        subprocess.run(["cp", "-al", str(ds.root / "envs"), str(copy / "envs")], check=True)
        gen = resolve_current(Root(ds.root))
        subprocess.run(["cp", "-a", str(ds.root / "generations"), str(copy)], check=True)
        os.symlink(f"generations/{gen.name}", copy / "current")
        write_marker(copy)  # a root of its own at this path, as `hubstock init-root --moved` leaves it
        manifest = resolve_current(Root(copy)).manifest_path
        text = manifest.read_text().replace(str(ds.root) + "/", str(copy) + "/")
        manifest.unlink()
        manifest.write_text(text)
        prefix = Path(json.loads(text)["server"]["prefix"])
        (meta,) = prefix.glob("lib/python3*/site-packages/jupyterhub-*.dist-info/METADATA")
        text = meta.read_text()
        meta.unlink()  # a hard link: the original root keeps its own
        meta.write_text(
            "".join("Version: 5.0.0\n" if ln.startswith("Version:") else ln for ln in text.splitlines(True))
        )
    code, checks, _ = ds.doctor(ds.site("other-jupyterhub", root=copy))
    bad = only_failure(checks, "version.jupyterhub")
    assert (
        "but the published server build has 5.0.0" in bad["detail"]
        and "envs/server/environment.yml" in bad["fix"]
    )
    assert code == 1


@contextlib.contextmanager
def mode(path: Path, new: int) -> Iterator[None]:
    old = path.stat().st_mode & 0o7777
    path.chmod(new)
    try:
        yield
    finally:
        path.chmod(old)


def test_a_root_path_the_job_cannot_read(ds):
    kernel = resolve_current(Root(ds.root)).manifest().kernels[0]
    lib = Root(ds.root).build(kernel.env, kernel.build) / "lib"
    with mode(lib, 0o700):
        code, checks, _ = ds.doctor(ds.site("healthy-slurm"))
    bad = only_failure(checks, "node.root")
    assert f"{USER} cannot read on" in bad["detail"] and str(lib) in bad["detail"] and code == 1


def test_a_world_readable_secret(ds):
    copy = ds.workdir / "state-readable-secret"
    if not copy.exists():
        subprocess.run(["cp", "-a", str(ds.state), str(copy)], check=True)
    (copy / "jupyterhub_cookie_secret").chmod(0o644)
    code, checks, _ = ds.doctor(ds.site("readable-secret", state=copy))
    bad = only_failure(checks, "hub.secrets")
    assert "jupyterhub_cookie_secret (mode 0644)" in bad["detail"] and "chmod 600" in bad["fix"] and code == 1


def test_a_user_writable_path_in_the_root(ds):
    with mode(ds.root / "envs" / "python", 0o757):
        code, checks, _ = ds.doctor(ds.site("healthy-slurm"))
    bad = only_failure(checks, "root.writable")
    assert f"{ds.root / 'envs' / 'python'} (mode 757)" in bad["detail"] and "go-w" in bad["fix"] and code == 1


def test_a_glibc_newer_than_the_nodes(ds):
    code, checks, _ = ds.doctor(ds.site("glibc", tail='\n[virtual_packages]\nglibc = "2.99"\n'))
    bad = only_failure(checks, "node.glibc")
    assert "older than [virtual_packages] glibc = '2.99'" in bad["detail"] and code == 1


def test_an_interrupted_doctor_cancels_its_probe_job(ds):
    site = ds.site("interrupted", spawner='prologue = "sleep 120"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("HUBSTOCK_ROOT", "HUBSTOCK_SITE")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubstock", "--site", str(site), "doctor"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        running: list[str] = []
        while not running and proc.poll() is None and time.monotonic() < deadline:
            running = ds.rig.run(["squeue", "-h", "-u", USER, "-t", "RUNNING", "-o", "%i"]).stdout.split()
            time.sleep(0.2)
        assert running, proc.communicate(timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "probe job was cancelled" in err, (out, err)
    assert ds.rig.job_states().get(running[0]) == "CANCELLED", ds.rig.job_states()
    assert ds.rig.jobs(active_only=True) == []
    assert not list(Path(f"~{USER}").expanduser().glob(".hubstock-doctor-*"))


def test_a_node_whose_slurmd_is_down_is_named_and_no_probe_job_is_left(ds):
    ds.rig.stop_slurmd()
    try:
        code, checks, _ = ds.doctor(ds.site("slurmd-down"))  # (no job is left: DoctorSite.doctor)
    finally:
        ds.rig.start_slurmd()
    print(f"\nslurmd down: {json.dumps([c for c in checks if c['status'] != 'ok'], indent=1)}")
    bad = {c["name"]: c for c in checks if c["status"] != "ok"}
    assert set(bad) == {"scheduler.nodes", "node.job"}, json.dumps(bad, indent=1)
    nodes = bad["scheduler.nodes"]
    assert nodes["status"] == "FAIL" and f"slurmd on node {ds.rig.node} is not running" in nodes["detail"]
    assert "no node of queue(s) batch, debug can run a server" in nodes["detail"] and code == 1
    assert bad["node.job"]["detail"] == "not run: see the scheduler.nodes check"


def test_a_frozen_munged_is_named(ds):
    code, checks, _ = ds.doctor(ds.site("munge-frozen"), around=ds.rig.munged_frozen())
    bad = {c["name"]: c for c in checks if c["status"] != "ok"}
    assert set(bad) == {"scheduler", "node.job"}, json.dumps(bad, indent=1)
    said = bad["scheduler"]["detail"]
    assert said.startswith("munged, the authentication daemon of Slurm's commands, is not answering"), said
    assert str(ds.rig.munge_socket) in said and code == 1


@pytest.mark.pbs
def test_a_node_whose_pbs_mom_is_down_is_named_and_no_probe_job_is_left(request):
    code, checks, err, _ = doctor_on_openpbs(request, mom_down=True)
    bad = {c["name"]: c for c in checks if c["status"] != "ok"}
    # the server saw the node go down too: its queues have no usable node
    assert set(bad) == {"scheduler.nodes", "node.job", "queue.debug", "queue.batch"}, (
        json.dumps(bad, indent=1) + err
    )
    assert (
        bad["scheduler.nodes"]["status"] == "FAIL" and "pbs_mom on node" in bad["scheduler.nodes"]["detail"]
    )
    assert bad["node.job"]["detail"] == "not run: see the scheduler.nodes check" and code == 1


def test_the_spawner_is_checked_as_the_sites_jupyterhub_config_makes_it(ds):
    """A site's own batch_query_cmd is named and used by the probe job; a req_* hubstock refuses fails."""
    site = ds.site("own-query")
    config = site / "spawner" / "jupyterhub_config.py"
    own = "squeue -h -j {job_id} -o '%T %N'"
    config.write_text(config.read_text() + f"c.SlurmSpawner.batch_query_cmd = {own!r}\n")
    code, checks, _ = ds.doctor(site)
    by_name = {c["name"]: c for c in checks}
    assert (
        by_name["spawner"]["status"] == "ok" and f"batch_query_cmd = {own!r}" in by_name["spawner"]["detail"]
    )
    assert by_name["node.job"]["status"] == "ok" and code == 0, by_name["node.job"]
    config.write_text(config.read_text() + 'c.SlurmSpawner.req_nprocs = "4"\n')
    code, checks, _ = ds.doctor(site, "--no-job")
    bad = only_failure(checks, "spawner")
    assert bad["detail"].startswith("c.SlurmSpawner.req_nprocs = '4' would be ignored") and code == 1
