"""The hub through scheduler outages, jobs that end on their own, hostile requests and its own
restarts: the real Slurm rig, PAM users, the hub's real proxy.

The module has a Slurm rig of its own (its cores shared by up to 32 jobs, so that several
servers fit on a small machine, and its controller stopped and started by the tests) and one hub whose
``status_interval`` is 5 s. What the tests show:

- a job cancelled outside the hub (``scancel``) is noticed within one interval, and the user
  reads why on the hub's pages;
- a job that fails before its server starts (the site's prologue exits 1) is reported at once
  with the end of the job's own output, and the next spawn works;
- hostile REST requests are refused (400) with no job, no ``spawn`` audit line and no session
  record, only a ``refused`` line each; an empty request after them gets the site's defaults;
- with slurmctld stopped, running servers stay reachable and a new spawn is told within 15 s;
  with it back, the hub and Slurm agree (no orphan job) and a new spawn works;
- a restarted hub re-attaches to a running job and cleans up one that ended while it was down;
- a spawn still queued across two hub restarts leaves no job once the queue opens, and a Stop
  during a controller outage followed by a hub restart cancels the job once slurmctld is back:
  orphans counted by asking Slurm, not the hub.
"""

from __future__ import annotations

import html
import http.cookiejar
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from rigs.hub_rig import Hub
from rigs.hubsite import free_port, hub_settings, start_hub
from rigs.slurm_rig import SlurmRig, create_user, remove_user, require_binaries
from tests.helpers import audit, need_root, session_jobs, stop_during_an_outage, until

from hubstock.store.root import Root

pytestmark = pytest.mark.hub

INTERVAL = 5  # [spawner] status_interval of this module's hub
RUN = secrets.token_hex(2)
PASSWORD = "Outage-and-Back-3"
NAMES = {
    "rest": f"hsrest{RUN}",
    "cancel": f"hscanc{RUN}",
    "prologue": f"hsprol{RUN}",
    "up1": f"hsupa{RUN}",
    "up2": f"hsupb{RUN}",
    "during": f"hsdur{RUN}",
    "kept": f"hskept{RUN}",
    "ended": f"hsend{RUN}",
    "queued": f"hsque{RUN}",
    "outstop": f"hsost{RUN}",
    "killed1": f"hsk1{RUN}",
    "killed2": f"hsk2{RUN}",
    "killed3": f"hsk3{RUN}",
    "killedq": f"hskq{RUN}",
}
HOSTILE = [
    {"cpus": "1; touch /tmp/hubstock-pwned"},
    {"queue": "$(reboot)"},
    {"queue": "debug", "command": "sh"},
    {"cpus": 64},
    {"memory": "999G"},
    {"walltime": "99:00:00"},
    {"walltime": "2:15"},  # minutes:seconds to Slurm, hours:minutes to PBS: refused
    {"cpus": {"$gt": 1}},
    {"memory": ["1G", "2G"]},
    {"queue": "debug\n#SBATCH --uid=0"},
]
DEFAULTS = {"queue": "debug", "cpus": 1, "memory": "1G", "gpus": 0, "walltime": "00:30:00"}


@pytest.fixture(scope="module")
def rig(hub_workdir: Path):
    need_root("the hub outage tests")
    require_binaries()
    r = SlurmRig(hub_workdir / "slurm-outages", oversubscribe=32).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def users(hub_workdir: Path):
    need_root("the hub outage tests")
    homes = hub_workdir / "homes"
    homes.mkdir(mode=0o755, exist_ok=True)
    for name in NAMES.values():
        create_user(name, PASSWORD, homes)
    yield
    for name in NAMES.values():
        remove_user(name)


@pytest.fixture(scope="module")
def broken_prologue(hub_workdir: Path) -> Path:
    """While this file exists, the site's prologue exits 1 (the job fails before its server starts)."""
    return hub_workdir / "prologue-broken"


@pytest.fixture(scope="module")
def hub(hub_workdir: Path, hub_site: Path, channel: Path, rig: SlurmRig, users: None, broken_prologue: Path):
    ports = [free_port() for _ in range(3)]
    text = hub_settings(
        hub_workdir / "root", channel, hub_workdir / "state-outages", "slurm", ports, rig.slurm_conf
    )
    prologue = (
        "echo 'prologue: setting up the site environment'\n"
        f"test ! -e {broken_prologue} || {{ echo 'prologue: module python/3.11 not found' >&2; exit 1; }}"
    )
    spawner = [f"status_interval = {INTERVAL}", "submit_timeout = 10", f"prologue = '''{prologue}'''"]
    (hub_site / "hubstock.toml").write_text(
        text.replace("[spawner]\n", "[spawner]\n" + "\n".join(spawner) + "\n", 1)
    )
    h = start_hub(hub_site, ports[0], hub_workdir / "hub-outages.log", extra_env=rig.env)
    yield h
    h.cleanup_servers = True
    if h.proc is None or h.proc.poll() is not None:
        h.start()
    h.stop()
    rig.wait_no_jobs(timeout=120, active_only=True)


# ----------------------------------------------------------------------------------------------------------
# helpers


def token(hub: Hub, user: str) -> str:
    status, tok = hub.token_for(user, PASSWORD)
    assert status == 201 and tok, (status, hub.log_tail())
    return tok


def spawn(hub: Hub, user: str, tok: str, body: Any = None, timeout: float = 180) -> tuple[int, str, float]:
    """Ask for the user's server: (the answer's status, the last thing the user was told, seconds
    until the server was ready or the spawn failed)."""
    t0 = time.monotonic()
    status, answer = hub.request(
        "POST", f"/hub/api/users/{user}/server", token=tok, body={} if body is None else body, timeout=timeout
    )
    if status not in (201, 202):
        message = answer.get("message", "") if isinstance(answer, dict) else str(answer)
        return status, message, time.monotonic() - t0
    messages = hub.progress(user, tok, timeout=timeout) if status == 202 else []
    if messages and messages[-1].startswith("Spawn failed"):
        return status, messages[-1], time.monotonic() - t0
    hub.wait_for_server(user, tok, timeout=timeout)
    return status, messages[-1] if messages else "ready", time.monotonic() - t0


def stop(hub: Hub, user: str, tok: str) -> None:
    status, _ = hub.request("DELETE", f"/hub/api/users/{user}/server", token=tok, timeout=60)
    assert status in (202, 204), status
    hub.wait_stopped(user, tok)


def running(hub: Hub, user: str, tok: str) -> bool:
    _, model = hub.request("GET", f"/hub/api/users/{user}", token=tok)
    return bool(model.get("servers", {}).get("", {}).get("ready"))


def jobs_of(rig: SlurmRig, user: str) -> list[str]:
    out = rig.run(["squeue", "-h", "-u", user, "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-o", "%i"])
    return out.stdout.split()


def active_jobs(rig: SlurmRig) -> set[str]:
    return set(rig.jobs(active_only=True))


def page(hub: Hub, user: str, path: str) -> tuple[int, str]:
    """A hub page as the user's browser gets it (logged in with the password: pages such as the
    spawn form take no token); its text unescaped."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(hub.url + "/hub/login", timeout=30) as resp:
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', resp.read().decode())
    form = {"username": user, "password": PASSWORD, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
    opener.open(hub.url + "/hub/login", data=urllib.parse.urlencode(form).encode(), timeout=60).close()
    try:
        with opener.open(hub.url + path, timeout=60) as resp:
            return resp.status, html.unescape(resp.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, html.unescape(e.read().decode())


# ----------------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize(("walltime", "limit"), [("02:15:00", "02:15:00"), ("36:30:00", "1-12:30:00")])
def test_slurm_and_its_pbs_commands_read_the_walltime_hubstock_writes(rig, walltime, limit):
    """The batch scripts' walltime lines, as batch_vars spells them, read back by the scheduler:
    Slurm's ``--time`` and (through Slurm's qsub) Torque's ``walltime=``."""
    from hubstock.hub.batch import batch_vars
    from hubstock.limits import Limits, Options

    limits = Limits.model_validate({"queues": [{"name": "debug", "max_cpus": 1, "max_memory": "8G",
                                                "max_walltime": "2-00:00:00"}]})  # fmt: skip
    opts = Options(queue="debug", cpus=1, memory="1G", gpus=0, walltime=walltime)
    slurm = batch_vars(opts, "slurm", limits)["runtime"]
    torque = batch_vars(opts, "torque", limits)["runtime"]
    jobs = [
        rig.run(["sbatch", "--parsable", "--hold", "-o", "/dev/null"],
                input=f"#!/bin/sh\n#SBATCH --time={slurm}\ntrue\n").stdout.strip(),
        rig.run([str(rig.qsub_stdin), "-h", "-o", "/dev/null"],
                input=f"#!/bin/sh\n#PBS -l walltime={torque}\ntrue\n").stdout.strip(),
    ]  # fmt: skip
    try:
        for job in jobs:
            shown = rig.run(["scontrol", "-o", "show", "job", job]).stdout
            assert f"TimeLimit={limit} " in shown, (walltime, slurm, torque, shown)
    finally:
        rig.run(["scancel", *jobs], check=False)


def test_hostile_rest_requests_leave_no_trace_and_an_empty_one_gets_the_defaults(hub, rig, hub_workdir):
    user, root = NAMES["rest"], Root(hub_workdir / "root")
    tok = token(hub, user)
    lines_before = len(audit(root)) if root.audit_log.exists() else 0
    log_before = hub.log_path.stat().st_size
    jobs_before = set(rig.jobs())
    for options in HOSTILE:
        status, body = hub.request("POST", f"/hub/api/users/{user}/server", token=tok, body=options)
        assert status == 400, (options, status, body)
        assert "must" in body["message"] or "unknown server option" in body["message"], body
    assert set(rig.jobs()) <= jobs_before  # no new job (squeue drops old ones once MinJobAge has passed)
    assert not (root.sessions / f"{user}.default.json").exists()  # no session record
    new = audit(root)[lines_before:]
    mine = [ln for ln in new if ln.get("user") == user]
    assert [ln["action"] for ln in mine] == ["refused"] * len(HOSTILE)  # no spawn, no stop
    assert not any(v in json.dumps(mine) for v in ("pwned", "reboot", "999G", "--uid", "$gt", "2:15"))
    with open(hub.log_path, "rb") as f:  # nor JupyterHub's own log ("2:15" would match its clock)
        f.seek(log_before)
        logged = f.read().decode(errors="replace")
    assert "refused" in logged or "400" in logged, logged[-2000:]
    assert not [v for v in ("pwned", "reboot", "999G", "--uid", "$gt") if v in logged], logged[-3000:]
    assert not Path("/tmp/hubstock-pwned").exists()

    # JupyterHub would start the next request without options with the last ones it was sent
    status, told, _ = spawn(hub, user, tok, body={})
    assert status in (201, 202), told
    _, model = hub.request("GET", f"/hub/api/users/{user}", token=tok)
    assert model["servers"][""]["user_options"] == DEFAULTS
    (job,) = jobs_of(rig, user)
    shown = rig.run(["scontrol", "-o", "show", "job", job]).stdout
    assert "Partition=debug" in shown and "TimeLimit=00:30:00" in shown and "NumCPUs=1 " in shown, shown
    stop(hub, user, tok)


def test_a_cancelled_job_is_noticed_within_one_interval_and_the_user_reads_why(hub, rig, hub_workdir):
    user, root = NAMES["cancel"], Root(hub_workdir / "root")
    tok = token(hub, user)
    status, told, _ = spawn(hub, user, tok)
    assert status in (201, 202), told
    (job,) = jobs_of(rig, user)
    rig.run(["scancel", job])
    t0 = time.monotonic()
    while running(hub, user, tok) or hub.request("GET", f"/hub/api/users/{user}", token=tok)[1].get(
        "servers"
    ):
        assert time.monotonic() - t0 < INTERVAL + 10, hub.log_tail()
        time.sleep(0.2)
    noticed = time.monotonic() - t0  # printed below, never asserted (the loop's bound is a timeout)
    assert not (root.sessions / f"{user}.default.json").exists()
    why = f"Your server's job {job} ended: cancelled outside the hub (scancel, or an administrator)."
    # where the user lands when JupyterLab loses its server, and the spawn form
    status, text = page(hub, user, f"/user/{user}/lab")
    assert status == 424 and why in text, (status, text[-3000:])
    status, text = page(hub, user, "/hub/spawn")
    assert status == 200 and why in text, (status, text[-3000:])
    # the next start clears it
    status, told, _ = spawn(hub, user, tok)
    assert status in (201, 202), told
    stop(hub, user, tok)
    status, text = page(hub, user, "/hub/spawn")
    assert status == 200 and "ended:" not in text
    print(f"\nscancel noticed after {noticed:.1f} s (interval {INTERVAL} s)")


def test_a_job_that_fails_before_its_server_starts_is_reported_and_the_next_spawn_works(
    hub, rig, broken_prologue
):
    user = NAMES["prologue"]
    tok = token(hub, user)
    broken_prologue.touch()
    try:
        status, told, took = spawn(hub, user, tok, timeout=60)
    finally:
        broken_prologue.unlink()
    assert "ended before JupyterLab answered: it failed" in told, (status, told, hub.log_tail())
    assert "prologue: module python/3.11 not found" in told  # the end of the job's own output
    assert ".jupyterhub-slurm-" in told and took < 30, (took, told)
    assert jobs_of(rig, user) == []
    status, told, _ = spawn(hub, user, tok)  # the user starts again, no admin needed
    assert status in (201, 202) and running(hub, user, tok), told
    stop(hub, user, tok)


def test_servers_outlive_a_controller_outage_and_spawns_are_told_at_once(hub, rig, hub_workdir):
    root = Root(hub_workdir / "root")
    toks = {who: token(hub, NAMES[who]) for who in ("up1", "up2", "during")}
    for who in ("up1", "up2"):
        status, told, _ = spawn(hub, NAMES[who], toks[who])
        assert status in (201, 202), told
    before = active_jobs(rig)
    assert len(before) == 2 and before == session_jobs(root)

    rig.stop_controller()
    try:
        # longer than two intervals and a status query's timeout: the hub's queries fail meanwhile
        until = time.monotonic() + 2 * INTERVAL + 12
        while time.monotonic() < until:
            for who in ("up1", "up2"):
                status, _ = hub.request("GET", f"/user/{NAMES[who]}/api/status", token=toks[who])
                assert status == 200, (who, status, hub.log_tail())
                assert running(hub, NAMES[who], toks[who]), hub.log_tail()
            time.sleep(1)
        status, told, took = spawn(hub, NAMES["during"], toks["during"], timeout=60)
        print(f"\na spawn during the outage was told after {took:.1f} s ({status}): {told}")
        assert took <= 15, (took, told)
        assert "The batch scheduler is not answering" in told or "did not take your server's job" in told, (
            told
        )
        assert "Servers that are already running are not affected" in told
    finally:
        rig.start_controller()
    time.sleep(INTERVAL + 1)  # one status query with the controller back
    assert active_jobs(rig) == before == session_jobs(root)  # no orphan job, nothing forgotten
    for who in ("up1", "up2"):
        assert running(hub, NAMES[who], toks[who])
    status, told, _ = spawn(hub, NAMES["during"], toks["during"])
    assert status in (201, 202) and running(hub, NAMES["during"], toks["during"]), told
    for who in ("up1", "up2", "during"):
        stop(hub, NAMES[who], toks[who])
    rig.wait_no_jobs(timeout=60, active_only=True)


def test_a_restarted_hub_reattaches_and_cleans_up_a_job_that_ended_while_it_was_down(hub, rig, hub_workdir):
    root = Root(hub_workdir / "root")
    hub.stop()  # this module's hub stops its servers when it stops: now one that keeps them
    hub.cleanup_servers = False
    hub.start()
    toks = {who: token(hub, NAMES[who]) for who in ("kept", "ended")}
    for who in toks:
        status, told, _ = spawn(hub, NAMES[who], toks[who])
        assert status in (201, 202), told
    (kept,) = jobs_of(rig, NAMES["kept"])
    (ended,) = jobs_of(rig, NAMES["ended"])
    hub.stop()
    assert active_jobs(rig) == {kept, ended}  # the hub went, the jobs stayed
    rig.run(["scancel", ended])
    hub.start()
    hub.wait_for_server(NAMES["kept"], toks["kept"])
    assert jobs_of(rig, NAMES["kept"]) == [kept]  # the same job serves the user
    _, model = hub.request("GET", f"/hub/api/users/{NAMES['ended']}", token=toks["ended"])
    assert not model.get("servers"), model  # no stale server
    assert not (root.sessions / f"{NAMES['ended']}.default.json").exists()
    assert active_jobs(rig) == {kept} == session_jobs(root)  # no orphan job
    status, text = page(hub, NAMES["ended"], "/hub/spawn")
    assert status == 200 and f"Your server's job {ended} ended: " in text, text[-3000:]
    stop(hub, NAMES["kept"], toks["kept"])


def _keeping_servers(hub: Hub) -> None:
    """This module's hub, as the site's default: its servers outlive its restarts."""
    if hub.cleanup_servers:
        hub.stop()
        hub.cleanup_servers = False
        hub.start()


def test_a_spawn_still_queued_across_two_hub_restarts_leaves_no_orphan_job(hub, rig, hub_workdir):
    """JupyterHub keeps no job id for a spawn that is still queued; after a restart it finds the
    server stopped. The session record names the job, so the hub cancels it: when the queue opens,
    Slurm has no job of the user."""
    user, root = NAMES["queued"], Root(hub_workdir / "root")
    _keeping_servers(hub)
    tok = token(hub, user)
    record = root.sessions / f"{user}.default.json"
    rig.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"])  # jobs queue, none starts
    try:
        status, answer = hub.request("POST", f"/hub/api/users/{user}/server", token=tok, body={})
        assert status == 202, answer
        until("the job to be queued", lambda: jobs_of(rig, user))
        (job,) = jobs_of(rig, user)
        until("the session record to name the job", lambda: job in record.read_text())
        for _ in range(2):
            hub.stop()
            hub.start()
        until(f"Slurm to end job {job}", lambda: job not in active_jobs(rig), timeout=4 * INTERVAL + 30)
    finally:
        rig.run(["scontrol", "update", "PartitionName=debug", "State=UP"])
    assert jobs_of(rig, user) == []  # the queue is open, and no job of the user is in it
    assert not record.exists()
    actions = [ln["action"] for ln in audit(root) if ln.get("user") == user]
    assert "cancel-lost" in actions, actions


def test_a_stop_during_an_outage_then_a_hub_restart_still_cancels_the_job(hub, rig, hub_workdir):
    """Stop while slurmctld is down: the cancel waits on the hub's list on disk; the hub restarts
    (its memory gone); once slurmctld answers again the job is cancelled."""
    user = NAMES["outstop"]
    _keeping_servers(hub)
    tok = token(hub, user)
    status, told, _ = spawn(hub, user, tok)
    assert status in (201, 202), told
    (job,) = jobs_of(rig, user)
    stop_during_an_outage(hub, rig, user, tok, job, hub_workdir / "state-outages")
    hub.start()
    until(f"Slurm to end job {job}", lambda: job not in active_jobs(rig), timeout=4 * INTERVAL + 60)
    print(f"\njob {job}, stopped during the outage, ended after the hub restarted")
    assert jobs_of(rig, user) == []


def test_a_hub_killed_with_three_servers_running_and_one_queued_accounts_for_every_job(hub, rig, hub_workdir):
    """SIGKILL (the hub, its proxy and its services): the restarted hub re-attaches the three
    running jobs and cancels the queued one it no longer tracks; counted by asking Slurm."""
    root = Root(hub_workdir / "root")
    _keeping_servers(hub)
    users = [NAMES["killed1"], NAMES["killed2"], NAMES["killed3"]]
    queued = NAMES["killedq"]
    toks = {u: token(hub, u) for u in [*users, queued]}
    answers: dict[str, tuple[int, str, float]] = {}
    threads = [
        threading.Thread(target=lambda u=u: answers.update({u: spawn(hub, u, toks[u])})) for u in users
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for u in users:
        assert answers[u][0] in (201, 202) and running(hub, u, toks[u]), answers.get(u)
    kept = {u: jobs_of(rig, u)[0] for u in users}
    rig.run(["scontrol", "update", "PartitionName=batch", "State=DOWN"])  # its jobs queue, none starts
    try:
        status, answer = hub.request(
            "POST", f"/hub/api/users/{queued}/server", token=toks[queued], body={"queue": "batch"}
        )
        assert status == 202, answer
        until("the job to be queued", lambda: jobs_of(rig, queued))
        (pending,) = jobs_of(rig, queued)
        record = root.sessions / f"{queued}.default.json"
        until("the session record to name the job", lambda: pending in record.read_text())
        hub.kill()
        assert active_jobs(rig) >= {*kept.values(), pending}  # the hub went, every job stayed
        hub.start()
        until(
            f"Slurm to end job {pending}", lambda: pending not in active_jobs(rig), timeout=4 * INTERVAL + 30
        )
    finally:
        rig.run(["scontrol", "update", "PartitionName=batch", "State=UP"])
    for u in users:
        hub.wait_for_server(u, toks[u])
        assert jobs_of(rig, u) == [kept[u]]  # the same job serves the user
    assert jobs_of(rig, queued) == []  # the queue is open, and no job of the user is in it
    assert active_jobs(rig) == set(kept.values()) == session_jobs(root)  # every job accounted for
    assert "cancel-lost" in [ln["action"] for ln in audit(root) if ln.get("user") == queued]
    for u in users:
        hub.request("DELETE", f"/hub/api/users/{u}/server", token=toks[u], timeout=60)
    for u in users:
        hub.wait_stopped(u, toks[u], timeout=120)
    rig.wait_no_jobs(timeout=120, active_only=True)
