"""The state of every server's batch job: one scheduler query per interval for the whole hub.

batchspawner asks the scheduler about each job on its own (``squeue -j ID``, ``qstat -fx ID``),
so a hub with 1,000 servers costs the controller 1,000 queries every poll. Here every spawner
of the hub that shares a query command reads from one :class:`StatusPoller`: one asyncio task
that asks about all the jobs it watches at once (``squeue -h -t all -j 1,2,3 -o ...``,
``qstat -fx 1 2 3``) once per interval, and keeps the answer for the spawners to read.

- A status that is asked for and not in the last answer (a new job, a hub that has just
  started), or a fresher one (a server that is starting), is fetched at once, for all such jobs
  together (:meth:`StatusPoller.status`), but never sooner than ``min_gap`` (0.5 s) after the
  previous query: however many servers start at once, and however quickly each checks its job,
  the scheduler gets at most one query per ``min_gap``.
- A job the answer does not list is looked up on its own by the spawner (the per-job
  fallback): the poller never decides that a job is gone from its absence alone. Those
  lookups are bounded for the whole hub (``fallback_per_interval``, 20 per interval): an answer
  that is empty while jobs were asked, cut short or garbled (:meth:`StatusPoller.suspicious`)
  must not turn into a thousand queries at the moment the controller struggles. Such an answer
  is logged once, its jobs keep their last known state (their servers keep running), and the
  next interval asks again; the jobs over the bound are looked up in later intervals.
- A query that fails or times out (the controller is down) is an :data:`UNREACHABLE`
  answer, never "the job is gone": running servers stay running.
- When a watched job's state changes, or it is no longer listed, the poller calls the
  spawner back at once (JupyterHub's own ``poll_and_notify``), so a job that ended is
  noticed within one interval.

The answers are read by :mod:`hubstock.hub.status_parse` (:func:`parse_squeue`,
:func:`parse_qstat`, :func:`describe_end`), the commands run by :mod:`hubstock.hub.shell`, and
jobs the hub could not cancel at the time are cancelled later by :mod:`hubstock.hub.reaper`'s
:data:`REAPER`; those names are importable from here too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .reaper import REAPER, Reaper
from .shell import Result, Runner, kill_group, run_shell
from .status_parse import PBS_PRO_LIMITS, SLURM_ENDS, JobInfo, clean, describe_end, parse_qstat, parse_squeue

__all__ = [
    "PBS_PRO_LIMITS",
    "REAPER",
    "SAFE_JOB_ID",
    "SLURM_ENDS",
    "TURNS",
    "UNREACHABLE",
    "Answer",
    "Gate",
    "JobInfo",
    "Reaper",
    "Result",
    "StatusPoller",
    "clean",
    "describe_end",
    "forget_pollers",
    "kill_group",
    "parse_qstat",
    "parse_squeue",
    "poller_for",
    "run_shell",
]

log = logging.getLogger(__name__)

#: what a job id may look like before it is put into a shell command
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\[\]-]{0,127}", re.ASCII)


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
    suspicious: bool = False  # it answered, but listed none of the jobs asked, or nothing readable

    def lookup(self, job_id: str) -> JobInfo | None:
        return self.jobs.get(job_id) or self.jobs.get(job_id.split(".", 1)[0])


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
    watched; ``timeout``: seconds a query may take (then the answer is :data:`UNREACHABLE`);
    ``min_gap``: seconds at least from the start of one query to the next (starting servers ask
    for fresh answers; together they get at most one query per ``min_gap``).
    """

    command: str
    parse: Callable[[str], dict[str, JobInfo]]
    sep: str = ","
    gone: str = ""
    env: Mapping[str, str] | None = None
    #: how the query is run (a spawner's wrapped ``run_command``); None: :func:`run_shell`
    run: Runner | None = None
    interval: float = 10.0
    timeout: float = 10.0
    #: how long requests for jobs not yet known wait to be asked together (seconds)
    gather: float = 0.05
    #: the shortest time from one query's start to the next one's (seconds)
    min_gap: float = 0.5
    #: per-job lookups of jobs an answer did not list, at most, per ``interval``, for the whole hub
    fallback_per_interval: int = 20
    last: Answer | None = None
    queries: int = 0  # how many queries were run (for tests and the logs)
    lookups: int = 0  # how many per-job lookups were allowed (for tests and the bench)
    _window: float = float("-inf")  # when the current interval of lookups began (monotonic seconds)
    _window_used: int = 0
    _distrusted: bool = False  # the last answer was suspicious (logged once until a good one)
    _watched: dict[str, _Watch] = field(default_factory=dict)
    _wanted: set[str] = field(default_factory=set)
    _next: asyncio.Future[Answer] | None = None
    _waiting: dict[asyncio.Future[Answer], deque[asyncio.Future[Answer]]] = field(default_factory=dict)
    _lock: asyncio.Lock | None = None
    _loop_task: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _bound: asyncio.AbstractEventLoop | None = None
    _started: float = float("-inf")  # when the last query began (monotonic seconds)

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

    def may_look_up_alone(self) -> bool:
        """Whether a job the last answer did not list may be looked up on its own now: at most
        ``fallback_per_interval`` lookups per ``interval`` for the whole hub (the others wait)."""
        now = time.monotonic()
        if now - self._window >= self.interval:
            self._window, self._window_used = now, 0
        if self._window_used >= self.fallback_per_interval:
            return False
        self._window_used += 1
        self.lookups += 1
        return True

    async def ask(self, job_ids: Iterable[str] = ()) -> Answer:
        """One query about ``job_ids`` and every watched job, shared with every caller that asks
        before it starts."""
        self._bind()
        self._wanted.update(j for j in job_ids if SAFE_JOB_ID.fullmatch(j))
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
            self._spawn(self._run_next(self._next))
        return await self._share(self._next)

    def _share(self, shared: asyncio.Future[Answer]) -> asyncio.Future[Answer]:
        """A future of the caller's own that gets ``shared``'s outcome, :data:`TURNS` at a time: when
        thousands of servers wait for one answer, they go on a few hundred per pass of the event loop,
        not all in one (a caller that is cancelled cancels only its own)."""
        mine: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(shared)
        if waiting is None:
            waiting = self._waiting[shared] = deque()
            shared.add_done_callback(self._release)
        waiting.append(mine)
        return mine

    def _release(self, shared: asyncio.Future[Answer]) -> None:
        waiting = self._waiting.get(shared, deque())
        for _ in range(min(len(waiting), TURNS.per_pass)):
            mine = waiting.popleft()
            if mine.done():
                continue
            if shared.cancelled():
                mine.cancel()
            elif shared.exception() is not None:
                mine.set_exception(shared.exception())  # type: ignore[arg-type]
            else:
                mine.set_result(shared.result())
        if waiting:
            asyncio.get_running_loop().call_soon(self._release, shared)
        else:
            self._waiting.pop(shared, None)

    # -- inside

    def _bind(self) -> None:
        """Forget the tasks, futures and watches of another event loop (a test's earlier run)."""
        loop = asyncio.get_running_loop()
        if self._bound is not loop:
            self._bound = loop
            self._next, self._lock, self._loop_task, self._waiting = None, None, None, {}
            self._tasks, self._watched, self._wanted = set(), {}, set()
            self._started = float("-inf")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_next(self, future: asyncio.Future[Answer]) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            async with self._lock:  # one query at a time; who asks meanwhile shares the next one
                await asyncio.sleep(max(self.gather, self._started + self.min_gap - time.monotonic()))
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
        self._started = at
        try:
            res = await (self.run or run_shell)(cmd, self.env, self.timeout, None)
        except OSError as e:
            return Answer(at, frozenset(ids), {}, error=f"{cmd.split()[0]}: {e}")
        jobs = self.parse(res.out) if res.out else {}
        if res.ok or jobs or (self.gone and re.search(self.gone, res.err)):
            # it answered: about some jobs, or that it knows none of them (each is then looked up alone)
            answer = Answer(at, frozenset(ids), jobs, suspicious=res.ok and not jobs)
            self._note(answer, cmd, res.out)
            return answer
        error = clean(res.err or res.out or f"exit status {res.returncode}")[:300]
        log.warning("Job status query failed (%s); servers keep running meanwhile: %s", cmd.split()[0], error)
        return Answer(at, frozenset(ids), {}, error=error)

    def _note(self, answer: Answer, cmd: str, out: str) -> None:
        """Log a suspicious answer once (until a good one comes), and a good one after it."""
        if answer.suspicious and not self._distrusted:
            said = f"{len(out)} characters of nothing it could read" if out else "nothing"
            log.warning(
                "Job status query (%s) answered %s about %d job(s): not trusted; their servers keep "
                "running, at most %d are looked up alone per interval, and the next interval asks again",
                cmd.split()[0],
                said,
                len(answer.asked),
                self.fallback_per_interval,
            )
        elif self._distrusted and not answer.suspicious:
            log.info("Job status query (%s) answers again as it should", cmd.split()[0])
        self._distrusted = answer.suspicious

    def _notify(self, answer: Answer) -> None:
        """Call back the spawners of jobs that changed state or are not listed (not after an
        answer that is not trusted: their jobs are looked up as their own polls come)."""
        if answer.error is not None or answer.suspicious:
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


class Gate:
    """At most ``per_pass`` callers go on per pass of the event loop; the others wait their turn, in
    order. A hub that polls thousands of servers at once (at its start, after an answer) would
    otherwise hold its event loop for all of them in one pass, and serve no request meanwhile."""

    def __init__(self, per_pass: int) -> None:
        self.per_pass = per_pass
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[asyncio.Future[None]] = deque()
        self._used = 0
        self._ticking = False

    def turn(self) -> asyncio.Future[None] | None:
        """None: go on now; else a future to await, done at the caller's turn."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another event loop (a test's): start afresh
            self._loop, self._queue, self._used, self._ticking = loop, deque(), 0, False
        if not self._queue and self._used < self.per_pass:
            self._used += 1
            self._tick_soon()
            return None
        waiter: asyncio.Future[None] = loop.create_future()
        self._queue.append(waiter)
        self._tick_soon()
        return waiter

    def _tick_soon(self) -> None:
        if not self._ticking and self._loop is not None:
            self._ticking = True
            self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        """The next pass: a fresh count, and the next callers in line go on."""
        self._ticking, self._used = False, 0
        while self._queue and self._used < self.per_pass:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._used += 1
        if self._queue or self._used:
            self._tick_soon()


#: the hub's turns of reading job states: spawners' status reads and the wake-ups of those that
#: waited for an answer go on at most this many per pass of the event loop
TURNS = Gate(per_pass=100)


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
    run: Runner | None = None,
    via: object = None,
) -> StatusPoller:
    """The hub's poller for ``command`` in ``env`` (one per command, environment and ``via``: the
    site's ``run_command`` that ``run`` goes through, if it wraps it), made on first use. The
    interval, timeout and ``run`` of the latest caller apply."""
    key = (command, sep, parse, tuple(sorted(env.items())) if env is not None else None, via)
    p = _POLLERS.get(key)
    if p is None:
        p = _POLLERS[key] = StatusPoller(command, parse, sep=sep, gone=gone, env=env)
    p.interval, p.timeout, p.gone, p.run = interval, timeout, gone, run
    return p


def forget_pollers() -> None:
    """Drop every poller (tests: each event loop gets its own)."""
    for p in _POLLERS.values():
        if p._loop_task is not None:
            p._loop_task.cancel()
    _POLLERS.clear()
