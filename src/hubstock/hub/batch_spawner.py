"""The base of hubstock's batch spawners: submit the job, wait for its server, stop it.

:class:`HubstockBatchSpawner` is batchspawner's spawner with what a cluster hub needs on top. Its
configuration and validation of ``user_options`` are :class:`~hubstock.hub.spawn_options.HubstockOptionsPart`,
its job's state :class:`~hubstock.hub.job_status.HubstockJobStatusPart`; here are the rest:

- batch scripts rendered from the validated values only, through batchspawner's
  ``_get_batch_script`` hook, with the variables of :func:`hubstock.hub.batch.batch_vars`
  (batchspawner merges raw ``user_options`` into the template; these spawners do not), and
  no environment in the logs (it carries the server's API token);
- a submission that the scheduler does not take within ``submit_timeout`` is a clear error
  for the user, and a job it makes later is cancelled (:data:`~hubstock.hub.reaper.REAPER`);
- a job that ends before its server answers is reported at once, with the end of its output;
- progress messages that say where the job is (queued in which queue, running on which node);
- no fixed waits while a server starts: its job's state is checked on the ``startup_poll``
  schedule (quick checks first, through the hub's shared status query), its port is taken the
  moment batchspawner-singleuser reports it, and its first HTTP answer is probed on the same
  schedule; one INFO line per start says where the time went (:class:`~hubstock.hub.job_status.StartPhases`).

The concrete spawners (Slurm, PBS) are in :mod:`hubstock.hub.spawner`.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from batchspawner.batchspawner import JobStatus, format_template
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Float, observe

from ..errors import SpawnRefused
from .batch import batch_vars, output_path
from .job_status import HubstockJobStatusPart, StartPhases, phase_line
from .reaper import REAPER
from .refusals import http_error, read_tail
from .shell import Result
from .spawn_options import HubstockOptionsPart
from .status import UNREACHABLE
from .status_parse import JobInfo, clean, describe_end
from .traits import delays

#: what a submit command prints when the scheduler does not answer (nothing was submitted)
_NOT_ANSWERING = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|cannot connect to server"
    r"|Problem loading jobs|communication failure|pbs_connect",
    re.I,
)


#: how long a submission that the hub gave up waiting for may go on in the background (seconds)
_SUBMIT_LIMIT = 600.0


class HubstockBatchSpawner(HubstockOptionsPart, HubstockJobStatusPart):
    """Site limits, the spawn form, validated options and safe submission, for any batchspawner scheduler."""

    submit_timeout = Float(
        10.0,
        min=1.0,
        help="""Seconds the submit command may take. Longer, and the user is told the scheduler is
        not answering; should the submission still go through, its job is cancelled. Example: 10.""",
    ).tag(config=True)

    #: where the job's own output goes (from its batch script)
    _output_path: str | None = None
    #: set when batchspawner-singleuser reports the server's port (through the hub's API)
    _port_reported: asyncio.Event | None = None

    @observe("port")
    def _on_port(self, change: dict[str, Any]) -> None:
        if change["new"] and self._port_reported is not None:
            self._port_reported.set()

    # -- state

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.stop_reason:
            state["stop_reason"] = self.stop_reason
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.stop_reason = str(state.get("stop_reason", ""))

    def clear_state(self) -> None:
        """Forget the job (and the request: the next one without options gets the site's defaults);
        keep ``stop_reason`` for the user."""
        poller = self._poller()
        if poller is not None and self.job_id:
            poller.unwatch(self.job_id)
        super().clear_state()
        self._job_info = None
        self._output_path = None
        self._hubstock_options = None
        self._forget_options()

    # -- start, submit, stop

    async def start(self) -> Any:
        """Submit the job and wait for its server; a job that ends first is reported at once, with
        the end of its own output. Logs where the time went (:class:`~hubstock.hub.job_status.StartPhases`)."""
        phases = StartPhases(self._hook_seconds())
        self.check_scheduler_requests()  # a pre-spawn hook may have set one on this spawner
        opts = self._hubstock_options or self.validated_options()  # before anything reaches a batch script
        self.user_options = opts.to_user_options()
        self._hubstock_options = opts
        self.stop_reason = ""
        self._stopped_by_hub = False
        self._port_reported, self._running = asyncio.Event(), asyncio.Event()
        self.ip = self.traits()["ip"].default_value
        self.port = self.traits()["port"].default_value
        if self.server:
            self.server.port = self.port
        await self.submit_batch_script()
        phases.end("submit")
        if not self.job_id:
            raise http_error(
                SpawnRefused("The scheduler took the job but gave no job id the hub can read.", status=500)
            )
        watch = asyncio.ensure_future(self._watch_start(phases))
        try:
            # batchspawner-singleuser reports the port through the hub's API (or the test hook sets it)
            await self._until(self._port_reported, watch)
            phases.end("queued")  # a port means the job runs, even if no answer said so yet
            phases.end("server_start")
            await self._until(self._running, watch)  # the answer that says on which host
            self.ip = self.state_gethost()
            if await self._wait_answering(watch):
                phases.end("first_answer")
        finally:
            watch.cancel()
        self.log.info("Server job %s of %s started at %s:%s", self.job_id, self.user.name, self.ip, self.port)
        self._report_phases(phases)
        return self.ip, self.port

    async def _until(self, event: asyncio.Event | None, watch: asyncio.Future[None]) -> None:
        """Until ``event`` is set; the error for the user if the job ends first (``watch`` returns)."""
        if event is None or event.is_set():
            return
        waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not event.is_set():
            watch.result()  # its own error, if it had one
            raise self._ended_early()

    async def _wait_answering(self, watch: asyncio.Future[None]) -> bool:
        """Until the server answers HTTP (any answer: True), tried on the ``startup_poll`` schedule, or
        its job ends (an error), or ``http_timeout`` (False: then JupyterHub's own wait decides)."""
        if hasattr(self, "mock_port") or self.server is None or self.internal_ssl:
            return False
        url = f"http://{self.ip}:{self.port}{self.server.base_url}api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        waits = delays(self.startup_poll)
        while time.monotonic() < deadline:
            try:
                await client.fetch(url, request_timeout=2, raise_error=False)
                return True
            except Exception:  # not listening yet
                pass
            await asyncio.wait({watch}, timeout=next(waits))
            if watch.done():
                watch.result()
                raise self._ended_early()
        return False

    def _hook_seconds(self) -> float | None:
        """Seconds since JupyterHub began this spawn (its options and pre-spawn hook), if it says."""
        started = getattr(getattr(self, "orm_spawner", None), "started", None)
        if not isinstance(started, datetime):
            return None
        if started.tzinfo is None:  # JupyterHub keeps naive UTC times
            started = started.replace(tzinfo=UTC)
        return max(0.0, (datetime.now(UTC) - started).total_seconds())

    def _report_phases(self, phases: StartPhases) -> None:
        """Log the phases of this start once the spawn is ready (JupyterHub's own wait for the server
        and its proxy route: ``hub``), or now when no spawn of JupyterHub's waits on this start."""
        returned, spawn, user, job = time.monotonic(), self._spawn_future, self.user.name, self.job_id

        def report(done: asyncio.Future[Any] | None = None) -> None:
            seconds = phases.seconds()
            if done is not None:
                if done.cancelled() or done.exception() is not None:
                    self.log.info("%s; the spawn then failed", phase_line(user, job, seconds))
                    return
                seconds["hub"] = time.monotonic() - returned
            self.log.info("%s", phase_line(user, job, seconds))

        if isinstance(spawn, asyncio.Future) and not spawn.done():
            spawn.add_done_callback(report)
        else:
            report()

    def _ended_early(self) -> web.HTTPError:
        """The error for a job that ended before its server answered: why, and the end of its output."""
        job, path = self.job_id, self._output_path
        why = describe_end(self._job_info, self.scheduler)
        tail = read_tail(path, self.user.name) if path else None
        text = f"Your server's job {job} ended before JupyterLab answered: {why}."
        if tail:
            text += f" The end of its output ({path}):\n{tail}"
        elif path:
            text += f" Its output ({path}) is empty or cannot be read."
        page = f"<p>{html.escape(text.split(chr(10), 1)[0])}</p>"
        if tail:
            page += f"<pre>{html.escape(tail)}</pre>"
        self.log.warning("%s", text)
        self.clear_state()
        return http_error(SpawnRefused(text, status=500), html_message=page)

    def _cancel_cmd(self, job_id: str) -> str:
        subvars = self.get_req_subvars()
        subvars["job_id"] = job_id
        return " ".join(
            (format_template(self.exec_prefix, **subvars), format_template(self.batch_cancel_cmd, **subvars))
        )

    async def submit_batch_script(self) -> str:
        """Submit the script rendered from validated values only (through ``_get_batch_script``); log no
        environment. A scheduler that does not take the job within ``submit_timeout`` is a clear error
        for the user, and whatever job the submission makes later is cancelled."""
        opts = self._hubstock_options or self.validated_options()
        subvars = self.get_req_subvars()
        cmd = " ".join(
            (format_template(self.exec_prefix, **subvars), format_template(self.batch_submit_cmd, **subvars))
        )
        subvars.update(batch_vars(opts, self.scheduler, self.limits))
        subvars["cmd"] = self.cmd_formatted_for_batch()
        script = await self._get_batch_script(**subvars)
        self.log.info("Submitting a batch job for %s: %s", self.user.name, opts.to_user_options())
        self.log.debug("Batch script for %s:\n%s", self.user.name, script)
        self._submitted_at = time.monotonic()
        res = await self._submit(cmd, script)
        if not res.ok:
            said = clean(res.err or res.out or f"exit status {res.returncode}").strip()[:300]
            if _NOT_ANSWERING.search(said) or (
                self.state_unknown_re and re.search(self.state_unknown_re, said)
            ):
                raise http_error(
                    SpawnRefused(
                        f"The batch scheduler is not answering ({said}), so your server was not submitted. "
                        "Servers that are already running are not affected; please try again in a few minutes.",
                        status=503,
                    )
                )
            raise http_error(SpawnRefused(f"The scheduler refused the job: {said}", status=500))
        try:
            self.job_id = self.parse_job_id(res.out)
        except (ValueError, IndexError):
            self.log.error("Could not read a job id from the submit command's output: %r", res.out[:300])
            self.job_id = ""
        if self.job_id:
            self._output_path = output_path(
                script, self.scheduler, self.job_id, self.user.name, subvars["homedir"]
            )
        on_submit = getattr(self, "hubstock_on_submit", None)
        if self.job_id and on_submit:
            on_submit(self.job_id)
        return str(self.job_id)

    async def _submit(self, cmd: str, script: str) -> Result:
        """Run the submit command with the script on its input, for at most ``submit_timeout`` seconds.

        When the hub stops waiting (the timeout, or the spawn is cancelled), the command goes on
        in the background and the job it makes, if any, is cancelled (:data:`REAPER`)."""
        talk = asyncio.ensure_future(self._run(cmd, _SUBMIT_LIMIT, input=script, env=self.get_env()))
        try:
            return await asyncio.wait_for(asyncio.shield(talk), self.submit_timeout)
        except (TimeoutError, asyncio.CancelledError) as e:
            REAPER.adopt(
                talk, self.parse_job_id, self._cancel_cmd, None, gone=self.state_gone_re, run=self._runner()
            )
            self.log.warning(
                "The submission of %s's job did not finish in time; its job will be cancelled", self.user.name
            )
            if isinstance(e, asyncio.CancelledError):
                raise
            raise http_error(
                SpawnRefused(
                    f"The batch scheduler did not take your server's job within {self.submit_timeout:g} s, so "
                    "your server was not started (should the scheduler take the job later, the hub cancels it). "
                    "Servers that are already running are not affected; please try again in a few minutes.",
                    status=503,
                )
            ) from None

    async def cancel_batch_job(self) -> None:
        """Cancel the job; one that cannot be cancelled now (the controller is down) is cancelled as
        soon as the scheduler answers again (:data:`REAPER`, which keeps it on disk), so it never
        outlives the hub's record."""
        self._cancel_deferred = False
        res = await self._cancel_now(self.job_id)
        if res is None or await self.query_job_status() == JobStatus.NOTFOUND:
            return
        self._defer_cancel(self.job_id, res, "stopped while the scheduler did not answer")
        self._cancel_deferred = True

    async def cancel_lost_job(self, job_id: str) -> bool:
        """Cancel a job this server's spawn submitted that the hub no longer tracks (a spawn still
        queued when the hub restarted), now or as soon as the scheduler answers. False, doing
        nothing, when the scheduler says the job has ended (the usual case: the server stopped,
        and its job with it)."""
        poller = self._poller()
        info = await poller.status(job_id, 0) if poller is not None else UNREACHABLE
        if info is None:
            return False  # not listed: long gone
        if isinstance(info, JobInfo) and not any(
            rx and re.search(rx, info.status) for rx in (self.state_pending_re, self.state_running_re)
        ):
            return False  # listed as ended
        self.log.warning(
            "Job %s of %s was submitted before the hub restarted and the hub no longer tracks it: "
            "cancelling it",
            job_id,
            self._log_name,
        )
        res = await self._cancel_now(job_id)
        if res is not None:
            self._defer_cancel(job_id, res, "submitted before the hub restarted")
        return True

    async def _cancel_now(self, job_id: str) -> Result | None:
        """Run the cancel command: None when the job is cancelled or gone, else its answer."""
        cmd = self._cancel_cmd(job_id)
        self.log.info("Cancelling job %s: %s", job_id, cmd)
        res = await self._run(cmd, self.status_timeout + 20)
        return None if res.ok or self._gone(res.err or res.out, res.returncode) else res

    def _defer_cancel(self, job_id: str, res: Result, why: str) -> None:
        self.log.warning(
            "Could not cancel job %s now (%s); the hub cancels it as soon as the scheduler answers",
            job_id,
            clean(res.err or res.out)[:200],
        )
        REAPER.cancel_later(
            job_id, self._cancel_cmd(job_id), None, gone=self.state_gone_re, why=why, run=self._runner()
        )

    _cancel_deferred: bool = False

    async def stop(self, now: bool = False) -> None:
        """Cancel the job and wait (up to 10 s) until the scheduler no longer runs it."""
        self._stopped_by_hub = True
        self.stop_reason = ""
        if not self.job_id:
            return
        self.log.info("Stopping server job %s", self.job_id)
        await self.cancel_batch_job()
        if now or self._cancel_deferred:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await self._job_status(1.0) not in (JobStatus.RUNNING, JobStatus.UNKNOWN):
                return
            await asyncio.sleep(1)
        self.log.warning(
            "Server job %s at %s:%s possibly failed to terminate", self.job_id, self.ip, self.port
        )
        REAPER.cancel_later(
            self.job_id, self._cancel_cmd(self.job_id), None, gone=self.state_gone_re, run=self._runner()
        )

    def pending_message(self, where: str) -> str:
        """What the spawn page says while the job waits (``where``: " in queue 'debug'" or "")."""
        return f"Job {self.job_id} is queued{where}, waiting for a node..."

    async def progress(self) -> AsyncIterator[dict[str, str]]:
        while True:
            opts = self._hubstock_options  # set before start(), which may begin after this
            where = f" in queue {opts.queue!r}" if opts else ""
            if not self.job_id:
                yield {"message": "Submitting your server as a batch job..."}
            elif self.state_ispending():
                yield {"message": self.pending_message(where)}
            elif self.state_isrunning():
                host = self.state_gethost()
                yield {"message": f"Job {self.job_id} is running on {host}; starting JupyterLab..."}
                return
            else:
                yield {"message": f"Job {self.job_id}: waiting for the scheduler..."}
            await asyncio.sleep(1)
