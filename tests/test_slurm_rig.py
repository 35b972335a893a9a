"""The private single-node Slurm rig (rigs/slurm_rig.py) with its PBS commands.

Needs root and the Debian packages slurmctld slurmd slurm-client munge slurm-wlm-torque.
The fixtures live here for now; they are meant to move to conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rigs import slurm_rig  # conftest.py puts the repository root on sys.path

RigError, SlurmRig = slurm_rig.RigError, slurm_rig.SlurmRig
create_user, remove_user = slurm_rig.create_user, slurm_rig.remove_user

pytestmark = pytest.mark.hub

USER = "hsrig1"


def world_readable_tmpdir(prefix: str) -> Path:
    """A fresh 0755 directory under /tmp (pytest's basetemp is 0700: job users can't enter it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def rig():
    slurm_rig.require_binaries()
    workdir = world_readable_tmpdir("hubstock-rig-")
    r = SlurmRig(workdir)
    try:
        r.start()
        yield r
    finally:
        try:
            r.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def rig_user(rig):
    password = secrets.token_urlsafe(12)
    create_user(USER, password, rig.workdir / "home")
    try:
        yield SimpleNamespace(name=USER, password=password, home=Path(pwd.getpwnam(USER).pw_dir))
    finally:
        try:
            with contextlib.suppress(RigError):
                rig.cancel_all(user=USER)
        finally:
            remove_user(USER)


# ---------------------------------------------------------------------------- helpers


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def qstat_state(rig: SlurmRig, job_id: str) -> str | None:
    """job_state from `qstat -f ID` (Q, R, C, ...), or None once the job is purged."""
    cp = rig.run(["qstat", "-f", job_id], check=False, timeout=20)
    m = re.search(r"^\s*job_state = (\w+)", cp.stdout, re.M)
    return m.group(1) if m else None


def active_state(rig: SlurmRig, job_id: str) -> str:
    """squeue's state for a job among active (pending/running/...) jobs; '' if not active."""
    cp = rig.run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False, timeout=20)
    return cp.stdout.strip()


def user_processes(name: str, comm: str | None = None) -> list[int]:
    uid = pwd.getpwnam(name).pw_uid
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}")
            this_comm = Path(f"/proc/{entry}/comm").read_text().strip()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if st.st_uid == uid and state != "Z" and (comm is None or this_comm == comm):
            out.append(int(entry))
    return out


# ---------------------------------------------------------------------------- tests


def test_rig_starts_with_idle_node_and_partitions(rig):
    assert rig.node_state() == "idle"
    cp = rig.run(["sinfo", "-h", "-o", "%P %a %T"])
    rows = {line.split()[0]: line.split()[1:] for line in cp.stdout.splitlines()}
    assert rows == {"debug*": ["up", "idle"], "batch": ["up", "idle"]}
    # private configuration, ports and munge socket
    assert rig.env == {"SLURM_CONF": str(rig.slurm_conf)}
    assert rig.slurm_conf.is_relative_to(rig.workdir)
    conf = rig.slurm_conf.read_text()
    assert f"SlurmctldPort={rig.ctld_port}\n" in conf and f"SlurmdPort={rig.slurmd_port}\n" in conf
    assert f"AuthInfo=socket={rig.munge_socket}\n" in conf
    assert oct(rig.slurm_conf.stat().st_mode & 0o777) == "0o644"
    assert rig.qsub_stdin.stat().st_mode & 0o777 == 0o755
    assert set(rig.pids) == {"munged", "slurmctld", "slurmd"}
    for pid in rig.pids.values():
        assert slurm_rig._alive(pid)
    assert rig.jobs() == []
    assert rig.timings["start_to_idle"] < 60


def test_pbs_job_from_stdin_runs_as_user(rig, rig_user):
    out = rig_user.home / "qsub-job.txt"
    script = f"""#!/bin/sh
#PBS -q batch
#PBS -l walltime=00:01:00
#PBS -l nodes=1:ppn=1
#PBS -N hsrig-qsub
id -un > {out}.part
hostname >> {out}.part
echo "${{PBS_JOBID:-}}" >> {out}.part
sleep 2
mv {out}.part {out}
"""
    t0 = time.monotonic()
    cp = rig.run([str(rig.qsub_stdin)], user=rig_user.name, input=script)
    job_id = cp.stdout.strip()
    assert re.fullmatch(r"\d+", job_id), cp.stdout  # a bare job id, as PBS prints it
    assert job_id in rig.jobs()
    cp = rig.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%P %u %j"])
    assert cp.stdout.split() == ["batch", rig_user.name, "hsrig-qsub"]

    states = []

    def finished():
        state = qstat_state(rig, job_id)
        if not states or states[-1] != state:
            states.append(state)
        return state in ("C", None) and out.exists()

    wait_for(finished, 60, f"job {job_id} to finish (states so far {states})", interval=0.1)
    round_trip = time.monotonic() - t0
    assert "R" in states and states[-1] == "C", states
    user, host, pbs_jobid = out.read_text().splitlines()
    assert user == rig_user.name
    assert host == socket.gethostname()
    if rig.spank_pbs:
        assert pbs_jobid == job_id
    # qsub forces relative -o/-e: the job's output lands in the submission directory
    assert (rig_user.home / f"STDIN.o{job_id}").exists()
    assert (rig_user.home / f"STDIN.o{job_id}").stat().st_uid == pwd.getpwnam(rig_user.name).pw_uid
    print(f"qsub round trip {round_trip:.1f} s, qstat states {states}")
    assert rig.jobs(active_only=True) == []
    rig.wait_no_jobs(timeout=45)
    assert rig.jobs() == []
    assert qstat_state(rig, job_id) is None


def test_sbatch_and_cancel_as_user(rig, rig_user):
    # a plain sbatch job
    out = rig_user.home / "sbatch-job.txt"
    cp = rig.run(
        ["sbatch", "--parsable", "-p", "debug", "-t", "1", "-o", str(out), "--wrap", "id -un; hostname"],
        user=rig_user.name,
    )
    job_id = cp.stdout.strip().split(";")[0]
    wait_for(
        lambda: not active_state(rig, job_id) and out.exists() and out.read_text(), 60, f"sbatch job {job_id}"
    )
    assert out.read_text().split() == [rig_user.name, socket.gethostname()]
    assert rig.job_states().get(job_id) in ("COMPLETED", None)

    # two sleeping jobs: one via qsub-stdin, cancelled with qdel; one via sbatch, with scancel
    cp = rig.run(
        [str(rig.qsub_stdin), "-l", "walltime=00:10:00"],
        user=rig_user.name,
        input="#!/bin/sh\nexec sleep 300\n",
    )
    pbs_job = cp.stdout.strip()
    cp = rig.run(
        ["sbatch", "--parsable", "-t", "10", "-o", "/dev/null", "--wrap", "exec sleep 301"],
        user=rig_user.name,
    )
    slurm_job = cp.stdout.strip().split(";")[0]
    for jid in (pbs_job, slurm_job):
        wait_for(lambda jid=jid: active_state(rig, jid) == "RUNNING", 30, f"job {jid} to run")
    assert qstat_state(rig, pbs_job) == "R"
    wait_for(lambda: len(user_processes(rig_user.name, "sleep")) == 2, 10, "both sleeps")

    rig.run(["qdel", pbs_job], user=rig_user.name)
    wait_for(lambda: not active_state(rig, pbs_job), 30, f"qdel of {pbs_job}")
    assert rig.job_states().get(pbs_job) in ("CANCELLED", None)
    assert qstat_state(rig, pbs_job) in ("C", None)
    assert active_state(rig, slurm_job) == "RUNNING"  # qdel touched only its job

    rig.run(["scancel", slurm_job], user=rig_user.name)
    wait_for(lambda: not active_state(rig, slurm_job), 30, f"scancel of {slurm_job}")
    assert rig.job_states().get(slurm_job) in ("CANCELLED", None)
    assert rig.jobs(active_only=True) == []
    # the jobs' processes are really gone, not just the queue entries
    wait_for(lambda: not user_processes(rig_user.name), 15, "the user's processes to end")
    rig.wait_no_jobs(timeout=45)


def test_second_rig_coexists_and_stop_leaves_nothing(rig):
    workdir = world_readable_tmpdir("hubstock-rig2-")
    other = SlurmRig(workdir, partitions=("only",))
    try:
        other.start()
        assert {other.ctld_port, other.slurmd_port}.isdisjoint({rig.ctld_port, rig.slurmd_port})
        assert other.node_state() == "idle"
        cp = other.run(["sinfo", "-h", "-o", "%P"])
        assert cp.stdout.split() == ["only*"]
        # a job still running when the rig stops
        cp = other.run(
            ["sbatch", "--parsable", "-t", "5", "-o", "/dev/null", "--wrap", "exec sleep 302"], cwd=workdir
        )
        job_id = cp.stdout.strip().split(";")[0]
        wait_for(
            lambda: other.run(["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.strip() == "RUNNING",
            30,
            "the job on the second rig",
        )
        assert rig.jobs() == []  # the first rig does not see it
        daemons = dict(other.procs)
        helpers = dict(other.helpers)
        assert helpers, "slurmctld's slurmscriptd should have been recorded"
        strays = other.stray_processes()
        assert strays  # slurmstepd and the job's sleep carry the rig's SLURM_CONF

        other.stop()

        for name, (pid, start) in daemons.items():
            assert not slurm_rig._alive(pid, start), f"{name} ({pid}) survived stop()"
        for pid, start in helpers.items():
            assert not slurm_rig._alive(pid, start), f"helper {pid} survived stop()"
        for pid in strays:
            assert not slurm_rig._alive(pid), f"job process {pid} survived stop()"
        assert other.stray_processes() == []
        assert other.last_stop["unrecorded"] == [], "a daemon's PID was not recorded at start"
        assert not other.running() and other.procs == {}
        other.stop()  # idempotent
        SlurmRig(workdir).stop()  # a fresh object finds nothing recorded to stop
    finally:
        other.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    # the first rig was not disturbed
    assert rig.node_state() == "idle"
    assert all(slurm_rig._alive(pid) for pid in rig.pids.values())


def test_missing_binaries_name_the_debian_packages(monkeypatch):
    monkeypatch.setattr(slurm_rig, "_which", lambda name: None if name == "qsub" else "/bin/true")
    with pytest.raises(RigError, match="slurm-wlm-torque") as exc:
        slurm_rig.require_binaries()
    assert "apt-get install" in str(exc.value)


def test_workdir_must_be_world_searchable(tmp_path):
    # pytest's basetemp is mode 700: job users could not read slurm.conf or reach munge
    rig = SlurmRig(tmp_path / "rig")
    with pytest.raises(RigError, match="world-searchable"):
        rig.start()
    assert rig.procs == {}
