"""A starting server without fixed waits, and where its start's time went.

The check schedule (``startup_poll``) by value, in ``hubstock.toml`` and on the spawner; the phases
of a start and the INFO line the spawner logs for each; a reported port taken at once; and the
shared status poller asking the scheduler at most once per ``min_gap`` however many servers start.
Stand-in scheduler commands as in ``tests/test_status.py``: no root, no scheduler.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import traitlets
from pydantic import ValidationError
from tests import test_status
from tests.test_spawner_core import site_config
from tests.test_status import spawner_for

from hubstock.hub.job_status import PHASES, StartPhases, phase_line
from hubstock.hub.spawner import SlurmSpawner
from hubstock.hub.status import StatusPoller, parse_squeue
from hubstock.hub.traits import Schedule, delays
from hubstock.site import DEFAULT_STARTUP_POLL, SpawnerSettings

slurm = test_status.slurm  # the fixture: stand-in sbatch, squeue and scancel

# ----------------------------------------------------------------------------------------------------------
# the schedule


def test_delays_take_each_wait_in_turn_then_repeat_the_last():
    assert list(itertools.islice(delays((0.05, 0.1, 0.25)), 6)) == [0.05, 0.1, 0.25, 0.25, 0.25, 0.25]
    assert list(itertools.islice(delays((1.0,)), 3)) == [1.0, 1.0, 1.0]
    assert list(itertools.islice(delays(DEFAULT_STARTUP_POLL), 7)) == [0.05, 0.1, 0.15, 0.2, 0.25, 0.25, 0.25]


def test_the_schedule_trait_takes_what_hubstock_toml_takes():
    class Holder(traitlets.HasTraits):
        schedule = Schedule()

    h = Holder()
    assert h.schedule == DEFAULT_STARTUP_POLL
    h.schedule = [0.05, 1]
    assert h.schedule == (0.05, 1.0)
    for bad in ([], [0], [0.05, -1], [61], "0.1", [0.1] * 21):
        with pytest.raises(traitlets.TraitError, match="a list of 1 to 20 waits in seconds"):
            h.schedule = bad
    assert SpawnerSettings(startup_poll=[0.1, 0.5]).startup_poll == (0.1, 0.5)
    assert SpawnerSettings().startup_poll == DEFAULT_STARTUP_POLL
    with pytest.raises(ValidationError):
        SpawnerSettings(startup_poll=[])
    with pytest.raises(ValidationError):
        SpawnerSettings(startup_poll=[0.001])


def test_the_site_sets_the_spawners_schedule(tmp_path: Path):
    config = site_config(tmp_path, "slurm", tmp_path, extra="startup_poll = [0.02, 0.1, 1]")
    assert config.SlurmSpawner.startup_poll == [0.02, 0.1, 1.0]
    assert SlurmSpawner(config=config).startup_poll == (0.02, 0.1, 1.0)
    assert SlurmSpawner().startup_poll == DEFAULT_STARTUP_POLL


# ----------------------------------------------------------------------------------------------------------
# the phases


def test_phases_are_measured_from_the_end_of_the_one_before():
    p = StartPhases(hook=0.02)
    t = p.began
    p.end("submit", t + 0.3)
    p.end("queued", t + 0.5)
    p.end("queued", t + 0.9)  # a phase ends once
    p.end("server_start", t + 1.5)
    p.end("first_answer", t + 3.0)
    assert p.seconds() == pytest.approx(
        {"hook": 0.02, "submit": 0.3, "queued": 0.2, "server_start": 1.0, "first_answer": 1.5}
    )
    assert list(p.seconds()) == list(PHASES[:-1])
    assert StartPhases(hook=None).seconds() == {}
    line = phase_line("alice", "42", {"hook": 0.02, "submit": 0.3, "hub": 0.011})
    assert line == "Spawn phases of alice's server, job 42 (s): hook=0.020 submit=0.300 hub=0.011 total=0.331"


class Lines(logging.Handler):
    """The spawner's log lines (its logger, traitlets', does not propagate to pytest's)."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.log, self.level = log, log.level
        log.setLevel(logging.INFO)
        log.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def phases(self) -> list[str]:
        self.log.removeHandler(self)
        self.log.setLevel(self.level)
        return [line for line in self.lines if line.startswith("Spawn phases")]


def test_a_start_logs_its_phases_in_one_info_line(slurm):
    s, config = slurm
    (s.d / "submit-state").write_text("PENDING n/a|Priority\n")
    sp = spawner_for(config)
    sp.startup_poll = (0.05,)
    sp.orm_spawner.started = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=0.2)  # as JupyterHub
    logged = Lines(sp.log)

    async def scenario() -> Any:
        start = asyncio.ensure_future(sp.start())
        while not sp.job_id:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        s.job(sp.job_id, "RUNNING node042|None")
        return await asyncio.wait_for(start, 10)

    assert asyncio.run(scenario()) == ("node042", 8888)
    [line] = logged.phases()
    assert re.fullmatch(
        rf"Spawn phases of {sp.user.name}'s server, job 100 \(s\): hook=\d+\.\d+ submit=\d+\.\d+ "
        r"queued=\d+\.\d+ server_start=0\.000 total=\d+\.\d+",  # any figures: a loaded machine is slow
        line,
    ), line
    seconds = dict(re.findall(r"(\w+)=([0-9.]+)", line))
    assert float(seconds["hook"]) >= 0.2  # JupyterHub began the spawn 0.2 s before start()
    assert float(seconds["queued"]) >= 0.3  # the job ran after 0.3 s
    assert "token" not in line and "PATH" not in line


def test_a_start_logs_the_hubs_part_once_the_spawn_is_ready(slurm):
    s, config = slurm
    (s.d / "submit-state").write_text("RUNNING node042|None\n")
    sp = spawner_for(config)
    logged = Lines(sp.log)

    async def scenario() -> None:
        async def spawn() -> None:  # what JupyterHub's spawn does around start(): wait for the server, route
            await sp.start()
            await asyncio.sleep(0.2)

        sp._spawn_future = asyncio.ensure_future(spawn())
        await sp._spawn_future
        await asyncio.sleep(0)

    asyncio.run(scenario())
    [line] = logged.phases()
    assert " server_start=" in line and " hub=0.2" in line, line


def test_the_reported_port_is_taken_at_once(slurm):
    s, config = slurm
    (s.d / "submit-state").write_text("RUNNING node042|None\n")
    sp = spawner_for(config)
    del sp.mock_port  # the port comes as batchspawner-singleuser reports it, through the hub's API
    sp.startup_poll = (5.0,)  # a schedule that would be seen, if the port were polled

    async def scenario() -> None:
        start = asyncio.ensure_future(sp.start())
        await asyncio.sleep(0.6)
        assert not start.done()
        sp.port = 8899  # what batchspawner's API handler does
        # polled on that schedule, the port would be seen 5 s after the start began, 4.4 s from now
        assert await asyncio.wait_for(start, 4.0) == ("node042", 8899)

    asyncio.run(scenario())


# ----------------------------------------------------------------------------------------------------------
# the scheduler's load while servers start


def test_many_quick_checks_cost_one_query_per_min_gap(tmp_path: Path):
    calls = tmp_path / "calls"
    cmd = f"echo {{job_ids}} >> {calls}; for j in $(echo {{job_ids}} | tr , ' '); do echo \"$j|PENDING n/a|None\"; done"
    p = StatusPoller(cmd, parse_squeue, interval=60, timeout=5)
    assert p.min_gap == 0.5

    async def starting(job_id: str, until: float) -> int:
        for checks, wait in enumerate(delays((0.02, 0.05))):  # much quicker than min_gap
            if time.monotonic() >= until:
                return checks
            assert (await p.status(job_id, max_age=wait)).state == "PENDING"
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def scenario() -> list[int]:
        until = time.monotonic() + 2.0
        return await asyncio.gather(*(starting(str(100 + i), until) for i in range(10)))

    checks = asyncio.run(scenario())
    queries = calls.read_text().split()
    assert sum(checks) >= 30  # every start checked often...
    assert 2 <= len(queries) <= 5, queries  # ...and the scheduler got at most one query per 0.5 s for all
    assert queries[-1] == ",".join(str(100 + i) for i in range(10))
