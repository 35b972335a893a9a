"""Jobs the hub no longer wants but could not cancel at the time: a submission that answered
after the spawn had given up on it, a cancellation while the controller was down, a job
submitted before the hub restarted that the hub no longer tracks.
:data:`REAPER`, the hub's :class:`Reaper`, cancels them as soon as the scheduler takes it.

The list is kept on disk (:mod:`hubstock.store.cancels`, in the hub's ``state_dir``) from the
moment a job is put on it until the scheduler has confirmed it gone, and the hub takes it up
again when it starts (:meth:`Reaper.resume`): no restart forgets a job.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..store.cancels import read_cancels, write_cancels
from ..store.fs import now_iso
from ..store.records import PendingCancel, PendingCancels, RecordError
from .shell import Result, Runner, run_shell
from .status_parse import clean

log = logging.getLogger(__name__)


@dataclass
class _Doomed:
    cmd: str
    env: Mapping[str, str] | None
    gone: str
    since: str = ""
    why: str = ""
    tries: int = 0
    #: the spawner's ``run_command`` (the site's, if it wraps it); None: :func:`run_shell`
    run: Runner | None = None


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
    #: where the list is kept (None: in memory only, as in tests of the spawner alone)
    path: Path | None = None
    _task: asyncio.Task[None] | None = None

    def cancel_later(
        self,
        job_id: str,
        cmd: str,
        env: Mapping[str, str] | None,
        gone: str = "",
        why: str = "",
        run: Runner | None = None,
    ) -> None:
        """Cancel ``job_id`` with ``cmd`` (through ``run``, the spawner's ``run_command``) as soon as
        the scheduler takes it; on disk at once. A hub that restarts runs the command itself."""
        if job_id not in self.pending:
            self.pending[job_id] = _Doomed(cmd, env, gone, now_iso(), why, run=run)
            self._save()
        self._start()

    def resume(self, path: Path) -> int:
        """Keep the list at ``path`` from now on, and take up the jobs a previous hub left there
        (the event loop must run). Returns how many it took up."""
        self.path = path
        try:
            kept = read_cancels(path)
        except RecordError as e:
            log.error("%s; the jobs it named are not cancelled by the hub: cancel them by hand.", e)
            return 0
        for j in kept.jobs:
            if j.job_id not in self.pending:
                self.pending[j.job_id] = _Doomed(j.cmd, None, j.gone, j.since, j.why)
        if kept.jobs:
            log.warning(
                "Taking up %d job(s) to cancel that the hub wanted gone before it restarted: %s",
                len(kept.jobs),
                ", ".join(j.job_id for j in kept.jobs),
            )
            self._start()
        return len(kept.jobs)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = asyncio.ensure_future(self._loop())

    def _save(self) -> None:
        """Write the list (env-free entries: the hub's own environment) where it is kept."""
        if self.path is None:
            return
        record = PendingCancels(
            jobs=[
                PendingCancel(job_id=j, cmd=d.cmd, gone=d.gone, since=d.since or now_iso(), why=d.why)
                for j, d in sorted(self.pending.items())
            ]
        )
        try:
            write_cancels(self.path, record)
        except OSError as e:
            log.error("Could not keep the list of jobs to cancel in %s: %s", self.path, e)

    def adopt(
        self,
        submission: asyncio.Future[Result],
        job_id_of: Callable[[str], str],
        cancel_cmd: Callable[[str], str],
        env: Mapping[str, str] | None,
        gone: str = "",
        run: Runner | None = None,
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
                self.cancel_later(
                    job_id, cancel_cmd(job_id), env, gone, "its submission answered too late", run=run
                )

        submission.add_done_callback(done)

    async def _loop(self) -> None:
        while self.pending:
            for job_id, d in list(self.pending.items()):
                d.tries += 1
                res = await (d.run or run_shell)(d.cmd, d.env, self.timeout, None)
                if res.ok or (d.gone and re.search(d.gone, res.err + res.out)):
                    log.info("Cancelled job %s, which the hub no longer wanted", job_id)
                    self.pending.pop(job_id, None)
                    self._save()
                elif d.tries == 1 or d.tries % 30 == 0:
                    log.warning(
                        "Could not cancel job %s yet (%s); trying again", job_id, clean(res.err)[:200]
                    )
            if self.pending:
                await asyncio.sleep(self.interval)
        self._task = None


#: the hub's reaper
REAPER = Reaper()
