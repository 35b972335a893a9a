"""Every PBS Pro job state, on purpose, as the hub reads it (no scheduler: ``qstat -fx`` text as
OpenPBS prints it, from the private OpenPBS rig; the end to end tests are in test_hub.py's
``pbs`` hub).

- Q, H, W, T, S, U, B: the job lives but does not serve. The hub waits for it, keeps a running
  server (a suspended job comes back) and tells the user why it waits.
- R with an ``exec_host``: running there. R before PBS has named its ``exec_host``: still
  starting (never "running on None").
- E, F, X, M, or a job qstat no longer knows: ended.
- qstat cannot reach the server: unknown (the job is taken to be alive).

Also: job ids as qsub prints them, and the job's variables that PBS's ``qsub -v`` cannot pass
(JupyterHub's OAuth scopes are JSON) set by ``export`` lines of the script instead.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import stat
from pathlib import Path

import pytest
from batchspawner.batchspawner import JobStatus
from tests.test_spawner_core import jupyterhub_spawner, site_config
from traitlets.config import Config

from hubstock.hub.batch import pbs_environment, render_batch_script
from hubstock.hub.spawner import PBSSpawner

REPO = Path(__file__).resolve().parent.parent
JOB = "12.pbs01"
_NUMBERS = itertools.count(100 + os.getpid() % 1000 * 1000)


def qstat_fx(state: str, exec_host: str | None = "node042/0", job: str = JOB) -> str:
    """A job's ``qstat -fx`` block as OpenPBS prints it (shortened)."""
    lines = [
        f"Job Id: {job}",
        "    Job_Name = jupyterhub-ada",
        "    Job_Owner = ada@pbs01",
        f"    job_state = {state}",
        "    queue = debug",
        "    server = pbs01",
    ]
    if exec_host:
        lines += [f"    exec_host = {exec_host}", "    exec_vnode = (node042:ncpus=1:mem=1048576kb)"]
    lines += [
        "    Resource_List.ncpus = 1",
        "    Resource_List.select = 1:ncpus=1:mem=1024mb",
        "    Resource_List.walltime = 00:30:00",
        "    Variable_List = PBS_O_HOME=/home/ada,PBS_O_LOGNAME=ada,",
        "\tPATH=/usr/bin:/bin,PBS_O_QUEUE=debug",
    ]
    return "\n".join(lines) + "\n"


def spawner(status: str = "", **kw: object) -> PBSSpawner:
    sp = PBSSpawner(config=Config(), **kw)
    sp.job_id = JOB
    sp.job_status = status
    return sp


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ("Q", "is queued in queue 'debug', waiting for a node"),
        ("H", "is held in queue 'debug'"),
        ("W", "is waiting in queue 'debug' for the start time it was given"),
        ("T", "is being moved in queue 'debug'"),
        ("S", "is suspended in queue 'debug'"),
        ("U", "is suspended in queue 'debug' while its node is busy"),
        ("B", "has begun in queue 'debug'"),
    ],
)
def test_a_job_that_lives_but_does_not_serve_is_pending(state, says):
    sp = spawner(qstat_fx(state, exec_host="node042/0" if state in "SU" else None))
    assert sp.state_ispending() and not sp.state_isrunning()
    message = sp.pending_message(" in queue 'debug'")
    assert message.startswith(f"Job {JOB} {says}") and message.endswith("..."), message


def test_running_only_once_pbs_names_the_node():
    sp = spawner(qstat_fx("R", exec_host=None))
    assert not sp.state_isrunning() and sp.state_ispending()
    assert sp.pending_message(" in queue 'debug'") == (
        f"Job {JOB} is starting in queue 'debug'; waiting for the scheduler to name its node..."
    )
    sp.job_status = qstat_fx("R", exec_host="node042/0*2+node043/0*2")
    assert sp.state_isrunning() and not sp.state_ispending()
    assert sp.state_gethost() == "node042"


@pytest.mark.parametrize("state", ["E", "F", "X", "M"])
def test_ended_states(state):
    sp = spawner(qstat_fx(state))
    assert not sp.state_isrunning() and not sp.state_ispending() and not sp.state_isunknown()


@pytest.mark.parametrize(
    "said",
    [
        "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)",
        "Connection refused\nCouldn't connect to cluster: 198.18.0.1",
    ],
)
def test_a_server_that_does_not_answer_is_unknown(said):
    assert spawner(said).state_isunknown()


def test_the_torque_flavour_keeps_a_suspended_job_too():
    sp = spawner(qstat_fx("S"), flavour="torque")
    assert sp.state_ispending() and not sp.state_isrunning()


@pytest.mark.parametrize(
    ("out", "job_id"),
    [("12.pbs01", "12.pbs01"), ("12.pbs01.cluster.local\n", "12.pbs01.cluster.local"), ("4242\n", "4242")],
)
def test_job_ids_as_qsub_prints_them(out, job_id):
    assert spawner().parse_job_id(out) == job_id


@pytest.mark.parametrize("out", ["", "qsub: Unknown queue", "12.pbs01; reboot"])
def test_no_job_id_in_anything_else(out):
    with pytest.raises(ValueError):
        spawner().parse_job_id(out)


# ------------------------------------------------------------------ poll: what clears a server


def _qstat_standin(tmp: Path) -> tuple[Path, Path]:
    """A ``qstat`` that prints the file ``reply`` (or, if ``fail`` exists, fails as PBS does)."""
    bindir = tmp / "bin"
    bindir.mkdir()
    reply = tmp / "reply"
    script = bindir / "qstat"
    script.write_text(
        f'#!/bin/sh\nif [ -e "{tmp}/fail" ]; then cat "{tmp}/fail" >&2; exit 255; fi\ncat "{reply}"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bindir, reply


@pytest.mark.parametrize(
    ("state", "alive"),
    [("Q", True), ("H", True), ("S", True), ("U", True), ("R", True), ("E", False), ("F", False)],
)
def test_poll_keeps_the_server_of_a_job_that_lives(tmp_path, monkeypatch, state, alive):
    bindir, reply = _qstat_standin(tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    job = f"{next(_NUMBERS)}.pbs01"  # the hub's shared status answers are kept a while, by job id
    reply.write_text(qstat_fx(state, job=job))
    sp = jupyterhub_spawner(site_config(tmp_path, "pbs", bindir), PBSSpawner)
    sp.job_id = job
    assert asyncio.run(sp.poll()) == (None if alive else 1)
    assert (sp.job_id == job) is alive  # an ended job's state is cleared, a living one's kept


def test_poll_keeps_the_server_while_pbs_does_not_answer(tmp_path, monkeypatch):
    bindir, _ = _qstat_standin(tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    (tmp_path / "fail").write_text(
        "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)\n"
    )
    sp = jupyterhub_spawner(site_config(tmp_path, "pbs", bindir), PBSSpawner)
    sp.job_id = job = f"{next(_NUMBERS)}.pbs01"
    assert asyncio.run(sp.query_job_status()) == JobStatus.UNKNOWN
    assert asyncio.run(sp.poll()) is None and sp.job_id == job


# ------------------------------------------------------------------ the job's environment


SCOPES = '["access:servers!server=ada/", "access:servers!user=ada"]'


def test_what_qsub_v_cannot_pass_is_exported_by_the_script(tmp_path):
    env = {
        "PATH": "/opt/gen/bin:/usr/bin",
        "JUPYTERHUB_API_TOKEN": "0123abcd",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": SCOPES,
        "ODD": "it's a \\ back",
    }
    keepvars, exports = pbs_environment(
        env, "PATH,JUPYTERHUB_API_TOKEN,JUPYTERHUB_OAUTH_ACCESS_SCOPES,ODD,LANG"
    )
    assert keepvars == "PATH,JUPYTERHUB_API_TOKEN,LANG"
    assert exports.splitlines() == [
        f"export JUPYTERHUB_OAUTH_ACCESS_SCOPES='{SCOPES}'",
        "export ODD='it'\"'\"'s a \\ back'",
    ]
    # the shell gives the job exactly the values
    template = (REPO / "spawner" / "pbs.sh").read_text()
    script = render_batch_script(
        template,
        {
            "username": "ada",
            "queue": "debug",
            "runtime": "00:30:00",
            "resources": "select=1:ncpus=1:mem=1024mb",
            "flavour": "pro",
            "keepvars": keepvars,
            "exports": exports,
            "homedir": str(tmp_path),
            "prologue": "",
            "cmd": 'printf "%s\\n" "$JUPYTERHUB_OAUTH_ACCESS_SCOPES" "$ODD"',
            "epilogue": "",
        },
    )
    assert f"#PBS -v {keepvars}" in script.splitlines()
    sh = shutil.which("sh")
    assert sh
    import subprocess

    out = subprocess.run([sh, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [SCOPES, "it's a \\ back"]


def test_a_secret_never_goes_into_the_script():
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN .* a secret never goes into a batch script"):
        pbs_environment({"JUPYTERHUB_API_TOKEN": 'a"b'}, "JUPYTERHUB_API_TOKEN")


def test_the_pbs_pro_spawner_renders_the_exports(tmp_path, monkeypatch):
    sp = jupyterhub_spawner(site_config(tmp_path, "pbs", tmp_path), PBSSpawner)
    monkeypatch.setattr(sp, "get_env", lambda: {"PATH": "/usr/bin", "JUPYTERHUB_OAUTH_SCOPES": SCOPES})
    script = asyncio.run(
        sp._get_batch_script(
            **{**dict.fromkeys(["queue", "runtime", "resources", "prologue", "epilogue", "cmd"], "x")},
            username="ada",
            homedir="/home/ada",
            flavour="pro",
            keepvars="PATH,JUPYTERHUB_OAUTH_SCOPES",
        )
    )
    lines = script.splitlines()
    assert "#PBS -v PATH" in lines and f"export JUPYTERHUB_OAUTH_SCOPES='{SCOPES}'" in lines
    assert lines.index('cd "/home/ada"') < lines.index(f"export JUPYTERHUB_OAUTH_SCOPES='{SCOPES}'")


def test_qsub_runs_in_the_foreground():
    """No background qsub daemon: it would serve every qsub of the same uid for a minute with the
    identity it started with (a user re-created with a reused uid submitted as the old one)."""
    assert PBSSpawner(config=Config()).batch_submit_cmd == "qsub -f"
