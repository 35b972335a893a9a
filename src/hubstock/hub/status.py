"""The state of every server's batch job: one scheduler query per interval for the whole hub.

batchspawner asks the scheduler about each job on its own (``squeue -j ID``, ``qstat -fx ID``),
so a hub with 1,000 servers costs the controller 1,000 queries every poll. Here every spawner
of the hub that shares a query command reads from one :class:`StatusPoller`: one asyncio task
that asks about all the jobs it watches at once (``squeue -h -t all -j 1,2,3 -o ...``,
``qstat -fx 1 2 3``) once per interval, and keeps the answer for the spawners to read.

- A status that is asked for and not in the last answer (a new job, a hub that has just
  started) is fetched at once, for all such jobs together (:meth:`StatusPoller.status`).
- A job the answer does not list is looked up on its own by the spawner (the per-job
  fallback): the poller never decides that a job is gone from its absence alone.
- A query that fails or times out (the controller is down) is an :data:`UNREACHABLE`
  answer, never "the job is gone": running servers stay running.
- When a watched job's state changes, or it is no longer listed, the poller calls the
  spawner back at once (JupyterHub's own ``poll_and_notify``), so a job that ended is
  noticed within one interval.

:func:`parse_squeue` and :func:`parse_qstat` read the answers (both PBS flavours, and Slurm's
PBS wrappers); :func:`describe_end` says in a few words why a job ended. :class:`Reaper`
cancels jobs the hub no longer wants but could not cancel at the time (a submission that
answered after the spawn had given up, a cancel while the controller was down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: what a job id may look like before it is put into a shell command
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\[\]-]{0,127}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class JobInfo:
    """One job in a scheduler's answer.

    ``status`` is what the spawner's state patterns read (what its per-job query command would
    print: ``"RUNNING node042"`` for Slurm, the job's ``qstat -f`` block for PBS); ``state`` the
    scheduler's own word (``RUNNING``, ``TIMEOUT``, ``R``, ``F``); ``reason``, ``exit_status`` and
    ``comment`` what it says about why (``"None"``, ``"TimeLimit"``, ``"-29"``...).
    """

    job_id: str
    status: str
    state: str
    reason: str = ""
    exit_status: str = ""
    comment: str = ""


class _Unreachable:
    def __repr__(self) -> str:
        return "UNREACHABLE"


#: the answer to :meth:`StatusPoller.status` when the scheduler did not answer
UNREACHABLE = _Unreachable()


@dataclass
class Answer:
    """One query's result: when it was asked (monotonic seconds), about which jobs, and what came back."""

    at: float
    asked: frozenset[str]
    jobs: dict[str, JobInfo]
    error: str | None = None  # the scheduler did not answer: why

    def lookup(self, job_id: str) -> JobInfo | None:
        return self.jobs.get(job_id) or self.jobs.get(job_id.split(".", 1)[0])


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Jobs in the output of ``squeue -h -o '%i|%T %B|%r'``: ``"42|RUNNING node042|None"`` per line."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) < 2 or not parts[0]:
            continue
        job_id, status = parts[0].strip(), parts[1].strip()
        reason = parts[2].strip() if len(parts) > 2 else ""
        jobs[job_id] = JobInfo(job_id, status, status.split(" ", 1)[0], reason=reason)
    return jobs


def parse_qstat(text: str) -> dict[str, JobInfo]:
    """Jobs in the output of ``qstat -f`` or ``qstat -fx`` (PBS Pro, Torque, Slurm's PBS wrappers).

    Each job is a block that starts with ``Job Id: 42.pbs01``, with ``key = value`` lines (a long
    value continues on lines that start with a tab). A job is listed under its full id and, if
    no other job has it, under its number alone (``qsub`` and ``qstat`` may disagree on the
    server's name).
    """
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            blocks.append((line.split(":", 1)[1].strip(), [line]))
        elif blocks:
            blocks[-1][1].append(line)
    jobs: dict[str, JobInfo] = {}
    short: dict[str, list[str]] = {}
    for job_id, lines in blocks:
        attrs: dict[str, str] = {}
        key = None
        for line in lines[1:]:
            if " = " in line and not line.startswith("\t\t"):
                key, _, value = line.strip().partition(" = ")
                attrs[key] = value.strip()
            elif key and line.startswith("\t"):  # a long value goes on
                attrs[key] += line.strip()
        jobs[job_id] = JobInfo(
            job_id,
            "\n".join(lines),
            attrs.get("job_state", ""),
            exit_status=attrs.get("Exit_status", attrs.get("exit_status", "")),
            comment=attrs.get("comment", ""),
        )
        short.setdefault(job_id.split(".", 1)[0], []).append(job_id)
    for number, ids in short.items():
        if len(ids) == 1 and number not in jobs:
            jobs[number] = jobs[ids[0]]
    return jobs


#: why a Slurm job ended, by its state
SLURM_ENDS = {
    "TIMEOUT": "walltime reached",
    "CANCELLED": "cancelled outside the hub (scancel, or an administrator)",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to start",
    "OUT_OF_MEMORY": "it ran out of memory",
    "PREEMPTED": "another job preempted it",
    "DEADLINE": "its deadline passed",
    "FAILED": "it failed",
    "COMPLETED": "the server exited",
    "REVOKED": "the scheduler revoked it",
    "SPECIAL_EXIT": "it ended with a special exit state",
}
#: PBS Pro's own exit statuses (JOB_EXEC_KILL_*): a limit that killed the job
PBS_PRO_LIMITS = {
    "-29": "walltime reached",
    "-27": "it used more memory than it asked for",
    "-26": "it used more virtual memory than it asked for",
    "-28": "it used more CPU time than it asked for",
    "-24": "it used more CPUs than it asked for",
    "-25": "it used more CPUs than it asked for",
}


def describe_end(info: JobInfo | None, scheduler: str) -> str:
    """Why the job ended, in a few words: ``"walltime reached"``, ``"cancelled outside the hub (...)"``.

    ``info`` is the job as the scheduler last listed it (None: it no longer lists the job).
    """
    if info is None:
        return "the scheduler no longer lists it"
    if scheduler == "slurm":
        said = SLURM_ENDS.get(info.state)
        if said is None:
            said = f"it ended ({info.state.lower() or 'unknown state'})"
        if info.state == "FAILED" and info.reason and info.reason not in ("None", "NonZeroExitCode"):
            said += f" ({info.reason})"
        return said
    code = info.exit_status
    if scheduler == "pbs" and code in PBS_PRO_LIMITS:
        return PBS_PRO_LIMITS[code]
    if code.lstrip("-").isdigit():
        n = int(code)
        if n == 0:
            return "the server exited"
        if n > 256:  # killed by a signal (qdel sends SIGTERM)
            sig = n - 256
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return f"it was killed ({name}: qdel, an administrator, or a limit)"
        if n > 0:
            return f"it exited with status {n}"
        return f"the scheduler ended it (exit status {n})"
    if info.comment:
        return f"it ended ({clean(info.comment)[:200]})"
    return "it ended"


def clean(text: str) -> str:
    """``text`` without control characters (tabs and newlines stay)."""
    return _CONTROL.sub("", text)


# ----------------------------------------------------------------------------------------------------------
# running commands


@dataclass
class Result:
    """What a command printed and how it ended (``returncode`` None: it was killed after ``timeout``)."""

    out: str
    err: str
    returncode: int | None
    took: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def run_shell(
    cmd: str, env: Mapping[str, str] | None, timeout: float, stdin: str | None = None
) -> Result:
    """Run ``cmd`` (a shell command line); kill it (its whole process group) after ``timeout`` seconds."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_shell(
        cmd,
        env=dict(env) if env is not None else None,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except TimeoutError:
        kill_group(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        return Result("", f"no answer within {timeout:g} s", None, time.monotonic() - t0)
    except asyncio.CancelledError:
        kill_group(proc)
        raise
    return Result(
        out.decode(errors="replace").strip(),
        err.decode(errors="replace").strip(),
        proc.returncode,
        time.monotonic() - t0,
    )


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` and what it started (it runs in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


# ----------------------------------------------------------------------------------------------------------
# the poller


OnChange = Callable[[], Awaitable[Any] | Any]


@dataclass
class _Watch:
    on_change: OnChange | None
    seen: JobInfo | None = None


@dataclass
class StatusPoller:
    """One batched status query, shared by every spawner with the same command and environment.

    ``command`` has ``{job_ids}``, replaced by the ids joined with ``sep``; ``parse`` reads its
    output. ``gone`` matches what the command prints on failure when it merely does not know
    a job (then the query did answer). ``interval``: seconds between queries while jobs are
    watched; ``timeout``: seconds a query may take (then the answer is :data:`UNREACHABLE`).
    """

    command: str
    parse: Callable[[str], dict[str, JobInfo]]
    sep: str = ","
    gone: str = ""
    env: Mapping[str, str] | None = None
    interval: float = 10.0
    timeout: float = 10.0
    #: how long requests for jobs not yet known wait to be asked together (seconds)
    gather: float = 0.05
    last: Answer | None = None
    queries: int = 0  # how many queries were run (for tests and the logs)
    _watched: dict[str, _Watch] = field(default_factory=dict)
    _wanted: set[str] = field(default_factory=set)
    _next: asyncio.Future[Answer] | None = None
    _lock: asyncio.Lock | None = None
    _loop_task: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _bound: asyncio.AbstractEventLoop | None = None

    # -- what spawners call

    def watch(self, job_id: str, on_change: OnChange | None = None) -> None:
        """Ask about ``job_id`` every interval; call ``on_change()`` when its state changes or it is not listed."""
        if not SAFE_JOB_ID.fullmatch(job_id):
            log.warning("Not watching job %r: not a job id hubstock puts into a command", job_id)
            return
        self._bind()
        seen = self.last.lookup(job_id) if self.last else None
        self._watched[job_id] = _Watch(on_change, seen)
        self._ensure_loop()

    def unwatch(self, job_id: str) -> None:
        self._watched.pop(job_id, None)

    @property
    def watched(self) -> list[str]:
        return list(self._watched)

    async def status(self, job_id: str, max_age: float, since: float = 0.0) -> JobInfo | None | _Unreachable:
        """The job as the scheduler listed it at most ``max_age`` seconds ago and not before ``since``
        (monotonic seconds; asked now, together with every other such request, if the last answer
        is older or did not ask about it); None if the scheduler answered without listing it;
        :data:`UNREACHABLE` if it did not answer."""
        answer = self.last
        now = time.monotonic()
        if answer is None or job_id not in answer.asked or now - answer.at > max_age or answer.at < since:
            answer = await self.ask([job_id])
        if answer.error is not None:
            return UNREACHABLE
        return answer.lookup(job_id)

    async def ask(self, job_ids: Iterable[str] = ()) -> Answer:
        """One query about ``job_ids`` and every watched job, shared with every caller that asks
        before it starts."""
        self._bind()
        self._wanted.update(j for j in job_ids if SAFE_JOB_ID.fullmatch(j))
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
            self._spawn(self._run_next(self._next))
        return await asyncio.shield(self._next)

    # -- inside

    def _bind(self) -> None:
        """Forget the tasks, futures and watches of another event loop (a test's earlier run)."""
        loop = asyncio.get_running_loop()
        if self._bound is not loop:
            self._bound = loop
            self._next, self._lock, self._loop_task = None, None, None
            self._tasks, self._watched, self._wanted = set(), {}, set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_next(self, future: asyncio.Future[Answer]) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            async with self._lock:  # one query at a time; who asks meanwhile shares the next one
                await asyncio.sleep(self.gather)
                if self._next is future:
                    self._next = None
                ids = sorted(self._wanted | set(self._watched))
                self._wanted.clear()
                answer = await self._query(ids)
                self.last = answer
            if not future.done():
                future.set_result(answer)
            self._notify(answer)
        except BaseException as e:
            if not future.done():
                if isinstance(e, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(e)
            raise

    async def _query(self, ids: list[str]) -> Answer:
        at = time.monotonic()
        if not ids:
            return Answer(at, frozenset(), {})
        cmd = self.command.replace("{job_ids}", self.sep.join(ids))
        self.queries += 1
        try:
            res = await run_shell(cmd, self.env, self.timeout)
        except OSError as e:
            return Answer(at, frozenset(ids), {}, error=f"{cmd.split()[0]}: {e}")
        jobs = self.parse(res.out) if res.out else {}
        if res.ok or jobs or (self.gone and re.search(self.gone, res.err)):
            # it answered: about some jobs, or that it knows none of them (each is then looked up alone)
            return Answer(at, frozenset(ids), jobs)
        error = clean(res.err or res.out or f"exit status {res.returncode}")[:300]
        log.warning("Job status query failed (%s); servers keep running meanwhile: %s", cmd.split()[0], error)
        return Answer(at, frozenset(ids), {}, error=error)

    def _notify(self, answer: Answer) -> None:
        """Call back the spawners of jobs that changed state or are not listed."""
        if answer.error is not None:
            return
        for job_id, w in list(self._watched.items()):
            if job_id not in answer.asked:
                continue
            before, now = w.seen, answer.lookup(job_id)
            w.seen = now
            if w.on_change is not None and (now is None or before is None or now.state != before.state):
                self._spawn(_call(w.on_change))

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        """Ask every interval while jobs are watched."""
        while self._watched:
            t0 = time.monotonic()
            try:
                await self.ask()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Job status query failed")
            await asyncio.sleep(max(self.gather, self.interval - (time.monotonic() - t0)))
        self._loop_task = None


async def _call(fn: OnChange) -> None:
    try:
        result = fn()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
    except Exception:
        log.exception("A job status callback failed")


_POLLERS: dict[tuple[Any, ...], StatusPoller] = {}


def poller_for(
    command: str,
    parse: Callable[[str], dict[str, JobInfo]],
    *,
    sep: str,
    gone: str,
    env: Mapping[str, str] | None,
    interval: float,
    timeout: float,
) -> StatusPoller:
    """The hub's poller for ``command`` in ``env`` (one per command and environment), made on first use.
    The interval and timeout of the latest caller apply."""
    key = (command, sep, parse, tuple(sorted(env.items())) if env is not None else None)
    p = _POLLERS.get(key)
    if p is None:
        p = _POLLERS[key] = StatusPoller(command, parse, sep=sep, gone=gone, env=env)
    p.interval, p.timeout, p.gone = interval, timeout, gone
    return p


def forget_pollers() -> None:
    """Drop every poller (tests: each event loop gets its own)."""
    for p in _POLLERS.values():
        if p._loop_task is not None:
            p._loop_task.cancel()
    _POLLERS.clear()


# ----------------------------------------------------------------------------------------------------------
# jobs to cancel later


@dataclass
class _Doomed:
    cmd: str
    env: Mapping[str, str] | None
    gone: str
    tries: int = 0


@dataclass
class Reaper:
    """Cancels jobs the hub gave up on, as soon as the scheduler takes the cancellation.

    ``adopt`` takes a submission that is still running after the spawn gave up on it: whatever
    job it makes is cancelled. ``cancel_later`` retries a cancellation that failed (the
    controller was down) every ``interval`` seconds until it is done or the job is gone
    (``gone`` matches what the cancel command says then).
    """

    interval: float = 10.0
    timeout: float = 30.0
    pending: dict[str, _Doomed] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def cancel_later(self, job_id: str, cmd: str, env: Mapping[str, str] | None, gone: str = "") -> None:
        self.pending[job_id] = _Doomed(cmd, env, gone)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = asyncio.ensure_future(self._loop())

    def adopt(
        self,
        submission: asyncio.Future[Result],
        job_id_of: Callable[[str], str],
        cancel_cmd: Callable[[str], str],
        env: Mapping[str, str] | None,
        gone: str = "",
    ) -> None:
        """When ``submission`` ends, cancel the job it made, if it made one."""

        def done(f: asyncio.Future[Result]) -> None:
            if f.cancelled() or f.exception() is not None or not f.result().ok:
                return
            try:
                job_id = job_id_of(f.result().out)
            except Exception:
                return
            if job_id:
                log.warning("A submission the hub had given up on made job %s; cancelling it", job_id)
                self.cancel_later(job_id, cancel_cmd(job_id), env, gone)

        submission.add_done_callback(done)

    async def _loop(self) -> None:
        while self.pending:
            for job_id, d in list(self.pending.items()):
                d.tries += 1
                res = await run_shell(d.cmd, d.env, self.timeout)
                if res.ok or (d.gone and re.search(d.gone, res.err + res.out)):
                    log.info("Cancelled job %s, which the hub no longer wanted", job_id)
                    self.pending.pop(job_id, None)
                elif d.tries == 1 or d.tries % 30 == 0:
                    log.warning(
                        "Could not cancel job %s yet (%s); trying again", job_id, clean(res.err)[:200]
                    )
            if self.pending:
                await asyncio.sleep(self.interval)
        self._task = None


#: the hub's reaper
REAPER = Reaper()
