"""The private single-node OpenPBS rig (rigs/openpbs/), in its own network namespace.

The rig tests need root and OpenPBS: HUBSTOCK_OPENPBS_SOURCE (the source tarball; .ci/run sets
it, the build is cached) or HUBSTOCK_OPENPBS_PREFIX (an installed OpenPBS).  Without them they
are skipped, in CI they fail.  The tests at the end need neither.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rigs import openpbs as pbsrig
from rigs.openpbs import (
    ADDRESS,
    DEFAULT_QUEUES,
    OpenPBSMissing,
    OpenPBSRig,
    Queue,
    RigError,
    create_user,
    parse_qstat_f,
    remove_user,
)
from rigs.openpbs import build as pbsbuild
from rigs.slurm_rig import _alive  # the rigs' shared process helper

USER = "hspbs1"


def world_readable_tmpdir(prefix: str) -> Path:
    """A fresh 0755 directory under /tmp (pytest's basetemp is 0700: job users can't enter it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def pbs_user(openpbs_rig: OpenPBSRig):
    password = secrets.token_urlsafe(12)
    create_user(USER, password, openpbs_rig.workdir / "users")
    try:
        yield SimpleNamespace(name=USER, password=password, home=Path(pwd.getpwnam(USER).pw_dir))
    finally:
        try:
            with contextlib.suppress(RigError):
                openpbs_rig.delete_jobs(user=USER)
        finally:
            remove_user(USER)


# ---------------------------------------------------------------------------- helpers


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def qsub(rig: OpenPBSRig, user: str, script: str, *args: str) -> str:
    """Submit *script* on qsub's standard input as *user* (as batchspawner does); the job id.
    ``-f``: no background qsub daemon, which would serve the next user given the same uid."""
    cp = rig.run(["qsub", "-f", *args], user=user, input=script)
    return cp.stdout.strip()


def netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def processes_in(ns: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and netns(int(p)) == ns]


def user_processes(name: str) -> list[int]:
    uid = pwd.getpwnam(name).pw_uid
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if st.st_uid == uid and state != "Z" and comm != "qsub":  # qsub's own helper may linger 60 s
            out.append(int(entry))
    return out


RESOURCE_LINES = re.compile(r"^\s*(job_state|exec_host|exec_vnode|queue|Resource_List\.\S+) = .*$", re.M)


# ---------------------------------------------------------------------------- the rig


@pytest.mark.pbs
@pytest.mark.integration
def test_rig_runs_in_a_private_namespace_with_the_sites_queues(openpbs_rig: OpenPBSRig):
    rig = openpbs_rig
    assert rig.node_state() == "free"
    print(f"\nOpenPBS rig timings: {json.dumps({k: round(v, 2) for k, v in rig.timings.items()})}")
    print(f"session rig: {rig.start_kind} start in {rig.timings['start']:.1f} s")

    # its own network namespace, entered by every command; only lo, with 127.0.0.1 and the rig's address
    assert rig.netns and rig.netns != netns(os.getpid())
    for name, pid in rig.pids.items():
        assert netns(pid) == rig.netns, f"{name} is not in the rig's namespace"
        assert _alive(pid)
    addrs = rig.run(["ip", "-o", "addr", "show"]).stdout
    assert sorted(re.findall(r"inet6? (\S+)", addrs)) == sorted(
        ["127.0.0.1/8", f"{ADDRESS}/32", "::1/128"]
    ), addrs
    assert rig.run(["ip", "route", "show", "default"]).stdout.strip() == ""  # no way out
    # the machine itself has no such address: nothing outside can reach the rig, nor the rig them
    assert f"{ADDRESS}/" not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    # /etc/hosts in the namespace names the rig's host by its address (no DNS on any lookup)
    assert rig.run(["getent", "hosts", rig.host]).stdout.split()[0] == ADDRESS
    assert rig.run(["getent", "hosts", ADDRESS]).stdout.split()[1] == rig.host
    conf = rig.conf.read_text()
    for line in (f"PBS_SERVER={rig.host}", f"PBS_LEAF_NAME={ADDRESS}", f"PBS_HOME={rig.home}"):
        assert f"{line}\n" in conf
    assert rig.conf.stat().st_mode & 0o777 == 0o644

    # the datastore: PostgreSQL as the data user, in the namespace, under PBS_HOME
    pg = int((rig.datastore / "postmaster.pid").read_text().split()[0])
    assert netns(pg) == rig.netns
    assert pwd.getpwuid(os.stat(f"/proc/{pg}").st_uid).pw_name == rig.data_user

    server = parse_qstat_f(rig.run(["qstat", "-Bf"]).stdout)[rig.server_name]
    assert server["scheduling"] == "True"
    assert server["job_history_enable"] == "True"
    assert server["default_queue"] == DEFAULT_QUEUES[0].name
    queues = parse_qstat_f(rig.run(["qstat", "-Qf"]).stdout)
    assert set(queues) == {q.name for q in DEFAULT_QUEUES}  # -t create's workq is gone
    for q in DEFAULT_QUEUES:
        attrs = queues[q.name]
        assert attrs["queue_type"] == "Execution"
        assert attrs["enabled"] == attrs["started"] == "True"
        assert attrs["resources_max.ncpus"] == str(q.max_cpus)
        assert attrs["resources_max.mem"] == pbsrig.pbs_size(q.max_memory)
        assert attrs["resources_max.walltime"] == q.max_walltime
    assert rig.jobs(active_only=True) == {}
    assert rig.timings["start"] < 60


@pytest.mark.pbs
@pytest.mark.integration
def test_processes_started_in_the_namespace_reach_each_other(openpbs_rig: OpenPBSRig, world_tmp: Path):
    """How a hub, its proxy and a test client share the rig's namespace: rig.popen / rig.run."""
    rig = openpbs_rig
    (world_tmp / "index.html").write_text("inside\n")
    server = rig.popen(
        [sys.executable, "-m", "http.server", "--bind", ADDRESS, "18080"],
        cwd=world_tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        fetch = (
            "import sys, time, urllib.request\n"
            "for _ in range(100):\n"
            "    try:\n"
            f"        print(urllib.request.urlopen('http://{rig.host}:18080/index.html', timeout=2).read().decode(), end='')\n"
            "        sys.exit(0)\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "sys.exit(1)\n"
        )
        assert rig.run([sys.executable, "-c", fetch], timeout=30).stdout == "inside\n"
        assert netns(server.pid) == rig.netns  # nsenter execs the command in place
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.pbs
@pytest.mark.integration
def test_job_from_stdin_as_user_runs_then_finishes(openpbs_rig: OpenPBSRig, pbs_user):
    rig = openpbs_rig
    out = pbs_user.home / "pbs-job.txt"
    script = f"""#!/bin/sh
#PBS -N hsrig-pbs
#PBS -q batch
#PBS -l select=1:ncpus=1:mem=256mb
#PBS -l walltime=00:05:00
id -un > {out}.part
hostname >> {out}.part
echo "$PBS_JOBID" >> {out}.part
sleep 4
mv {out}.part {out}
"""
    t0 = time.monotonic()
    job_id = qsub(rig, pbs_user.name, script)
    assert re.fullmatch(rf"\d+\.{re.escape(rig.server_name)}", job_id), job_id  # e.g. 12.<server>

    states: list[str | None] = []

    def state_is(wanted: str):
        state = rig.job_state(job_id)
        if not states or states[-1] != state:
            states.append(state)
        return state == wanted

    wait_for(lambda: state_is("R"), 30, f"job {job_id} to run (states so far {states})")
    to_running = time.monotonic() - t0
    text = rig.run(["qstat", "-fx", job_id]).stdout
    attrs = parse_qstat_f(text)[job_id]
    print(f"\nqsub to R in {to_running:.2f} s; qstat -fx {job_id} while running:")
    print("\n".join(m.group(0) for m in RESOURCE_LINES.finditer(text)))
    assert attrs["job_state"] == "R"
    assert attrs["Job_Owner"].split("@")[0] == pbs_user.name
    assert attrs["exec_host"] == f"{rig.host}/0"
    assert attrs["queue"] == "batch"
    assert attrs["Resource_List.select"] == "1:ncpus=1:mem=256mb"
    assert attrs["Resource_List.ncpus"] == "1"
    assert attrs["Resource_List.mem"] == "256mb"
    assert attrs["Resource_List.walltime"] == "00:05:00"
    assert attrs["Job_Name"] == "hsrig-pbs"
    assert rig.node_state() in ("free", "job-busy")  # 1 of its 2 CPUs is taken

    wait_for(lambda: state_is("F"), 60, f"job {job_id} to finish (states so far {states})")
    assert "R" in states and states[-1] == "F", states  # R, maybe E (exiting), F
    final = rig.qstat(job_id)[job_id]
    assert final["Exit_status"] == "0"
    assert final["job_state"] == "F"
    user, host, pbs_jobid = out.read_text().splitlines()
    assert user == pbs_user.name
    assert host == socket.gethostname()
    assert pbs_jobid == job_id
    # the job's output lands in the submission directory ($usecp: copied, not sent with rcp)
    seq = job_id.split(".")[0]
    log = pbs_user.home / f"hsrig-pbs.o{seq}"
    wait_for(log.exists, 10, f"{log}")
    assert log.stat().st_uid == pwd.getpwnam(pbs_user.name).pw_uid
    assert rig.jobs(active_only=True) == {}
    assert rig.jobs()[job_id] == "F"  # job history: qstat -x still knows it


@pytest.mark.pbs
@pytest.mark.integration
def test_qdel_a_running_job(openpbs_rig: OpenPBSRig, pbs_user):
    """qdel a job at once when it runs and one that has run for 3 s: both end, as F.

    A job deleted in its first second or so can take kill_delay (the queue's, 10 s by default)
    longer: pbs_mom sends SIGTERM to the job's session, and if a process of the session is still
    there when the job's shell has exited (the job's processes start as root and only then become
    the user, and mom's scan skips root's processes) it waits kill_delay before SIGKILL and only
    then reports the job gone."""
    rig = openpbs_rig
    script = "#!/bin/sh\nsleep 300\n"
    young = qsub(rig, pbs_user.name, script, "-l", "walltime=00:10:00")
    wait_for(lambda: rig.job_state(young) == "R", 30, f"job {young} to run")
    t_young = time.monotonic()
    rig.run(["qdel", young], user=pbs_user.name)
    older = qsub(rig, pbs_user.name, script, "-l", "walltime=00:10:00")
    wait_for(lambda: rig.job_state(older) == "R", 30, f"job {older} to run")
    time.sleep(3)
    t_older = time.monotonic()
    rig.run(["qdel", older], user=pbs_user.name)
    times = {}
    for job, t0 in ((older, t_older), (young, t_young)):
        wait_for(lambda job=job: rig.job_state(job) == "F", 30, f"qdel of {job}", interval=0.05)
        times[job] = time.monotonic() - t0
    # the times are printed, never asserted (tests do not assert wall-clock times)
    print(f"\nqdel to F: at once after R {times[young]:.1f} s, after 3 s running {times[older]:.1f} s")
    for job in (young, older):
        attrs = rig.qstat(job)[job]
        assert attrs["job_state"] == "F"
        assert attrs["Exit_status"] != "0", attrs  # killed (271: 256 + SIGTERM), not finished
    # the jobs' processes are really gone (the holder reaps the orphans at once)
    wait_for(lambda: not user_processes(pbs_user.name), 15, "the user's processes to end")
    assert rig.jobs(active_only=True) == {}


@pytest.mark.pbs
@pytest.mark.integration
def test_second_rig_cold_then_warm_and_stop_leaves_nothing(openpbs_rig: OpenPBSRig, pbs_user):
    workdir = world_readable_tmpdir("hubstock-pbsrig2-")
    other = OpenPBSRig(workdir, prefix=openpbs_rig.prefix, queues=[Queue("only", 1, "1G", "00:30:00")])
    try:
        other.start()
        cold = other.timings["start"]
        assert other.start_kind == "cold"
        # side by side with the session rig: same address and ports, each in its own namespace
        assert other.netns != openpbs_rig.netns
        assert other.node_state() == "free"
        assert set(parse_qstat_f(other.run(["qstat", "-Qf"]).stdout)) == {"only"}
        job = qsub(other, pbs_user.name, "#!/bin/sh\nsleep 301\n")
        wait_for(lambda: other.job_state(job) == "R", 30, "the job on the second rig")
        assert openpbs_rig.jobs(active_only=True) == {}  # the session rig does not see it
        wait_for(lambda: len(processes_in(other.netns)) > 7, 10, "the job's processes")
        ns = other.netns
        holder = other.holder
        daemons = dict(other.procs)
        postgres = other._pid_from(other.datastore / "postmaster.pid")  # noqa: SLF001
        before = processes_in(ns)
        assert holder and postgres and holder[0] in before and postgres[0] in before

        other.stop()

        for name, (pid, start) in daemons.items():
            assert not _alive(pid, start), f"{name} ({pid}) survived stop()"
        assert not _alive(*holder), "the namespace holder survived stop()"
        assert not _alive(*postgres), "postgres survived stop()"
        assert processes_in(ns) == [], "processes left in the rig's namespace"
        assert other.stray_processes() == []
        assert not other.running() and other.procs == {} and other.holder is None
        assert not other.state_file.exists()
        other.stop()  # idempotent
        OpenPBSRig(workdir).stop()  # a fresh object finds nothing recorded to stop

        # warm start: PBS_HOME and the datastore are kept, the queue too; the deleted job is history
        other = OpenPBSRig(workdir, prefix=openpbs_rig.prefix, queues=[Queue("only", 1, "1G", "00:30:00")])
        other.start()
        warm = other.timings["start"]
        assert other.start_kind == "warm"
        assert other.node_state() == "free"
        assert other.jobs(active_only=True) == {}
        assert set(parse_qstat_f(other.run(["qstat", "-Qf"]).stdout)) == {"only"}
        ns = other.netns
        other.stop()
        assert processes_in(ns) == []
        assert other.stray_processes() == []
        print(f"\nsecond rig: cold start {cold:.1f} s, warm start {warm:.1f} s")
    finally:
        other.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    # the session rig was not disturbed
    assert openpbs_rig.node_state() == "free"
    assert all(_alive(p, s) for p, s in openpbs_rig.procs.values())


# ---------------------------------------------------------------------------- no rig needed


def test_parse_qstat_f_joins_continuation_lines():
    text = (
        "Job Id: 12.vm\n"
        "    Job_Name = STDIN\n"
        "    job_state = R\n"
        "    exec_host = vm/0\n"
        "    Resource_List.select = 1:ncpus=2:mem=4gb\n"
        "    Variable_List = PBS_O_HOME=/home/u,PBS_O_LANG=C.UTF-8,PBS_O_LOGNAME=u,\n"
        "\tPBS_O_PATH=/usr/bin:/bin,PBS_O_SHELL=/bin/bash\n"
        "\n"
        "Job Id: 13.vm\n"
        "    job_state = F\n"
    )
    jobs = parse_qstat_f(text)
    assert list(jobs) == ["12.vm", "13.vm"]
    assert jobs["12.vm"]["exec_host"] == "vm/0"
    assert jobs["12.vm"]["Resource_List.select"] == "1:ncpus=2:mem=4gb"
    assert jobs["12.vm"]["Variable_List"].endswith("PBS_O_PATH=/usr/bin:/bin,PBS_O_SHELL=/bin/bash")
    assert jobs["13.vm"] == {"job_state": "F"}


def test_memory_sizes_as_pbs_writes_them():
    assert pbsrig.pbs_size("2G") == "2gb"
    assert pbsrig.pbs_size("512M") == "512mb"
    assert pbsrig.pbs_size("16gb") == "16gb"
    assert pbsrig.pbs_size("1GiB") == "1gb"
    with pytest.raises(ValueError):
        pbsrig.pbs_size("lots")


def test_openpbs_is_found_through_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(pbsrig.SOURCE_ENV, raising=False)
    monkeypatch.delenv(pbsrig.PREFIX_ENV, raising=False)
    with pytest.raises(OpenPBSMissing, match=pbsrig.SOURCE_ENV):
        pbsrig.locate_openpbs()
    # a folder with one tarball, or the tarball itself
    tarball = tmp_path / "openpbs-abc123.tar.gz"
    tarball.write_bytes(b"not really")
    monkeypatch.setenv(pbsrig.SOURCE_ENV, str(tmp_path))
    assert pbsrig.source_tarball() == tarball
    monkeypatch.setenv(pbsrig.SOURCE_ENV, str(tarball))
    assert pbsrig.source_tarball() == tarball
    monkeypatch.setenv(pbsrig.SOURCE_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(RigError, match="no such file"):
        pbsrig.source_tarball()
    # an installed OpenPBS must look like one
    monkeypatch.setenv(pbsrig.PREFIX_ENV, str(tmp_path))
    with pytest.raises(RigError, match="bin/qsub"):
        pbsrig.locate_openpbs()
    # the build cache sits in the tests' cache, outside the checkout
    monkeypatch.setenv(pbsrig.CACHE_ENV, str(tmp_path / "cache"))
    assert pbsrig.cache_root() == tmp_path / "cache" / "openpbs"


def test_only_a_complete_build_of_this_recipe_counts(tmp_path):
    prefix = tmp_path / ("0" * 64)
    prefix.mkdir()
    assert pbsrig.build_info(prefix) is None  # interrupted: no completion record
    marker = prefix / pbsbuild._BUILD_MARKER  # noqa: SLF001
    marker.write_text(json.dumps({"recipe": pbsbuild._BUILD_RECIPE - 1}))  # noqa: SLF001
    assert pbsrig.build_info(prefix) is None  # an older recipe is rebuilt
    marker.write_text(json.dumps({"recipe": pbsbuild._BUILD_RECIPE, "version": "23.06.06"}))  # noqa: SLF001
    assert pbsrig.build_info(prefix)["version"] == "23.06.06"
