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
- progress messages that say where the job is (queued in which queue, running on which node).

The concrete spawners (Slurm, PBS) are in :mod:`hubstock.hub.spawner`.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from batchspawner.batchspawner import JobStatus, format_template
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Float

from ..errors import SpawnRefused
from .batch import batch_vars, output_path
from .job_status import HubstockJobStatusPart
from .reaper import REAPER
from .refusals import http_error, read_tail
from .shell import Result, communicate, run_shell
from .spawn_options import HubstockOptionsPart
from .status_parse import clean, describe_end

#: what a submit command prints when the scheduler does not answer (nothing was submitted)
_NOT_ANSWERING = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|cannot connect to server"
    r"|Problem loading jobs|communication failure|pbs_connect",
    re.I,
)


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
        the end of its own output."""
        self.check_scheduler_requests()  # a pre-spawn hook may have set one on this spawner
        opts = self._hubstock_options or self.validated_options()  # before anything reaches a batch script
        self.user_options = opts.to_user_options()
        self._hubstock_options = opts
        self.stop_reason = ""
        self._stopped_by_hub = False
        self.ip = self.traits()["ip"].default_value
        self.port = self.traits()["port"].default_value
        if self.server:
            self.server.port = self.port
        await self.submit_batch_script()
        if not self.job_id:
            raise http_error(
                SpawnRefused("The scheduler took the job but gave no job id the hub can read.", status=500)
            )
        while True:
            status = await self._job_status(self.startup_poll_interval)
            if status == JobStatus.RUNNING:
                break
            if status == JobStatus.NOTFOUND:
                raise self._ended_early()
            await asyncio.sleep(self.startup_poll_interval)
        self.ip = self.state_gethost()
        checked = time.monotonic()
        while self.port == 0:  # batchspawner-singleuser reports the port through the hub's API
            await asyncio.sleep(self.startup_poll_interval)
            if hasattr(self, "mock_port"):  # batchspawner's test hook
                self.port = self.mock_port
            elif time.monotonic() - checked >= 1:
                checked = time.monotonic()
                if await self._job_status(1.0) == JobStatus.NOTFOUND:
                    raise self._ended_early()
        await self._wait_answering()
        self.log.info("Server job %s of %s started at %s:%s", self.job_id, self.user.name, self.ip, self.port)
        return self.ip, self.port

    async def _wait_answering(self) -> None:
        """Until the server answers HTTP (any answer), or its job ends (an error), or ``http_timeout``
        (then JupyterHub's own wait decides)."""
        if hasattr(self, "mock_port") or self.server is None or self.internal_ssl:
            return
        url = f"http://{self.ip}:{self.port}{self.server.base_url}api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            try:
                await client.fetch(url, request_timeout=2, raise_error=False)
                return
            except Exception:  # not listening yet
                pass
            if await self._job_status(1.0) == JobStatus.NOTFOUND:
                raise self._ended_early()
            await asyncio.sleep(0.5)

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
        proc = await asyncio.create_subprocess_shell(
            cmd,
            env=self.get_env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        talk = asyncio.ensure_future(communicate(proc, script))
        try:
            return await asyncio.wait_for(asyncio.shield(talk), self.submit_timeout)
        except (TimeoutError, asyncio.CancelledError) as e:
            REAPER.adopt(talk, self.parse_job_id, self._cancel_cmd, None, gone=self.state_gone_re)
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
        soon as the scheduler answers again (:data:`REAPER`), so it never outlives the hub's record."""
        self._cancel_deferred = False
        cmd = self._cancel_cmd(self.job_id)
        self.log.info("Cancelling job %s: %s", self.job_id, cmd)
        res = await run_shell(cmd, None, self.status_timeout + 20)
        if res.ok or self._gone(res.err or res.out, res.returncode):
            return
        if await self.query_job_status() == JobStatus.NOTFOUND:
            return
        self.log.warning(
            "Could not cancel job %s now (%s); the hub cancels it as soon as the scheduler answers",
            self.job_id,
            clean(res.err or res.out)[:200],
        )
        REAPER.cancel_later(self.job_id, cmd, None, gone=self.state_gone_re)
        self._cancel_deferred = True

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
        REAPER.cancel_later(self.job_id, self._cancel_cmd(self.job_id), None, gone=self.state_gone_re)

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
