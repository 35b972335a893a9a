"""The spawners' core against stand-in scheduler commands: submit, poll, progress, cancel.

No root and no scheduler: as in batchspawner's own tests, small shell scripts stand in for
``sbatch``/``squeue``/``scancel`` and ``qsub``/``qstat``/``qdel``. They print what the real
commands print for a job that is pending, running or gone (the test moves the job along by
writing its state to a file), and they keep what they were given—the batch script, their
arguments—in files the test reads. The spawners are configured from a site's hubstock.toml by
``apply_site`` and made the way JupyterHub makes them (``User.spawners``), for the user
running the tests.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User
from tornado import web
from traitlets import Unicode
from traitlets.config import Config, PyFileConfigLoader

from hubstock.errors import SiteError
from hubstock.hub.config import apply_site
from hubstock.hub.spawner import PBSSpawner, SlurmSpawner
from hubstock.hub.status import forget_pollers

REPO = Path(__file__).resolve().parent.parent
ME = pwd.getpwuid(os.getuid()).pw_name  # batchspawner looks the user's home up in the password database
JOB = "4242"

# what each stand-in prints for a job in each state: {command: {state: (stdout, stderr, exit code)}}
SLURM = {
    "sbatch": f"{JOB}",
    "squeue": {
        "pending": ("PENDING n/a", "", 0),
        "running": ("RUNNING node042", "", 0),
        "gone": ("", "slurm_load_jobs error: Invalid job id specified", 1),
    },
    "scancel": "scancel",
}
PBS_QSTAT = {
    "pending": (f"Job Id: {JOB}.pbs01\n    job_state = Q\n    queue = debug", "", 0),
    "running": (
        f"Job Id: {JOB}.pbs01\n    job_state = R\n    exec_host = node042/0*2\n    queue = debug",
        "",
        0,
    ),
}
PBS_PRO = {
    "qsub": f"{JOB}.pbs01",
    # qstat -x shows finished jobs too
    "qstat": {**PBS_QSTAT, "gone": (f"Job Id: {JOB}.pbs01\n    job_state = F\n    Exit_status = 271", "", 0)},
    "qdel": "qdel",
}
PBS_TORQUE = {
    **PBS_PRO,
    "qstat": {**PBS_QSTAT, "gone": ("", f"qstat: Unknown Job Id {JOB}.pbs01", 153)},
}
STANDINS = {"slurm": SLURM, "pbs": PBS_PRO, "torque": PBS_TORQUE}


class Scheduler:
    """The stand-in commands in ``bindir``, and what they were given."""

    def __init__(self, tmp: Path, commands: dict[str, Any]) -> None:
        self.bindir = tmp / "bin"
        self.state_dir = tmp / "scheduler"
        self.bindir.mkdir()
        self.state_dir.mkdir()
        self.set("pending")
        for name, reply in commands.items():
            self.write(name, reply)

    def write(self, name: str, reply: Any) -> None:
        """A stand-in ``name``: submit (a str: the job id), query (a dict by state) or cancel (anything else)."""
        d = self.state_dir
        log = f'printf "%s\\n" "$*" >> "{d}/{name}.calls"\n'
        if isinstance(reply, dict):
            cases = "".join(
                f"  {state}) printf \"%s\" '{out}'; printf \"%s\" '{err}' >&2; exit {code} ;;\n"
                for state, (out, err, code) in reply.items()
            )
            body = f'case "$(cat "{d}/state")" in\n{cases}esac\n'
        elif name in ("sbatch", "qsub") or name.startswith("my-"):
            body = f'cat > "{d}/script"\necho {reply}\n'
        else:  # cancel: the job is gone
            body = f'echo gone > "{d}/state"\n'
        path = self.bindir / name
        path.write_text(f"#!/bin/sh\n{log}{body}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def set(self, state: str) -> None:
        (self.state_dir / "state").write_text(state + "\n")

    def calls(self, name: str) -> list[str]:
        f = self.state_dir / f"{name}.calls"
        return f.read_text().splitlines() if f.exists() else []

    @property
    def script(self) -> str:
        """The batch script the submit command got on its standard input."""
        return (self.state_dir / "script").read_text()


SITE_TOML = """\
[hub]
state_dir = "{tmp}/state"
[spawner]
scheduler = "{scheduler}"
exec_prefix = ""
account = "proj42"
start_timeout = 30
environment = {{PATH = "{bindir}:/usr/bin:/bin"}}
{extra}
[[spawner.queues]]
name = "debug"
description = "Short sessions"
max_cpus = 4
max_memory = "8G"
max_walltime = "04:00:00"
directives = ["{directive}"]
[[spawner.queues]]
name = "long"
max_cpus = 2
max_memory = "4G"
max_walltime = "2-00:00:00"
account = "longrun"
[spawner.defaults]
queue = "debug"
memory = "1G"
walltime = "00:30:00"
"""
DIRECTIVE = {
    "slurm": "#SBATCH --exclusive",
    "pbs": "#PBS -W group_list=hpc",
    "torque": "#PBS -W group_list=hpc",
}


def site_config(tmp: Path, scheduler: str, bindir: Path, extra: str = "") -> Config:
    """A site repository with this repository's ``spawner/`` and the config ``apply_site`` makes of it."""
    site = tmp / "site"
    shutil.copytree(REPO / "spawner", site / "spawner")
    (site / "envs").mkdir()
    (site / "hubstock.toml").write_text(
        SITE_TOML.format(
            tmp=tmp, scheduler=scheduler, bindir=bindir, extra=extra, directive=DIRECTIVE[scheduler]
        )
    )
    c = Config()
    apply_site(c, site, root=str(tmp / "root"))
    return c


def jupyterhub_spawner(config: Config, cls: type | None = None, name: str = ME) -> Any:
    """The spawner JupyterHub makes for user ``name`` with ``config`` (``User.spawners[""]``)."""
    db = orm.new_session_factory("sqlite:///:memory:")()
    orm_user = orm.User(name=name)
    db.add(orm_user)
    db.commit()
    spawner_class = cls or (
        SlurmSpawner if config.JupyterHub.spawner_class.endswith("SlurmSpawner") else PBSSpawner
    )
    user = User(orm_user, {"config": config, "hub": Hub(), "spawner_class": spawner_class})
    spawner = user.spawners[""]
    spawner.api_token = "secret-token-never-in-a-script"
    spawner.mock_port = 8888  # batchspawner's test hook: the port batchspawner-singleuser would report
    spawner.startup_poll_interval = 0.05
    return spawner


@pytest.fixture(params=["slurm", "pbs", "torque"])
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Scheduler, Config]:
    scheduler = request.param
    sched = Scheduler(tmp_path, STANDINS[scheduler])
    # batchspawner runs the query and cancel commands with the hub's environment, the submit command with the job's
    monkeypatch.setenv("PATH", f"{sched.bindir}:{os.environ['PATH']}")
    return scheduler, sched, site_config(tmp_path, scheduler, sched.bindir)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _wait_for(check: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


EXPECTED_LINES = {
    "slurm": [
        "#SBATCH --partition=debug",
        "#SBATCH --time=01:30:00",
        "#SBATCH --mem=2048M",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --account=proj42",
        "#SBATCH --exclusive",
    ],
    "pbs": [
        "#PBS -q debug",
        "#PBS -l walltime=01:30:00",
        "#PBS -l select=1:ncpus=2:mem=2048mb",
        "#PBS -A proj42",
        "#PBS -W group_list=hpc",
    ],
    "torque": [
        "#PBS -q debug",
        "#PBS -l walltime=01:30:00",
        "#PBS -l nodes=1:ppn=2",
        "#PBS -l mem=2048mb",
        "#PBS -A proj42",
        "#PBS -W group_list=hpc",
    ],
}


def test_submit_poll_progress_and_cancel(rig):
    scheduler, sched, config = rig
    spawner = jupyterhub_spawner(config)
    spawner.user_options = {"queue": "debug", "cpus": "2", "memory": "2G", "walltime": "1:30:00"}
    submitted: list[str] = []
    spawner.hubstock_on_submit = submitted.append  # what the pre-spawn hook sets, to record the job id

    async def scenario() -> list[str]:
        progress = spawner.progress()
        messages = [(await anext(progress))["message"]]  # before the job exists
        start = asyncio.ensure_future(spawner.start())
        await _wait_for(lambda: spawner.state_ispending() or start.done())
        messages.append((await anext(progress))["message"])
        assert not start.done()
        sched.set("running")
        ip, port = await asyncio.wait_for(start, 10)
        assert (ip, port) == ("node042", 8888)
        messages.append((await anext(progress))["message"])
        with pytest.raises(StopAsyncIteration):  # progress ends once the job runs
            await anext(progress)
        assert await spawner.poll() is None  # running
        sched.set("gone")
        forget_pollers()  # poll reads the hub's shared answer of the last interval: this asks anew
        assert await spawner.poll() == 1  # the job ended on its own
        assert spawner.job_id == "" and set(spawner.get_state()) == {"stop_reason"}  # kept for the user
        return messages

    messages = run(scenario())
    job = JOB if scheduler == "slurm" else f"{JOB}.pbs01"
    assert messages == [
        "Submitting your server as a batch job...",
        f"Job {job} is queued in queue 'debug', waiting for a node...",
        f"Job {job} is running on node042; starting JupyterLab...",
    ]
    assert submitted == [job]
    # what the scheduler got: the site's template, filled from the validated request and the site's settings
    lines = sched.script.splitlines()
    for expected in EXPECTED_LINES[scheduler]:
        assert expected in lines, (expected, sched.script)
    assert any(ln.endswith("batchspawner-singleuser jupyterhub-singleuser") for ln in lines)
    assert "secret-token-never-in-a-script" not in sched.script  # the token travels in the environment
    assert "JUPYTERHUB_API_TOKEN" in sched.script  # by name, for --export / -v
    submit, query = ("sbatch", "squeue") if scheduler == "slurm" else ("qsub", "qstat")
    # PBS Pro's qsub in the foreground (-f): no background qsub daemon serving later submissions
    assert sched.calls(submit) == {"slurm": ["--parsable"], "pbs": ["-f"], "torque": [""]}[scheduler]
    expected_query = {
        "slurm": f"-h -j {JOB} -o %T %B",
        "pbs": f"-fx {JOB}.pbs01",
        "torque": f"-f {JOB}.pbs01",
    }[scheduler]
    # the hub's shared query of all its jobs (here one), and the job's own when that one does not list it
    batched = f"-h -t all -j {JOB} -o %i|%T %B|%r" if scheduler == "slurm" else expected_query
    assert set(sched.calls(query)) <= {expected_query, batched} and batched in sched.calls(query)

    # a second server: cancelled by the hub
    sched.set("pending")

    async def cancel() -> None:
        start = asyncio.ensure_future(spawner.start())
        await _wait_for(lambda: spawner.state_ispending() or start.done())
        sched.set("running")
        await asyncio.wait_for(start, 10)
        await spawner.stop()
        assert await spawner.poll() == 1

    run(cancel())
    cancel_cmd = "scancel" if scheduler == "slurm" else "qdel"
    assert sched.calls(cancel_cmd) == [job]


def test_a_queue_overrides_the_sites_account(rig):
    scheduler, sched, config = rig
    spawner = jupyterhub_spawner(config)
    spawner.user_options = {"queue": "long", "walltime": "2-00:00:00"}
    sched.set("running")
    run(spawner.start())
    lines = sched.script.splitlines()
    account = "#SBATCH --account=longrun" if scheduler == "slurm" else "#PBS -A longrun"
    assert account in lines and not any(
        "proj42" in ln or "group_list" in ln or "exclusive" in ln for ln in lines
    )
    # the user named no cpus or memory: the defaults, capped at the queue's maxima
    if scheduler == "slurm":
        assert {"#SBATCH --partition=long", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=1024M"} <= set(lines)
        assert "#SBATCH --time=2-00:00:00" in lines  # Slurm's days-hours:minutes:seconds
    else:
        assert "#PBS -q long" in lines and "#PBS -l walltime=48:00:00" in lines


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"cpus": "1; touch /tmp/x"},
            "cpus must be a whole number from 1 to 4 on queue 'debug' (you asked for '1; touch /tmp/x').",
        ),
        (
            {"queue": "long", "memory": "5G"},
            "memory must be a size from 256M to 4G, like '4G' or '512M', on queue 'long' (you asked for '5G').",
        ),
        (
            {"command": "sh"},
            "unknown server option 'command'; the options are: queue, cpus, memory, gpus, walltime.",
        ),
    ],
)
def test_bad_options_are_refused_before_anything_is_submitted(rig, options, message):
    _, sched, config = rig
    spawner = jupyterhub_spawner(config)
    spawner.user_options = options
    with pytest.raises(web.HTTPError) as info:
        run(spawner.start())
    assert info.value.status_code == 400 and info.value.jupyterhub_message == message
    assert not (sched.state_dir / "script").exists() and spawner.job_id == ""


def test_a_job_the_scheduler_refuses_is_a_readable_error(rig):
    scheduler, sched, config = rig
    submit = "sbatch" if scheduler == "slurm" else "qsub"
    (sched.bindir / submit).write_text(
        "#!/bin/sh\ncat >/dev/null\necho 'Invalid account or account/partition combination' >&2\nexit 1\n"
    )
    spawner = jupyterhub_spawner(config)
    with pytest.raises(web.HTTPError) as info:
        run(spawner.start())
    assert info.value.status_code == 500
    assert info.value.jupyterhub_message == (
        "The scheduler refused the job: Invalid account or account/partition combination"
    )


def test_a_subclass_batch_script_hook_and_submit_command_are_used(rig):
    scheduler, sched, config = rig
    sched.write("my-submit", JOB if scheduler == "slurm" else f"{JOB}.pbs01")
    base = SlurmSpawner if scheduler == "slurm" else PBSSpawner

    class SiteSpawner(base):  # type: ignore[misc,valid-type]
        batch_submit_cmd = Unicode("my-submit").tag(config=True)  # a subclass default beats the flavour's

        async def _get_batch_script(self, **subvars: Any) -> str:
            script = await super()._get_batch_script(**subvars)
            return script + "# checked by the site\n"

    spawner = jupyterhub_spawner(config, SiteSpawner)
    sched.set("running")
    run(spawner.start())
    assert (
        sched.calls("my-submit") == [""] and sched.calls("sbatch" if scheduler == "slurm" else "qsub") == []
    )
    assert sched.script.endswith("# checked by the site\n")


# ----------------------------------------------------------------------------------------------------------
# batchspawner's req_* settings: honoured or refused, never silently dropped


def _site_config_file(tmp: Path, scheduler: str, bindir: Path, lines: str) -> Path:
    """The site's own ``spawner/jupyterhub_config.py``, with ``lines`` added after ``apply_site``."""
    site_config(tmp, scheduler, bindir)  # writes the site
    config_file = tmp / "site" / "spawner" / "jupyterhub_config.py"
    config_file.write_text(config_file.read_text() + "\n" + lines + "\n")
    return config_file


@pytest.mark.parametrize(
    ("scheduler", "line", "message"),
    [
        (
            "slurm",
            'c.SlurmSpawner.req_account = "proj7"',
            r"c\.SlurmSpawner\.req_account = 'proj7' would be ignored.* set \[spawner\] account .*in hubstock\.toml instead\.",
        ),
        (
            "slurm",
            'c.Spawner.req_qos = "high"',
            r"c\.Spawner\.req_qos = 'high' would be ignored.*\[spawner\] qos",
        ),
        (
            "slurm",
            'c.BatchSpawnerBase.req_nprocs = "8"',
            r"req_nprocs = '8' .*\[\[spawner\.queues\]\] max_cpus and \[spawner\.defaults\] cpus",
        ),
        ("slurm", 'c.SlurmSpawner.req_memory = "64G"', r"\[spawner\.defaults\] memory"),
        ("slurm", 'c.SlurmSpawner.req_runtime = "99:00:00"', r"\[spawner\.defaults\] walltime"),
        ("slurm", 'c.SlurmSpawner.req_reservation = "maint"', r"\[spawner\] reservation"),
        ("slurm", 'c.SlurmSpawner.req_gres = "gpu:1"', r"max_gpus"),
        ("slurm", 'c.SlurmSpawner.req_options = "--exclusive"', r"\[spawner\] directives"),
        ("slurm", 'c.SlurmSpawner.req_partition = "big"', r"\[\[spawner\.queues\]\] name"),
        ("slurm", 'c.SlurmSpawner.req_host = "head"', r"has no meaning for Slurm"),
        (
            "pbs",
            'c.PBSSpawner.req_queue = "workq"',
            r"c\.PBSSpawner\.req_queue = 'workq'.*\[\[spawner\.queues\]\] name",
        ),
        ("torque", 'c.PBSSpawner.req_account = "proj7"', r"\[spawner\] account"),
        ("pbs", 'c.PBSSpawner.req_host = "pbs01; reboot"', r"is not a host name"),
    ],
)
def test_req_settings_made_after_apply_site_are_refused(tmp_path, monkeypatch, scheduler, line, message):
    sched = Scheduler(tmp_path, STANDINS[scheduler])
    config_file = _site_config_file(tmp_path, scheduler, sched.bindir, line)
    monkeypatch.setenv("HUBSTOCK_SITE", str(tmp_path / "site"))
    monkeypatch.setenv("HUBSTOCK_ROOT", str(tmp_path / "root"))
    config = PyFileConfigLoader(config_file.name, path=str(config_file.parent)).load_config()
    with pytest.raises(SiteError, match=message):
        jupyterhub_spawner(config)


def test_req_settings_hubstock_honours(tmp_path, monkeypatch):
    sched = Scheduler(tmp_path, PBS_PRO)
    lines = 'c.PBSSpawner.req_host = "pbs01.cluster"\nc.PBSSpawner.req_epilogue = "echo done"\nc.PBSSpawner.req_keepvars_extra = "LANG"'
    config_file = _site_config_file(tmp_path, "pbs", sched.bindir, lines)
    monkeypatch.setenv("HUBSTOCK_SITE", str(tmp_path / "site"))
    monkeypatch.setenv("HUBSTOCK_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("PATH", f"{sched.bindir}:{os.environ['PATH']}")
    spawner = jupyterhub_spawner(
        PyFileConfigLoader(config_file.name, path=str(config_file.parent)).load_config()
    )
    sched.set("running")
    run(spawner.start())
    lines_ = sched.script.splitlines()
    assert "#PBS -q debug@pbs01.cluster" in lines_ and "echo done" in lines_
    assert any(ln.startswith("#PBS -v ") and ln.endswith(",LANG") for ln in lines_)


def test_a_req_setting_made_by_a_pre_spawn_hook_is_refused_before_submitting(rig):
    _, sched, config = rig
    spawner = jupyterhub_spawner(config)
    spawner.req_account = "proj7"  # as a site's pre-spawn hook might
    with pytest.raises(SiteError, match=r"req_account = 'proj7' would be ignored"):
        run(spawner.start())
    assert not (sched.state_dir / "script").exists()
