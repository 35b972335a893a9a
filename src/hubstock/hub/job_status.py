"""The state of a batch spawner's job: the part that asks the scheduler, and what JupyterHub's polling reads.

:class:`HubstockJobStatusPart` is the part of :class:`~hubstock.hub.batch_spawner.HubstockBatchSpawner`
that reads its job's state from the hub's shared :class:`~hubstock.hub.status.StatusPoller` (one
query per interval for the whole hub), falls back to the job's own query when that answer does
not list it, takes a scheduler that does not answer for a job still running, and says why a job
ended (``stop_reason``, which the user sees). While a server starts, it checks the job on the
``startup_poll`` schedule and keeps the phases of the start (:class:`StartPhases`).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping

import batchspawner
from batchspawner.batchspawner import JobStatus, format_template
from traitlets import Float, Unicode, default

from .shell import CommandFailed, Result, Runner, run_shell
from .status import TURNS, UNREACHABLE, StatusPoller, poller_for
from .status_parse import JobInfo, clean, describe_end, parse_squeue
from .traits import Schedule, delays

#: the phases of a start, in order: JupyterHub's own steps before ``start()`` (options, pre-spawn
#: hook), until the submit command gave a job id, until the hub saw the job running, until the
#: server reported its port, until it answered HTTP, and the hub's own part until the spawn is ready
PHASES = ("hook", "submit", "queued", "server_start", "first_answer", "hub")


class StartPhases:
    """When each phase of one start ended (monotonic seconds), and the INFO line that reports them."""

    def __init__(self, hook: float | None) -> None:
        self.began = time.monotonic()  # start() was called
        self.hook = hook
        self.ends: dict[str, float] = {}

    def end(self, phase: str, at: float | None = None) -> None:
        """``phase`` ended now (or ``at``), unless it already had."""
        self.ends.setdefault(phase, time.monotonic() if at is None else at)

    def seconds(self) -> dict[str, float]:
        """Seconds per phase that ended, each from the end of the one before."""
        out = {} if self.hook is None else {"hook": self.hook}
        last = self.began
        for phase in PHASES[1:]:
            if phase in self.ends:
                out[phase] = max(0.0, self.ends[phase] - last)
                last = max(last, self.ends[phase])
        return out


def phase_line(user: str, job_id: str, seconds: dict[str, float]) -> str:
    """``Spawn phases of alice's server, job 42 (s): hook=0.012 submit=0.250 ... total=3.117``."""
    parts = " ".join(f"{k}={v:.3f}" for k, v in seconds.items())
    return f"Spawn phases of {user}'s server, job {job_id} (s): {parts} total={sum(seconds.values()):.3f}"


#: run_command's own limit: none (each caller of :meth:`HubstockJobStatusPart._run` has its deadline)
_NO_DEADLINE = 24 * 3600.0


class HubstockJobStatusPart(batchspawner.BatchSpawnerRegexStates):
    """The job's state from one query per interval for the whole hub, and its end noticed within one."""

    status_interval = Float(
        10.0,
        min=1.0,
        help="""Seconds between two status queries of the hub's jobs. One query (``squeue`` with
        every job's id, ``qstat`` likewise) serves every server of the hub, and a job that ended
        (cancelled, walltime reached, its node failed) is noticed within one interval. It is also
        JupyterHub's ``poll_interval`` for these spawners. Example: 10.""",
    ).tag(config=True)
    status_timeout = Float(
        10.0,
        min=1.0,
        help="""Seconds a status query may take. A query that fails or takes longer means the
        scheduler is not answering, never that a job is gone: servers keep running. Example: 10.""",
    ).tag(config=True)
    batch_status_cmd = Unicode(
        help="""The query of every watched job at once, run by the hub itself (not as the user):
        {job_ids} becomes the ids joined with ``batch_status_sep``. Its answer must list each
        job in the form the spawner reads (``squeue -o '%i|%T %B|%r'``, ``qstat -f`` blocks). '' queries
        each job on its own with ``batch_query_cmd``, as batchspawner does; that is the default when
        the site (or a subclass) sets its own ``batch_query_cmd``, whose answer hubstock cannot batch.
        Example: "squeue -h -t all -j {job_ids} -o '%i|%T %B|%r'".""",
    ).tag(config=True)
    batch_status_sep = Unicode(",", help="What separates the job ids in ``batch_status_cmd``, e.g. ','.").tag(
        config=True
    )
    state_gone_re = Unicode(
        help="""What a failed status query prints when the scheduler does not know the job any more
        (it ended and was purged); any other failure means the scheduler is not answering, and the
        job is taken to be running. Example: 'Invalid job id specified'.""",
    ).tag(config=True)

    startup_poll = Schedule(
        help="""Seconds between two checks of a starting server: of its job's state until it runs
        (through the hub's shared status query, which asks the scheduler at most twice a second
        however many servers start), then of its first HTTP answer once it reported its port (which
        the hub takes the moment it arrives). The first values apply first, the last one repeats.
        Replaces batchspawner's ``startup_poll_interval``. Example: [0.05, 0.1, 0.15, 0.2, 0.25].""",
    ).tag(config=True)

    #: the job as the scheduler last listed it
    _job_info: JobInfo | None = None
    #: set when the hub first saw the starting job running
    _running: asyncio.Event | None = None

    @default("poll_interval")
    def _poll_interval_default(self) -> int:
        return max(1, math.ceil(self.status_interval))

    _status_parser: Callable[[str], dict[str, JobInfo]] = staticmethod(parse_squeue)
    _stopped_by_hub: bool = False
    _submitted_at: float = 0.0  # monotonic seconds

    # -- every scheduler command goes through batchspawner's ``run_command``

    async def run_command(self, cmd: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        """batchspawner's contract: run ``cmd`` (with ``input`` on its stdin), return its stdout, raise
        :class:`RuntimeError` (here :class:`~hubstock.hub.shell.CommandFailed`, with the whole result)
        when it fails. Every scheduler command of these spawners (submit, status queries, cancel) goes
        through it, so a site that wraps it (ssh to a login node, another sudo) wraps them all. Unlike
        batchspawner's, it runs the command in a process group of its own, which is killed when the
        caller stops waiting (each caller has its own deadline), and it logs no environment."""
        res = await run_shell(cmd, env, _NO_DEADLINE, stdin=input)
        if not res.ok:
            raise CommandFailed(res)
        return res.out

    async def _run(
        self, cmd: str, timeout: float, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        """``cmd`` through :meth:`run_command` (the site's, if it wraps it), for at most ``timeout`` seconds:
        its :class:`~hubstock.hub.shell.Result` (returncode None: no answer in time)."""
        t0 = time.monotonic()
        try:
            out = await asyncio.wait_for(self.run_command(cmd, input=input, env=env), timeout)
        except TimeoutError:
            return Result("", f"no answer within {timeout:g} s", None, time.monotonic() - t0)
        except CommandFailed as e:
            return e.result
        except RuntimeError as e:  # a site's run_command: its message is what the command said
            return Result("", str(e), 1, time.monotonic() - t0)
        return Result((out or "").strip(), "", 0, time.monotonic() - t0)

    def _runner(self) -> Runner:
        """:meth:`_run` in the form the hub's shared poller and reaper take."""

        async def run(
            cmd: str, env: Mapping[str, str] | None, timeout: float, stdin: str | None = None
        ) -> Result:
            return await self._run(cmd, timeout, input=stdin, env=dict(env) if env is not None else None)

        return run

    def _poller(self) -> StatusPoller | None:
        """The hub's shared poller for this spawner's query command (None: query each job alone)."""
        if not self.batch_status_cmd:
            return None
        wrapped = type(self).run_command is not HubstockJobStatusPart.run_command
        return poller_for(
            self.batch_status_cmd,
            type(self)._status_parser,
            sep=self.batch_status_sep,
            gone=self.state_gone_re,
            env=None,  # the hub's own environment, as batchspawner queries jobs
            run=self._runner() if wrapped else None,
            via=type(self).run_command if wrapped else None,
            interval=self.status_interval,
            timeout=self.status_timeout,
        )

    def _single_info(self, text: str) -> JobInfo | None:
        """The job in the answer of the per-job ``batch_query_cmd``."""
        return None

    def _classify(self) -> JobStatus:
        if self.state_isrunning():
            return JobStatus.RUNNING
        if self.state_ispending():
            return JobStatus.PENDING
        if self.state_isunknown():
            return JobStatus.UNKNOWN
        return JobStatus.NOTFOUND

    async def _job_status(self, max_age: float) -> JobStatus:
        """The job's status from the hub's shared answer at most ``max_age`` seconds old (or a new
        one, never one from before the job's submission), and from the job's own query when that
        answer does not list it."""
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        waiting = TURNS.turn()  # thousands of servers polled at once go on a hundred per loop pass
        if waiting is not None:
            await waiting
        poller = self._poller()
        if poller is not None:
            info = await poller.status(self.job_id, max_age, since=self._submitted_at)
            if info is UNREACHABLE:
                error = poller.last.error if poller.last else None
                self.job_status = error or "the scheduler is not answering"
                return JobStatus.UNKNOWN
            if isinstance(info, JobInfo):
                self._job_info = info
                self.job_status = info.status
                return self._classify()
            if not poller.may_look_up_alone():
                # not listed, and the hub's lookups of this interval are spent (an answer that was
                # empty or garbled): the job keeps its last known state until a later interval
                last = self._classify() if self.job_status else JobStatus.UNKNOWN
                return last if last in (JobStatus.PENDING, JobStatus.RUNNING) else JobStatus.UNKNOWN
        return await self.query_job_status()

    async def _watch_start(self, phases: StartPhases) -> None:
        """Check the starting job's state: on the ``startup_poll`` schedule until it runs (then
        ``_running`` is set), then every second; return once the scheduler no longer runs it."""
        waits = delays(self.startup_poll)
        wait = self.startup_poll[0]
        while True:
            status = await self._job_status(wait)  # an answer no older than the last wait
            if status == JobStatus.NOTFOUND:
                return
            if status == JobStatus.RUNNING and self._running and not self._running.is_set():
                phases.end("queued")
                if hasattr(self, "mock_port"):  # batchspawner's test hook: the port the server would report
                    self.port = self.mock_port
                self._running.set()
            wait = 1.0 if self._running and self._running.is_set() else next(waits)
            await asyncio.sleep(wait)

    def _gone(self, text: str, returncode: int | None) -> bool:
        """Whether a failed command's output says the scheduler does not know the job."""
        said = f"{text}\n(exit status {returncode})"
        return bool(self.state_gone_re and re.search(self.state_gone_re, said))

    async def query_job_status(self) -> JobStatus:
        """This job alone, as batchspawner asks. A query that fails is UNKNOWN (the job keeps running
        as far as the hub knows) unless the scheduler says it does not know the job (``state_gone_re``)."""
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        subvars = self.get_req_subvars()
        subvars["job_id"] = self.job_id
        cmd = " ".join(
            (format_template(self.exec_prefix, **subvars), format_template(self.batch_query_cmd, **subvars))
        )
        res = await self._run(cmd, self.status_timeout)
        if res.ok:
            self.job_status = res.out
            self._job_info = self._single_info(res.out)
            return self._classify()
        self.job_status = clean(res.err or res.out)
        if self._gone(self.job_status, res.returncode):
            self._job_info = None
            return JobStatus.NOTFOUND
        self.log.warning(
            "Status query of job %s failed (%s); it is taken to be still running",
            self.job_id,
            self.job_status[:200] or f"exit status {res.returncode}",
        )
        return JobStatus.UNKNOWN

    async def poll(self) -> int | None:
        """None while the job is pending, running or the scheduler does not answer; 1 once it ended
        (with why in ``stop_reason``, which the user sees)."""
        status = await self._job_status(self.status_interval + self.status_timeout)
        if status in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.UNKNOWN):
            return None
        if self.job_id and not self._stopped_by_hub:
            why = describe_end(self._job_info, self.scheduler)
            self.stop_reason = f"Your server's job {self.job_id} ended: {why}."
            self.log.warning("%s: %s", self._log_name, self.stop_reason)
        self.clear_state()
        return 1

    def start_polling(self) -> None:
        """JupyterHub's polling, and the shared poller's call back as soon as the job's state changes."""
        super().start_polling()
        poller = self._poller()
        if poller is not None and self.job_id and self.poll_interval > 0:
            poller.watch(self.job_id, self.poll_and_notify)

    def stop_polling(self) -> None:
        super().stop_polling()
        poller = self._poller()
        if poller is not None and self.job_id:
            poller.unwatch(self.job_id)
