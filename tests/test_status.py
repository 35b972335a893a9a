"""The hub's job status against stand-in scheduler commands: one query for many jobs, a per-job
fallback, a failing query that is not a gone job, why a job ended, a submission that does not
answer, a job that dies before its server answers, and requests refused before the pre-spawn hook.

No root and no scheduler: small shell scripts stand in for ``sbatch``/``squeue``/``scancel`` and
``qstat``, as in ``tests/test_spawner_core.py`` (whose site and spawner helpers this reuses). Each
job's state is a file the test writes; the scripts log every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from tests.test_spawner_core import ME, jupyterhub_spawner, site_config
from tornado import web

from hubstock.hub.hooks import PostStopHook
from hubstock.hub.spawner import SlurmSpawner, audit_reason, read_tail
from hubstock.hub.status import (
    REAPER,
    UNREACHABLE,
    Gate,
    JobInfo,
    StatusPoller,
    describe_end,
    forget_pollers,
    parse_qstat,
    parse_squeue,
)
from hubstock.hub.status_parse import slurm_hostnames
from hubstock.store.records import SessionRecord
from hubstock.store.root import Root
from hubstock.store.sessions import read_session, register

DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"

SQUEUE = """#!/bin/sh
d="{d}"
printf '%s\\n' "$*" >> "$d/squeue.calls"
[ -e "$d/down" ] && {{ echo "{down}" >&2; exit 1; }}
ids=""; fmt=""
while [ $# -gt 0 ]; do
  case "$1" in -j) ids="$2"; shift ;; -o) fmt="$2"; shift ;; esac
  shift
done
found=0
for id in $(echo "$ids" | tr , ' '); do
  f="$d/jobs/$id"
  [ -e "$f" ] || continue
  line=$(cat "$f")
  case "$fmt" in
    %i*) [ -e "$d/hidden/$id" ] && continue; echo "$id|$line" ;;
    *) echo "${{line%%|*}}" ;;
  esac
  found=1
done
if [ $found = 0 ]; then echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi
"""
SBATCH = """#!/bin/sh
d="{d}"
cat > "$d/script"
[ -e "$d/sbatch.sleep" ] && sleep "$(cat "$d/sbatch.sleep")"
[ -e "$d/down" ] && {{ echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2; exit 1; }}
n=$(cat "$d/next" 2>/dev/null || echo 100)
echo $((n + 1)) > "$d/next"
cat "$d/submit-state" > "$d/jobs/$n" 2>/dev/null || echo "PENDING n/a|Priority" > "$d/jobs/$n"
echo "$n"
"""
SCANCEL = """#!/bin/sh
d="{d}"
printf '%s\\n' "$*" >> "$d/scancel.calls"
[ -e "$d/down" ] && {{ echo "scancel: error: Kill job error on job id $1: Unable to contact slurm controller" >&2; exit 1; }}
echo "CANCELLED node042|None" > "$d/jobs/$1"
"""


class Slurm:
    """Stand-in Slurm commands in ``bindir``; job states are files in ``jobs/``."""

    def __init__(self, tmp: Path) -> None:
        self.d = tmp / "slurm"
        self.bindir = tmp / "bin"
        for sub in ("jobs", "hidden"):
            (self.d / sub).mkdir(parents=True)
        self.bindir.mkdir()
        for name, text in (("squeue", SQUEUE), ("sbatch", SBATCH), ("scancel", SCANCEL)):
            path = self.bindir / name
            path.write_text(text.format(d=self.d, down=DOWN))
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def job(self, job_id: str, line: str) -> None:
        """``line``: what squeue shows, ``"RUNNING node042|None"``."""
        (self.d / "jobs" / job_id).write_text(line + "\n")

    def hide(self, job_id: str) -> None:
        """The batched query does not list the job (the per-job one does)."""
        (self.d / "hidden" / job_id).touch()

    def down(self, is_down: bool = True) -> None:
        if is_down:
            (self.d / "down").touch()
        else:
            (self.d / "down").unlink(missing_ok=True)

    def calls(self, name: str) -> list[str]:
        f = self.d / f"{name}.calls"
        return f.read_text().splitlines() if f.exists() else []

    def batched(self) -> list[str]:
        return [c for c in self.calls("squeue") if "%i|" in c]

    def single(self) -> list[str]:
        return [c for c in self.calls("squeue") if "%i|" not in c]


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Slurm, Any]:
    forget_pollers()
    s = Slurm(tmp_path)
    monkeypatch.setenv("PATH", f"{s.bindir}:{os.environ['PATH']}")
    config = site_config(tmp_path, "slurm", s.bindir, extra="status_interval = 1\nsubmit_timeout = 1")
    yield s, config
    forget_pollers()


def spawner_for(config: Any, job_id: str | None = None, **traits: Any) -> SlurmSpawner:
    sp = jupyterhub_spawner(config)
    for k, v in traits.items():
        setattr(sp, k, v)
    if job_id:
        sp.load_state({"job_id": job_id})
    return sp


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ----------------------------------------------------------------------------------------------------------
# reading the answers


def test_parse_squeue_and_why_a_slurm_job_ended():
    jobs = parse_squeue(
        "7|RUNNING node042|None\n8|TIMEOUT node042|TimeLimit\n9|FAILED node1|NonZeroExitCode\n"
    )
    assert jobs["7"] == JobInfo("7", "RUNNING node042", "RUNNING", reason="None")
    assert describe_end(jobs["8"], "slurm") == "walltime reached"
    assert describe_end(jobs["9"], "slurm") == "it failed"
    assert describe_end(JobInfo("1", "CANCELLED n", "CANCELLED"), "slurm").startswith(
        "cancelled outside the hub"
    )
    assert describe_end(JobInfo("1", "NODE_FAIL n", "NODE_FAIL"), "slurm") == "its node failed"
    assert describe_end(None, "slurm") == "the scheduler no longer lists it"


def test_slurm_hostlists_expand_as_scontrol_show_hostnames_does():
    assert slurm_hostnames("node042") == ["node042"]
    assert slurm_hostnames("node[01-03,07],gpu1") == ["node01", "node02", "node03", "node07", "gpu1"]
    assert slurm_hostnames("r[1-2]n[8-9]") == ["r1n8", "r1n9", "r2n8", "r2n9"]
    assert slurm_hostnames("n[9-11]") == ["n9", "n10", "n11"]
    assert slurm_hostnames("weird[a-b]") == ["weird[a-b]"]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("PENDING (null)", "pending"),
        ("CONFIGURING node1", "pending"),
        ("SUSPENDED node1", "pending"),  # paused by an operator or a preemption: it resumes
        ("STOPPED node1", "pending"),
        ("REQUEUED (null)", "pending"),
        ("REQUEUE_HOLD (null)", "pending"),
        ("RUNNING node1", "running"),
        ("COMPLETING node1", "running"),
        ("RESIZING node1", "running"),
        ("SIGNALING node1", "running"),
        ("STAGE_OUT node1", "ended"),
        ("COMPLETED node1", "ended"),
        ("PREEMPTED node1", "ended"),
        ("RUNNINGX node1", "ended"),
    ],
)
def test_every_slurm_state_is_pending_running_or_ended_on_purpose(slurm, status, state):
    _s, config = slurm
    sp = spawner_for(config, "7")
    sp.job_status = status
    assert ("running" if sp.state_isrunning() else "pending" if sp.state_ispending() else "ended") == state


def test_the_host_of_a_slurm_job_whose_query_gives_a_hostlist(slurm):
    _s, config = slurm
    sp = spawner_for(config, "7")
    sp.job_status = "RUNNING node042"
    assert sp.state_gethost() == "node042"
    sp.job_status = "RUNNING node[07-08]"  # a site's batch_query_cmd with %N
    assert sp.state_gethost() == "node07"


def test_parse_qstat_blocks_long_values_and_why_a_pbs_job_ended():
    text = (
        "Job Id: 12.pbs01\n    job_state = F\n    Exit_status = -29\n    comment = Job run at Mon and\n"
        "\tfinished\n\nJob Id: 13.pbs01\n    job_state = R\n    exec_host = node042/0*2\n"
        "Job Id:\t14\n\tjob_state = C\n\texec_host = localhost/1\n"  # Slurm's qstat wrapper
    )
    jobs = parse_qstat(text)
    assert jobs["12.pbs01"].state == "F" and jobs["12.pbs01"].comment == "Job run at Mon andfinished"
    assert jobs["13"] is jobs["13.pbs01"] and "exec_host = node042/0*2" in jobs["13"].status
    assert jobs["14"].state == "C"
    assert describe_end(jobs["12.pbs01"], "pbs") == "walltime reached"
    killed = JobInfo("1", "", "F", exit_status="271")
    assert describe_end(killed, "pbs") == "it was killed (SIGTERM: qdel, an administrator, or a limit)"
    assert describe_end(JobInfo("1", "", "F", exit_status="3"), "torque") == "it exited with status 3"


def test_a_refusal_for_the_audit_log_holds_no_value_the_user_sent():
    assert audit_reason(
        "cpus must be a whole number from 1 to 4 on queue 'debug' (you asked for '1; rm -rf ~')."
    ) == ("cpus must be a whole number from 1 to 4 on queue 'debug'.")
    assert audit_reason(
        "unknown server option '$(reboot)'; the options are: queue, cpus, memory, gpus, walltime."
    ) == ("unknown server option; the options are: queue, cpus, memory, gpus, walltime.")
    assert audit_reason("form field 'x; y' must have a single value (it had 2).") == (
        "form field must have a single value."
    )


# ----------------------------------------------------------------------------------------------------------
# the shared poller


def test_one_query_for_many_jobs(slurm):
    s, config = slurm
    ids = [str(1000 + i) for i in range(25)]
    for i in ids:
        s.job(i, "RUNNING node042|None")
    spawners = [spawner_for(config, i) for i in ids]

    async def scenario() -> list[int | None]:
        return await asyncio.gather(*(sp.poll() for sp in spawners))  # as a restarted hub polls them all

    assert run(scenario()) == [None] * 25
    assert s.batched() == [f"-h -t all -j {','.join(sorted(ids))} -o %i|%T %B|%r"]  # one query, every job
    assert s.single() == []  # and no job asked about alone


def test_the_poller_asks_once_per_interval_and_calls_back_a_job_that_ended(slurm):
    s, config = slurm
    ids = ["201", "202", "203"]
    for i in ids:
        s.job(i, "RUNNING node042|None")
    spawners = [spawner_for(config, i) for i in ids]
    stopped: list[tuple[str, float]] = []

    async def scenario() -> float:
        for sp in spawners:
            sp.add_poll_callback(lambda sp=sp: stopped.append((sp.stop_reason, time.monotonic())))
            sp.start_polling()  # as JupyterHub does once a server runs
        await asyncio.sleep(2.5)
        s.job("202", "TIMEOUT node042|TimeLimit")
        ended = time.monotonic()
        while not stopped and time.monotonic() - ended < 5:
            await asyncio.sleep(0.05)
        for sp in spawners:
            sp.stop_polling()
        return ended

    ended = run(scenario())
    assert len(stopped) == 1 and stopped[0][0] == "Your server's job 202 ended: walltime reached."
    assert stopped[0][1] - ended <= 1.5  # within one interval (1 s here), and the query's time
    calls = s.batched()
    assert 3 <= len(calls) <= 6, calls  # about one per second, for all three jobs, whatever JupyterHub polls
    assert all(c == "-h -t all -j 201,202,203 -o %i|%T %B|%r" for c in calls[:2]), calls
    assert s.single() == []
    assert spawners[1].job_id == "" and spawners[1].get_state() == {"stop_reason": stopped[0][0]}
    assert spawners[0].job_id == "201" and spawners[0].stop_reason == ""


def test_a_job_the_answer_does_not_list_is_looked_up_alone(slurm):
    s, config = slurm
    s.job("301", "RUNNING node042|None")
    s.job("302", "RUNNING node042|None")
    s.hide("302")
    a, b = spawner_for(config, "301"), spawner_for(config, "302")

    async def scenario() -> list[int | None]:
        return await asyncio.gather(a.poll(), b.poll())

    assert run(scenario()) == [None, None]
    assert len(s.batched()) == 1 and s.single() == ["-h -j 302 -o %T %B"]
    # gone from both: the job's own query says so, and only then is the server stopped
    (s.d / "jobs" / "302").unlink()
    forget_pollers()
    assert run(b.poll()) == 1 and "no longer lists it" in b.stop_reason


@pytest.mark.parametrize(
    "answer",
    ["", "garbled output\nof some other tool", "1000|RUNN"],
    ids=["empty", "garbled", "cut-short"],
)
def test_an_answer_not_to_trust_costs_a_bounded_number_of_lookups_and_stops_no_server(slurm, answer):
    """50 servers, and a batched answer that is empty, garbled or cut short (exit 0): at most
    ``fallback_per_interval`` jobs are looked up alone per interval, nothing is stopped, it is logged once."""
    _, config = slurm
    calls: list[str] = []

    class Site(SlurmSpawner):
        async def run_command(self, cmd: str, input: str | None = None, env: Any = None) -> str:
            calls.append(cmd)
            return answer if "%i|" in cmd else "RUNNING node042"

    ids = [str(1000 + i) for i in range(50)]
    spawners = [jupyterhub_spawner(config, cls=Site) for _ in ids]
    for sp, i in zip(spawners, ids, strict=True):
        sp.load_state({"job_id": i, "job_status": "RUNNING node042"})

    async def one_interval() -> list[int | None]:
        return await asyncio.gather(*(sp.poll() for sp in spawners))

    async def scenario() -> tuple[list[int | None], list[int | None]]:
        first = await one_interval()
        second = await one_interval()  # within the same interval: the bound is spent
        return first, second

    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("hubstock.hub.status").addHandler(handler)
    try:
        first, second = run(scenario())
    finally:
        logging.getLogger("hubstock.hub.status").removeHandler(handler)
    assert first == second == [None] * 50  # every server kept: RUNNING, as last known
    batched = [c for c in calls if "%i|" in c]
    alone = [c for c in calls if "%i|" not in c]
    assert 1 <= len(batched) <= 2 and len(alone) == 20, (len(batched), len(alone))
    assert all(sp.job_id and not sp.stop_reason for sp in spawners)
    assert len([m for m in said if "not trusted" in m]) == 1, said


def test_the_gate_lets_a_hundred_callers_on_per_loop_pass_in_order():
    gate = Gate(per_pass=100)
    order: list[int] = []
    passes = 0

    async def caller(i: int) -> None:
        waiting = gate.turn()
        if waiting is not None:
            await waiting
        order.append(i)

    async def counter() -> None:
        nonlocal passes
        while len(order) < 250:
            passes += 1
            await asyncio.sleep(0)

    async def scenario() -> None:
        await asyncio.gather(counter(), *(caller(i) for i in range(250)))

    run(scenario())
    assert order == list(range(250)) and passes >= 3


def test_a_line_cut_short_is_not_read_as_a_state():
    assert parse_squeue("1|RUNNING n1|None\n2|RUNN") == {"1": JobInfo("1", "RUNNING n1", "RUNNING", "None")}
    assert parse_qstat("Job Id: 3.pbs\n    job_state = R\nJob Id: 4.pbs\n    queue = debug\n").keys() == {
        "3.pbs",
        "3",
    }


def test_a_failing_query_never_counts_as_a_gone_job(slurm):
    s, config = slurm
    for i in ("401", "402"):
        s.job(i, "RUNNING node042|None")
    spawners = [spawner_for(config, i) for i in ("401", "402")]
    s.down()

    async def scenario() -> list[int | None]:
        return await asyncio.gather(*(sp.poll() for sp in spawners))

    assert run(scenario()) == [None, None]  # running, as far as the hub knows
    assert all(sp.job_id and not sp.stop_reason for sp in spawners)
    assert len(s.batched()) == 1 and s.single() == []  # the failed answer is not asked again job by job
    # the job's own query failing is not "gone" either
    forget_pollers()
    spawners[0].batch_status_cmd = ""
    assert run(spawners[0].poll()) is None and spawners[0].job_id == "401"


def test_the_poller_alone(tmp_path):
    """StatusPoller with a command that counts its calls: requests are gathered, answers cached."""
    calls = tmp_path / "calls"
    cmd = f"echo {{job_ids}} >> {calls}; for j in $(echo {{job_ids}} | tr , ' '); do echo \"$j|RUNNING n|None\"; done"
    p = StatusPoller(cmd, parse_squeue, interval=60, timeout=5)

    async def scenario() -> None:
        infos = await asyncio.gather(*(p.status(str(i), max_age=10) for i in range(5)))
        assert [i.state for i in infos] == ["RUNNING"] * 5
        assert (await p.status("3", max_age=10)).state == "RUNNING"  # from the same answer
        p.command = "echo nope >&2; exit 1"
        assert await p.status("3", max_age=0) is UNREACHABLE
        p.command = "sleep 5"
        p.timeout = 0.3
        t0 = time.monotonic()
        assert await p.status("3", max_age=0) is UNREACHABLE and time.monotonic() - t0 < 2

    run(scenario())
    assert calls.read_text().split() == ["0,1,2,3,4"]


# ----------------------------------------------------------------------------------------------------------
# submitting and starting


def test_a_submission_that_does_not_answer_is_a_clear_error_and_its_late_job_is_cancelled(slurm):
    s, config = slurm
    (s.d / "sbatch.sleep").write_text("2.5")
    sp = spawner_for(config)

    async def scenario() -> float:
        t0 = time.monotonic()
        with pytest.raises(web.HTTPError) as info:
            await sp.start()
        took = time.monotonic() - t0
        assert info.value.status_code == 503
        assert "did not take your server's job within 1 s" in info.value.jupyterhub_message
        assert "Servers that are already running are not affected" in info.value.jupyterhub_message
        deadline = time.monotonic() + 10
        while not s.calls("scancel") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        while REAPER.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return took

    assert run(scenario()) < 2
    assert s.calls("scancel") == ["100"]  # the job the late submission made
    assert (s.d / "jobs" / "100").read_text().startswith("CANCELLED")


def test_a_scheduler_that_is_down_is_a_clear_error_at_submission(slurm):
    s, config = slurm
    s.down()
    sp = spawner_for(config)
    with pytest.raises(web.HTTPError) as info:
        run(sp.start())
    assert info.value.status_code == 503
    assert info.value.jupyterhub_message.startswith("The batch scheduler is not answering (sbatch: error:")
    assert sp.job_id == ""


def test_a_job_that_dies_before_its_server_answers_is_reported_with_its_output(slurm, tmp_path):
    s, config = slurm
    home = tmp_path / "home"
    home.mkdir()
    (s.d / "submit-state").write_text("FAILED node042|NonZeroExitCode\n")
    sp = spawner_for(config, req_homedir=str(home))
    (home / ".jupyterhub-slurm-100.log").write_text("loading modules\nprologue: no such module 'python/9'\n")
    with pytest.raises(web.HTTPError) as info:
        run(sp.start())
    message = info.value.jupyterhub_message
    assert info.value.status_code == 500
    assert message.startswith("Your server's job 100 ended before JupyterLab answered: it failed.")
    assert message.endswith(
        f"The end of its output ({home}/.jupyterhub-slurm-100.log):\nloading modules\nprologue: no such module 'python/9'"
    )
    assert "<pre>loading modules\nprologue: no such module &#x27;python/9&#x27;</pre>" in (
        info.value.jupyterhub_html_message
    )
    assert sp.job_id == ""  # nothing left to stop: the user can start again
    (s.d / "submit-state").write_text("RUNNING node042|None\n")
    assert run(sp.start()) == ("node042", 8888)


def test_the_hub_reads_only_the_users_own_regular_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root's\n")
    link = tmp_path / "link"
    link.symlink_to(secret)
    assert read_tail(str(link), ME) is None  # never through a symlink
    if os.geteuid() == 0:
        os.chown(secret, 65534, 65534)
        assert read_tail(str(secret), ME) is None  # not a file of another user
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_tail(str(fifo), ME) is None
    long = tmp_path / "long"
    long.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert read_tail(str(long), ME) == "\n".join(f"line {i}" for i in range(4980, 5000))


def test_a_cancel_while_the_scheduler_is_down_happens_once_it_answers(slurm):
    s, config = slurm
    s.job("501", "RUNNING node042|None")
    sp = spawner_for(config, "501")
    s.down()
    REAPER.interval = 0.2

    async def scenario() -> None:
        t0 = time.monotonic()
        await sp.stop()
        assert time.monotonic() - t0 < 5  # the hub does not hang on a scheduler that is down
        assert "501" in REAPER.pending
        s.down(False)
        deadline = time.monotonic() + 5
        while REAPER.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    try:
        run(scenario())
    finally:
        REAPER.interval = 10.0
    assert s.calls("scancel")[-1] == "501" and not REAPER.pending
    assert (s.d / "jobs" / "501").read_text().startswith("CANCELLED")


def test_jobs_to_cancel_are_kept_on_disk_and_taken_up_by_the_next_hub(slurm, tmp_path):
    """A Stop while the controller is down, then the hub restarts (its reaper's memory is gone):
    the job is on the hub's list on disk, and the next hub cancels it once the controller answers."""
    s, config = slurm
    s.job("601", "RUNNING node042|None")
    sp = spawner_for(config, "601")
    s.down()
    path = tmp_path / "hub-state" / "hubstock-cancels.json"
    path.parent.mkdir()
    REAPER.path, REAPER.interval = path, 0.2

    async def scenario() -> None:
        await sp.stop()  # this hub ends with the job still to cancel
        assert [j["job_id"] for j in json.loads(path.read_text())["jobs"]] == ["601"]
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        task = REAPER._task  # the hub dies: its reaper's task and memory are gone
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        REAPER.pending.clear()
        assert REAPER.resume(path) == 1  # the next hub
        s.down(False)
        deadline = time.monotonic() + 10
        while REAPER.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    try:
        run(scenario())
    finally:
        REAPER.path, REAPER.interval = None, 10.0
    assert s.calls("scancel")[-1] == "601" and not REAPER.pending
    assert json.loads(path.read_text())["jobs"] == []


def test_a_job_the_hub_lost_at_a_restart_is_cancelled_before_its_record_goes(slurm, tmp_path):
    """A spawn still queued when the hub restarted: JupyterHub kept no job id, finds the server
    stopped and runs the post-stop hook; the session record still names the job: it is cancelled."""
    s, config = slurm
    s.job("602", "PENDING (null)|Priority")
    root = Root(tmp_path / "root")
    register(root, SessionRecord(user=ME, server="", generation="0001", job_id="602"))
    sp = spawner_for(config)  # no job id: what the restarted hub knows
    run(PostStopHook(root.path)(sp))
    assert s.calls("scancel")[-1] == "602"
    assert (s.d / "jobs" / "602").read_text().startswith("CANCELLED")
    assert read_session(root, ME, "") is None
    assert [ln["action"] for ln in map(json.loads, root.audit_log.read_text().splitlines())][-2:] == [
        "cancel-lost",
        "stop",
    ]
    # the usual case: the record names a job that has ended (the server stopped with it): no cancel
    s.job("603", "COMPLETED node042|None")
    register(root, SessionRecord(user=ME, server="", generation="0001", job_id="603"))
    calls = len(s.calls("scancel"))
    run(PostStopHook(root.path)(spawner_for(config)))
    assert len(s.calls("scancel")) == calls and read_session(root, ME, "") is None
    assert json.loads(root.audit_log.read_text().splitlines()[-1])["action"] == "stop"


# ----------------------------------------------------------------------------------------------------------
# requests: validated before the pre-spawn hook


def test_a_refused_request_is_audited_without_its_values_and_forgotten(slurm, tmp_path):
    _, config = slurm
    sp = spawner_for(config)
    hooked: list[str] = []
    sp.pre_spawn_hook = lambda spawner: hooked.append("pre")
    sp.post_stop_hook = lambda spawner: hooked.append("post")
    hostile = {"cpus": "1; touch /tmp/pwned", "queue": "debug"}
    sp.orm_spawner.user_options = hostile  # as JupyterHub keeps what a request asked for

    async def scenario() -> None:
        with pytest.raises(web.HTTPError) as info:
            await sp._run_apply_user_options(hostile)  # what JupyterHub runs before the pre-spawn hook
        assert info.value.status_code == 400 and "cpus must be" in info.value.jupyterhub_message
        await asyncio.ensure_future(asyncio.sleep(0))
        assert sp.run_post_stop_hook() is None  # JupyterHub's cleanup after the failed start: nothing to undo

    run(scenario())
    assert hooked == []
    assert sp.orm_spawner.user_options == {}  # an empty request next time gets the defaults, not these
    lines = [json.loads(ln) for ln in Root(tmp_path / "root").audit_log.read_text().splitlines()]
    assert [(ln["action"], ln["user"]) for ln in lines] == [("refused", ME)]
    assert lines[0]["reason"] == "cpus must be a whole number from 1 to 4 on queue 'debug'."
    assert "pwned" not in json.dumps(lines)

    # a good request: normalized, kept while the server runs; the site's defaults for an empty one
    run(sp._run_apply_user_options({"cpus": "2", "walltime": "1-00:00:00", "queue": "long"}))
    assert sp.user_options == {"queue": "long", "cpus": 2, "memory": "1G", "gpus": 0, "walltime": "24:00:00"}
    assert sp.orm_spawner.user_options == sp.user_options
    sp.clear_state()
    run(sp._run_apply_user_options({}))
    assert sp.user_options == {"queue": "debug", "cpus": 1, "memory": "1G", "gpus": 0, "walltime": "00:30:00"}
