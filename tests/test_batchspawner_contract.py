"""batchspawner's contract, as batchspawner 1.3.0's own tests (``batchspawner/tests/test_spawners.py``)
check it, against hubstock's spawners.

Those tests override ``run_command`` with a script of (expected command, answer) pairs and run a
spawner through poll, start, poll, stop and poll. The same is done here with hubstock's Slurm and
PBS spawners configured from a site's hubstock.toml: every scheduler command (submit, the
status queries, cancel, PBS's forced delete) must reach the site's ``run_command``, with the
batch script on its input and the site's ``exec_prefix`` in front, and a site's own
``batch_query_cmd`` must be the query that is run. The differences that remain are hubstock's on
purpose, and listed in the README ("batchspawner's contract"):

- the job's requests come from hubstock.toml, so batchspawner's ``req_nprocs``, ``req_memory``,
  ``req_runtime``, ``req_options``... are refused (the tests here set the limits in hubstock.toml);
- the hub asks about all its jobs in one batched query (``batch_status_cmd``) unless the site set
  its own ``batch_query_cmd``, whose answer cannot be batched (then each job on its own);
- a failed submission is a message for the user (tornado's ``HTTPError``), not a ``RuntimeError``;
- ``stop`` asks once more after the cancel (each answer "gone" here);
- the Torque flavour reads ``qstat -f`` text, not batchspawner's ``qstat -x`` XML.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from tests.test_spawner_core import ME, jupyterhub_spawner, site_config
from tornado import web

from hubstock.hub.spawner import PBSSpawner, SlurmSpawner
from hubstock.hub.status import forget_pollers

HOST = "userhost123"
JOB = "12345"

#: per scheduler: the site's own per-job query, and the (command pattern, answer) script of one
#: spawn: submit, pending, not answering, running, cancel, gone
SCRIPTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "slurm": (
        "squeue -h -j {job_id} -o '%T %N'",
        [
            (r"^PREFIX sbatch", JOB),
            (r"^PREFIX squeue -h -j 12345 -o '%T %N'$", "PENDING "),
            (r"^PREFIX squeue", "slurm_load_jobs error: Unable to contact slurm controller"),
            (r"^PREFIX squeue", f"RUNNING {HOST}"),
            (r"^PREFIX squeue", f"RUNNING {HOST}"),
            (r"^PREFIX scancel 12345$", ""),
            (r"^PREFIX squeue", ""),
        ],
    ),
    "pbs": ("site-qstat -f {job_id}", []),  # below: PBS Pro's and Torque's differ in job id and end
    "torque": ("site-qstat -f {job_id}", []),
}
for _flavour, _job, _end in (("pbs", f"{JOB}.pbs01", "F"), ("torque", JOB, "C")):
    _id = re.escape(_job)
    SCRIPTS[_flavour][1].extend(
        [
            (r"^PREFIX qsub", _job),
            (rf"^PREFIX site-qstat -f {_id}$", "job_state = Q"),
            (r"^PREFIX site-qstat", "qstat: cannot connect to server pbs01"),
            (r"^PREFIX site-qstat", f"job_state = R\nexec_host = {HOST}/2*1"),
            (r"^PREFIX site-qstat", f"job_state = R\nexec_host = {HOST}/2*1"),
            (rf"^PREFIX qdel {_id}$", ""),
            (r"^PREFIX site-qstat", f"job_state = {_end}"),
        ]
    )


def scripted(base: type, script: list[tuple[str, str]], seen: list[tuple[str, str | None]]) -> type:
    """``base`` with batchspawner's test ``run_command``: each command must match the next pattern of
    ``script`` and gets its answer (the last answer repeats); ``seen`` keeps (command, stdin)."""
    steps = list(script)

    class Scripted(base):  # type: ignore[misc, valid-type]
        async def run_command(self, cmd: str, input: str | None = None, env: Any = None) -> str:
            seen.append((cmd, input))
            pattern, answer = steps.pop(0) if len(steps) > 1 else steps[0]
            assert re.search(pattern, cmd), f"expected {pattern!r}, got {cmd!r}"
            return answer

    return Scripted


def make(tmp_path: Path, scheduler: str, cls: type, **traits: Any) -> Any:
    (tmp_path / "bin").mkdir(exist_ok=True)
    spawner = jupyterhub_spawner(site_config(tmp_path, scheduler, tmp_path / "bin"), cls=cls)
    spawner.exec_prefix = "PREFIX"
    for name, value in traits.items():
        setattr(spawner, name, value)
    spawner.startup_poll = [0.01]
    spawner.user_options = {"queue": "debug", "cpus": "2", "memory": "2G", "walltime": "1:00:00"}
    return spawner


@pytest.fixture(autouse=True)
def _fresh_pollers():
    forget_pollers()
    yield
    forget_pollers()


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "torque"])
def test_every_command_goes_through_run_command_with_the_sites_query(tmp_path, scheduler):
    query, script = SCRIPTS[scheduler]
    seen: list[tuple[str, str | None]] = []
    base = SlurmSpawner if scheduler == "slurm" else PBSSpawner
    traits: dict[str, Any] = {"batch_query_cmd": query}
    if scheduler != "slurm":
        traits.update(flavour="pro" if scheduler == "pbs" else "torque", stop_grace=0)
    spawner = make(tmp_path, scheduler, scripted(base, script, seen), **traits)
    assert spawner.batch_status_cmd == ""  # the site's own query cannot be batched: each job alone

    async def scenario() -> None:
        assert await asyncio.wait_for(spawner.poll(), 5) == 1  # no job: no command
        assert seen == []
        ip, _ = await asyncio.wait_for(spawner.start(), 10)
        assert (ip, spawner.job_id) == (HOST, f"{JOB}.pbs01" if scheduler == "pbs" else JOB)
        assert await asyncio.wait_for(spawner.poll(), 5) is None
        await asyncio.wait_for(spawner.stop(), 10)
        assert await asyncio.wait_for(spawner.poll(), 5) == 1

    asyncio.run(scenario())
    commands = [cmd for cmd, _ in seen]
    assert all(c.startswith("PREFIX ") for c in commands), commands
    kinds = [c.split()[1] for c in commands]
    submit, cancel = ("sbatch", "scancel") if scheduler == "slurm" else ("qsub", "qdel")
    assert kinds[0] == submit and kinds.count(submit) == 1 and kinds.count(cancel) == 1, kinds
    assert set(kinds) == {submit, cancel, query.split()[0]}, kinds  # nothing else was run
    script_in = seen[0][1] or ""
    assert "batchspawner-singleuser" in script_in and "secret-token" not in script_in
    directive = "#SBATCH --cpus-per-task=2" if scheduler == "slurm" else "#PBS -q debug"
    assert directive in script_in


def test_a_slurm_hostlist_from_the_sites_query_gives_the_first_host(tmp_path):
    seen: list[tuple[str, str | None]] = []
    script = [(r"sbatch", JOB), (r"squeue -h -j 12345 -o '%T %N'", "RUNNING node[07-08]")]
    spawner = make(
        tmp_path, "slurm", scripted(SlurmSpawner, script, seen), batch_query_cmd=SCRIPTS["slurm"][0]
    )
    ip, _ = asyncio.run(asyncio.wait_for(spawner.start(), 10))
    assert ip == "node07"


def test_the_batched_query_goes_through_the_sites_run_command_too(tmp_path):
    seen: list[tuple[str, str | None]] = []
    script = [
        (r"^PREFIX sbatch", JOB),
        (r"^squeue -h -t all -j 12345 -o '%i\|%T %B\|%r'$", f"{JOB}|RUNNING {HOST}|None"),
        (r"^PREFIX scancel 12345$", ""),
        (r"^squeue -h -t all -j 12345 ", f"{JOB}|CANCELLED {HOST}|None"),
    ]
    spawner = make(tmp_path, "slurm", scripted(SlurmSpawner, script, seen))
    assert spawner.batch_status_cmd.startswith("squeue -h -t all")  # the default query: batched

    async def scenario() -> None:
        ip, _ = await asyncio.wait_for(spawner.start(), 10)
        assert ip == HOST
        await asyncio.wait_for(spawner.stop(), 10)
        assert await asyncio.wait_for(spawner.poll(), 5) == 1

    asyncio.run(scenario())
    # the batched query is the hub's own (no exec_prefix: it does not run as the user), through the wrapper
    assert [c.split()[:2] for c, _ in seen][:3] == [
        ["PREFIX", "sbatch"],
        ["squeue", "-h"],
        ["PREFIX", "scancel"],
    ]


def test_a_submission_that_fails_in_run_command_is_a_message_for_the_user(tmp_path):
    class Refusing(SlurmSpawner):
        async def run_command(self, cmd: str, input: str | None = None, env: Any = None) -> str:
            raise RuntimeError("sbatch: error: Batch job submission failed: Invalid account")

    spawner = make(tmp_path, "slurm", Refusing)
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(asyncio.wait_for(spawner.start(), 10))
    assert (
        "The scheduler refused the job: sbatch: error: Batch job submission failed: Invalid account"
        in str(e.value.log_message)
    )
    assert spawner.job_id == ""


def test_a_run_command_that_hangs_is_cut_at_the_submit_timeout_and_its_job_cancelled(tmp_path):
    cancelled: list[str] = []
    from hubstock.hub.reaper import REAPER

    class Slow(SlurmSpawner):
        async def run_command(self, cmd: str, input: str | None = None, env: Any = None) -> str:
            if "sbatch" in cmd:
                await asyncio.sleep(1.5)
                return JOB
            cancelled.append(cmd)
            return ""

    spawner = make(tmp_path, "slurm", Slow, submit_timeout=1.0)

    async def scenario() -> None:
        with pytest.raises(web.HTTPError) as e:
            await spawner.start()
        assert e.value.status_code == 503
        for _ in range(200):  # the late submission's job is cancelled through the same run_command
            if cancelled:
                break
            await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
    finally:
        REAPER.pending.clear()
    assert cancelled == [f"PREFIX scancel {JOB}"], (cancelled, ME)
