"""Batch spawners for the hub: Slurm, and PBS in two flavours (PBS Pro, Torque-compatible).

They are batchspawner's spawners with what a cluster hub needs on top:

- the site's limits (queues with their maximum CPUs, memory, GPUs and walltime, the
  defaults, and each queue's account, QoS, constraint and extra directive lines) as
  configuration, and a spawn form built from them (:mod:`hubstock.hub.form`);
- validation of ``user_options`` against those limits *before anything is submitted*,
  whether they come from the form or from the REST API (which bypasses the form);
- batch scripts rendered from the validated values only, through batchspawner's
  ``_get_batch_script`` hook, with the variables of :func:`hubstock.hub.batch.batch_vars`
  (batchspawner merges raw ``user_options`` into the template; these spawners do not), and
  no environment in the logs (it carries the server's API token);
- progress messages that say where the job is (queued in which queue, running on which node).

The job's requests come from hubstock.toml only. batchspawner's ``req_*`` settings for them
(``req_nprocs``, ``req_account``, ``req_options``...) are refused with a :class:`SiteError`
naming the hubstock.toml key to use, when the spawner is made and again at each start;
``req_prologue``, ``req_epilogue``, ``req_srun``, ``req_keepvars_extra`` and (PBS)
``req_host`` are honoured.

Schedulers differ in configuration, not in code: the two PBS flavours are traitlets
defaults of the same class, so configuration, constructor arguments and a subclass's own
defaults win over them.
"""

from __future__ import annotations

import asyncio
import html
import math
import os
import pwd
import re
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import batchspawner
from batchspawner.batchspawner import JobStatus, format_template
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Dict as DictTrait
from traitlets import Enum, Float, Integer, List, Unicode, default

from ..errors import SiteError, SpawnRefused
from ..limits import Limits, Options, OptionsError, Scheduler, format_memory, format_walltime
from ..store.root import Root
from .batch import batch_vars, check_extras, output_path
from .form import render_options_form
from .options import limits_from_config, options_from_form, validate_options
from .status import (
    REAPER,
    UNREACHABLE,
    JobInfo,
    Result,
    StatusPoller,
    clean,
    describe_end,
    kill_group,
    parse_qstat,
    parse_squeue,
    poller_for,
    run_shell,
)
from .traits import Memory, Walltime

_FALLBACK = Limits()
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", re.ASCII)
_LIMITS = "[[spawner.queues]] max_{0} and [spawner.defaults] {0}"
#: batchspawner's requests that hubstock writes itself, and the hubstock.toml key to use instead
SCHEDULER_REQUESTS: dict[str, str] = {
    "req_queue": "[[spawner.queues]] name (the queues users choose from)",
    "req_partition": "[[spawner.queues]] name (the partitions users choose from)",
    "req_nprocs": _LIMITS.format("cpus"),
    "req_memory": _LIMITS.format("memory"),
    "req_runtime": _LIMITS.format("walltime"),
    "req_ngpus": _LIMITS.format("gpus"),
    "req_gres": _LIMITS.format("gpus") + " (other resources: [spawner] directives)",
    "req_account": "[spawner] account (or account in a [[spawner.queues]] entry)",
    "req_reservation": "[spawner] reservation (or reservation in a [[spawner.queues]] entry)",
    "req_qos": "[spawner] qos (or qos in a [[spawner.queues]] entry)",
    "req_options": "[spawner] directives (or directives in a [[spawner.queues]] entry)",
    "req_cluster": "[spawner] directives, e.g. ['#SBATCH --clusters=NAME']",
}


def http_error(refused: SpawnRefused, html_message: str | None = None) -> web.HTTPError:
    """``refused`` as the tornado HTTPError JupyterHub answers with: its status and its message
    (and ``html_message`` for the pages that show HTML, already escaped)."""
    reason = "Bad spawn request" if refused.status == 400 else "Spawn failed"
    error = web.HTTPError(refused.status, log_message=refused.message.replace("%", "%%"), reason=reason)
    error.jupyterhub_message = refused.jupyterhub_message  # type: ignore[attr-defined]  # read by JupyterHub
    if html_message is not None:
        error.jupyterhub_html_message = html_message  # type: ignore[attr-defined]
    return error


def apply_user_options(spawner: HubstockBatchSpawner, user_options: dict[str, Any]) -> None:
    """``Spawner.apply_user_options`` (JupyterHub >= 5.3) of hubstock's spawners: validate the request
    against the site's limits before the pre-spawn hook runs (an HTTP 400 error if refused).

    A site with its own ``apply_user_options`` calls this first::

        from hubstock.hub.spawner import apply_user_options as hubstock_options

        def my_options(spawner, user_options):
            hubstock_options(spawner, user_options)
            ...

        c.Spawner.apply_user_options = my_options
    """
    spawner.hubstock_apply_options(user_options)


_VALUE_ECHO = re.compile(r" \((?:you asked for|you sent|you gave|it was|it had) .*\)(?=\.?$)", re.S)
_KEY_ECHO = re.compile(r"^(unknown server option) .*(?=; the options are)|^(form field) .*(?= must )", re.S)


def audit_reason(message: str) -> str:
    """A refusal's message without what the user sent: for the audit log, which must not hold it.

    >>> audit_reason("cpus must be a whole number from 1 to 4 on queue 'debug' (you asked for '1; rm -rf ~').")
    "cpus must be a whole number from 1 to 4 on queue 'debug'."
    """
    text = _VALUE_ECHO.sub("", message.strip())
    text = _KEY_ECHO.sub(lambda m: m[1] or m[2], text)
    return text if text.endswith(".") else text + "."


class HubstockBatchSpawner(batchspawner.BatchSpawnerRegexStates):
    """Site limits, the spawn form, validated options and safe submission, for any batchspawner scheduler."""

    queues = List(
        DictTrait(),
        default_value=[q.model_dump(exclude_none=True) for q in _FALLBACK.queues],
        help="""Queues (PBS) or partitions (Slurm) users may choose, with their limits, as in
        hubstock.toml's [[spawner.queues]] (account, reservation, qos, constraint and directives
        there override the site's for jobs on that queue).

        Example::

            c.SlurmSpawner.queues = [
                {"name": "interactive", "description": "Short sessions, fast start",
                 "max_cpus": 8, "max_memory": "32G", "max_gpus": 0, "max_walltime": "08:00:00"},
                {"name": "gpu", "description": "One node with GPUs", "qos": "gpu",
                 "max_cpus": 16, "max_memory": "128G", "max_gpus": 2, "max_walltime": "24:00:00"},
            ]
        """,
    ).tag(config=True)
    default_queue = Unicode(
        "", help="Queue chosen when the user names none, e.g. 'interactive' ('': the first queue)."
    ).tag(config=True)
    default_cpus = Integer(
        _FALLBACK.defaults.cpus, help="CPUs requested when the user names none, e.g. 1."
    ).tag(config=True)
    default_memory = Memory(
        format_memory(_FALLBACK.defaults.memory), help="Memory requested when the user names none, e.g. '4G'."
    ).tag(config=True)
    default_gpus = Integer(
        _FALLBACK.defaults.gpus, help="GPUs requested when the user names none, e.g. 0."
    ).tag(config=True)
    default_walltime = Walltime(
        format_walltime(_FALLBACK.defaults.walltime),
        help="Walltime requested when the user names none, e.g. '01:00:00'.",
    ).tag(config=True)
    account = Unicode("", help="Account every job is charged to ('': none), e.g. 'proj42'.").tag(config=True)
    reservation = Unicode("", help="Slurm reservation for every job ('': none), e.g. 'training'.").tag(
        config=True
    )
    qos = Unicode("", help="Slurm QoS for every job ('': none), e.g. 'interactive'.").tag(config=True)
    constraint = Unicode("", help="Slurm node features every job needs ('': none), e.g. 'intel&ib'.").tag(
        config=True
    )
    directives = List(
        Unicode(),
        help="""Extra lines for every batch script, after hubstock's own: '#SBATCH ...' for Slurm,
        '#PBS ...' for PBS. Example: ['#SBATCH --exclusive'].""",
    ).tag(config=True)

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
    submit_timeout = Float(
        10.0,
        min=1.0,
        help="""Seconds the submit command may take. Longer, and the user is told the scheduler is
        not answering; should the submission still go through, its job is cancelled. Example: 10.""",
    ).tag(config=True)
    batch_status_cmd = Unicode(
        help="""The query of every watched job at once, run by the hub itself (not as the user):
        {job_ids} becomes the ids joined with ``batch_status_sep``. Its answer must list each
        job in the form the spawner reads (``squeue -o '%i|%T %B|%r'``, ``qstat -f`` blocks). '' queries
        each job on its own, as batchspawner does. Example: "squeue -h -t all -j {job_ids} -o '%i|%T %B|%r'".""",
    ).tag(config=True)
    batch_status_sep = Unicode(",", help="What separates the job ids in ``batch_status_cmd``, e.g. ','.").tag(
        config=True
    )
    state_gone_re = Unicode(
        help="""What a failed status query prints when the scheduler does not know the job any more
        (it ended and was purged); any other failure means the scheduler is not answering, and the
        job is taken to be running. Example: 'Invalid job id specified'.""",
    ).tag(config=True)
    hubstock_root = Unicode(
        "",
        help="""The shared root whose audit log gets a 'refused' line for each refused request (set
        by apply_site; '' for none). Example: '/shared/hubstock'.""",
    ).tag(config=True)

    #: why the user's last server ended, for the user (kept in the spawner's state until the next start)
    stop_reason: str = ""
    #: the validated request of the current spawn (set by ``apply_user_options``, or by ``start``)
    _hubstock_options: Options | None = None
    #: the last request was refused (the pre-spawn hook never ran: the post-stop hook must not)
    _hubstock_refused: bool = False
    #: the job as the scheduler last listed it
    _job_info: JobInfo | None = None
    #: where the job's own output goes (from its batch script)
    _output_path: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_scheduler_requests()
        self.limits  # noqa: B018  # a configuration mistake shows when the spawner is made

    @property
    def scheduler(self) -> Scheduler:
        """Which scheduler's directives and commands this spawner uses."""
        raise NotImplementedError

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Callable[..., None]:
        return apply_user_options

    @default("poll_interval")
    def _poll_interval_default(self) -> int:
        return max(1, math.ceil(self.status_interval))

    def check_scheduler_requests(self) -> None:
        """A SiteError if a batchspawner ``req_*`` that hubstock writes itself was set (it would be lost)."""
        for name, key in SCHEDULER_REQUESTS.items():
            value = getattr(self, name, "") if self.has_trait(name) else ""
            if value:
                raise SiteError(
                    f"{self._where(name)} = {value!r} would be ignored, since hubstock writes the job's "
                    f"requests from hubstock.toml; remove it and set {key} in hubstock.toml instead."
                )

    def _where(self, name: str) -> str:
        """Where the trait ``name`` was set: ``c.SlurmSpawner.req_account`` (or the class, if not in config)."""
        for cls in type(self).mro():
            if cls.__name__ in self.config and name in self.config[cls.__name__]:
                return f"c.{cls.__name__}.{name}"
        return f"{type(self).__name__}.{name}"

    @property
    def limits(self) -> Limits:
        """The site's limits from this spawner's configuration (a LimitsError, a SiteError, if they are wrong)."""
        limits = limits_from_config(
            self.queues,
            {
                "queue": self.default_queue or None,
                "cpus": self.default_cpus,
                "memory": self.default_memory,
                "gpus": self.default_gpus,
                "walltime": self.default_walltime,
            },
            account=self.account,
            reservation=self.reservation,
            qos=self.qos,
            constraint=self.constraint,
            directives=list(self.directives),
        )
        check_extras(limits, self.scheduler)
        return limits

    @default("options_form")
    def _options_form_default(self) -> str:
        return render_options_form(self.limits)

    async def get_options_form(self) -> str:
        """The spawn form, with why the last server ended above it (once, until the next start)."""
        form = await super().get_options_form()
        if self.stop_reason and form:
            notice = html.escape(self.stop_reason)
            form = f'<div class="alert alert-warning" role="alert" id="hubstock-stop-reason">{notice}</div>\n{form}'
        return str(form)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        """Validate the form at once, so a mistake is shown on the form itself."""
        try:
            return validate_options(options_from_form(formdata), self.limits).to_user_options()
        except OptionsError as e:
            self._audit_refused(str(e))
            raise http_error(SpawnRefused(str(e))) from None

    def validated_options(self) -> Options:
        """``user_options`` checked against the site's limits (an HTTP 400 error with the reason if not)."""
        try:
            return validate_options(self.user_options or {}, self.limits)
        except OptionsError as e:
            raise http_error(SpawnRefused(str(e))) from None

    def hubstock_apply_options(self, user_options: Mapping[str, Any] | None) -> None:
        """Validate ``user_options`` (JupyterHub calls this through ``apply_user_options``, before the
        pre-spawn hook): keep the normalized request, or refuse it with an HTTP 400 error and one
        ``refused`` audit line (the reason and the user's name, never the values sent)."""
        try:
            opts = validate_options(user_options or {}, self.limits)
        except OptionsError as e:
            self._hubstock_refused = True
            self._hubstock_options = None
            self._forget_options()
            self._audit_refused(str(e))
            raise http_error(SpawnRefused(str(e))) from None
        self._hubstock_refused = False
        self._hubstock_options = opts
        self.user_options = opts.to_user_options()
        self.stop_reason = ""
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is not None:  # what the server runs with, while it runs (clear_state forgets it)
            orm_spawner.user_options = dict(self.user_options)

    def _forget_options(self) -> None:
        """JupyterHub starts a server asked for without options (an empty REST body) with the options
        it keeps in its database: keep none there, so such a request gets the site's defaults."""
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is not None and orm_spawner.user_options:
            orm_spawner.user_options = {}

    def _audit_refused(self, message: str) -> None:
        if not self.hubstock_root:
            return
        try:
            Root(Path(self.hubstock_root)).audit(
                "refused", user=self.user.name, server=self.name or "", reason=audit_reason(message)
            )
        except Exception:  # the user still gets the refusal
            self.log.exception("Could not write the audit log's 'refused' line for %s", self.user.name)

    def run_post_stop_hook(self) -> Any:
        """Not after a refused request: the pre-spawn hook never ran, there is nothing to undo."""
        if self._hubstock_refused:
            return None
        return super().run_post_stop_hook()

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

    # -- job status: one query per interval for the whole hub

    _status_parser: Callable[[str], dict[str, JobInfo]] = staticmethod(parse_squeue)
    _stopped_by_hub: bool = False
    _submitted_at: float = 0.0  # monotonic seconds

    def _poller(self) -> StatusPoller | None:
        """The hub's shared poller for this spawner's query command (None: query each job alone)."""
        if not self.batch_status_cmd:
            return None
        return poller_for(
            self.batch_status_cmd,
            type(self)._status_parser,
            sep=self.batch_status_sep,
            gone=self.state_gone_re,
            env=None,  # the hub's own environment, as batchspawner queries jobs
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
        return await self.query_job_status()

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
        res = await run_shell(cmd, None, self.status_timeout)
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
        talk = asyncio.ensure_future(_communicate(proc, script))
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


#: what a submit command prints when the scheduler does not answer (nothing was submitted)
_NOT_ANSWERING = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection refused|cannot connect to server"
    r"|Problem loading jobs|communication failure|pbs_connect",
    re.I,
)


async def _communicate(proc: asyncio.subprocess.Process, stdin: str, limit: float = 600) -> Result:
    """What ``proc`` printed; it is killed after ``limit`` seconds (then the result is not ok)."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), limit)
    except TimeoutError:
        kill_group(proc)
        return Result("", f"no answer within {limit:g} s", None)
    return Result(out.decode(errors="replace").strip(), err.decode(errors="replace").strip(), proc.returncode)


def read_tail(path: str, username: str, max_bytes: int = 4096, max_lines: int = 20) -> str | None:
    """The last lines of the user's file ``path``, read by the hub (root) without trusting the path:
    not through a final symlink, only a regular file the user owns; None if there is none."""
    try:
        uid = pwd.getpwnam(username).pw_uid
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (KeyError, OSError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            return None
        start = max(0, st.st_size - max_bytes)
        data = os.pread(fd, max_bytes, start)
    except OSError:
        return None
    finally:
        os.close(fd)
    lines = clean(data.decode("utf-8", errors="replace")).splitlines()
    if start > 0:
        lines = lines[1:]  # the first line was cut
    return "\n".join(lines[-max_lines:]).strip() or None


class SlurmSpawner(HubstockBatchSpawner, batchspawner.SlurmSpawner):
    """Single-user servers as Slurm jobs, within the site's limits."""

    _status_parser = staticmethod(parse_squeue)

    @property
    def scheduler(self) -> Scheduler:
        return "slurm"

    @default("batch_status_cmd")
    def _batch_status_cmd_default(self) -> str:
        # every state: a job that ended is still listed (for MinJobAge), with why
        return "squeue -h -t all -j {job_ids} -o '%i|%T %B|%r'"

    @default("state_gone_re")
    def _state_gone_re_default(self) -> str:
        return r"Invalid job id specified|already completing or completed"

    def _single_info(self, text: str) -> JobInfo | None:
        words = text.split()
        return JobInfo(self.job_id, text, words[0] if words else "")

    def check_scheduler_requests(self) -> None:
        super().check_scheduler_requests()
        if self.req_host:
            raise SiteError(
                f"{self._where('req_host')} = {self.req_host!r} has no meaning for Slurm; remove it (for "
                "another cluster, set [spawner] directives = ['#SBATCH --clusters=NAME'] in hubstock.toml)."
            )


#: what differs between PBS Pro and Torque-compatible commands: the defaults of these settings.
#: Every PBS job state, on purpose (``qstat -f``'s ``job_state``):
#: - pending (the job lives and may yet serve; the hub keeps waiting, and keeps a running server):
#:   Q queued, H held, W waiting for its start time, T in transit, S suspended (by the scheduler
#:   or an operator), U suspended while its workstation is busy, B an array job that has begun;
#:   and R while PBS has not yet named its ``exec_host`` (PBSSpawner.state_ispending);
#: - running: R with an ``exec_host``;
#: - ended (the server is gone): E exiting, F finished (PBS Pro's history, ``qstat -x``), X a
#:   finished subjob, M moved to another server, C completed (Torque), and a job qstat no longer
#:   knows ("Unknown Job Id");
#: - unknown (the server does not answer; the job is taken to be alive): ``state_unknown_re``.
PBS_FLAVOURS: dict[str, dict[str, str]] = {
    "pro": {
        # -f: no background qsub daemon. It serves every later qsub of the same uid for a minute
        # with the identity it started with: a user re-created with a reused uid (or with new
        # groups) would submit as the old one
        "batch_submit_cmd": "qsub -f",
        "batch_query_cmd": "qstat -fx {job_id}",
        "batch_cancel_cmd": "qdel {job_id}",
        "batch_force_cancel_cmd": "qdel -W force {job_id}",
        "state_pending_re": r"job_state = [QHWTSUB]\b",
        "state_running_re": r"job_state = R\b",
        "state_exechost_re": r"exec_host = ([\w.-]+)/",
        "state_unknown_re": r"Connection refused|cannot connect to server|Couldn't connect to cluster|Communication failure",
        "batch_status_cmd": "qstat -fx {job_ids}",
        # PBSE_UNKJOBID is exit status 153
        "state_gone_re": r"Unknown Job Id|Job has finished|\(exit status 153\)",
    },
    "torque": {
        # Torque's qstat has no -x; Slurm's torque wrappers' qsub cannot read stdin
        "batch_submit_cmd": "qsub",
        "batch_query_cmd": "qstat -f {job_id}",
        "batch_cancel_cmd": "qdel {job_id}",
        "batch_force_cancel_cmd": "",
        "state_pending_re": r"job_state = [QHWTS]\b",
        "state_running_re": r"job_state = R",
        "state_exechost_re": r"exec_host = ([\w.-]+)/",
        "state_unknown_re": r"Problem loading jobs|Unable to contact slurm controller|cannot connect to server",
        "batch_status_cmd": "qstat -f {job_ids}",
        # Slurm's qstat says nothing of a job it does not know, and exits with 153 as Torque's does
        "state_gone_re": r"Unknown Job Id|Job has finished|\(exit status 153\)",
    },
}


def _flavour_default(name: str) -> Any:
    """A traitlets default for ``name`` from the spawner's flavour (so any explicit setting wins)."""

    def preset(self: PBSSpawner) -> str:
        return PBS_FLAVOURS[self.flavour][name]

    return default(name)(preset)


class PBSSpawner(HubstockBatchSpawner, batchspawner.PBSSpawner):
    """Single-user servers as PBS jobs (PBS Pro or Torque-compatible commands)."""

    flavour = Enum(
        ["pro", "torque"],
        "pro",
        help="""Which PBS commands the cluster has: 'pro' (PBS Pro / OpenPBS: qstat -fx, select=)
        or 'torque' (Torque, and Slurm's slurm-wlm-torque wrappers: qstat -f, nodes=1:ppn=).
        It gives the defaults of the submit, query and cancel commands and of the state regexes;
        a setting of any of them (configuration, or a subclass's own default) wins. Example: 'torque'.""",
    ).tag(config=True)

    _preset_batch_submit_cmd = _flavour_default("batch_submit_cmd")
    _preset_batch_query_cmd = _flavour_default("batch_query_cmd")
    _preset_batch_cancel_cmd = _flavour_default("batch_cancel_cmd")
    _preset_state_pending_re = _flavour_default("state_pending_re")
    _preset_state_running_re = _flavour_default("state_running_re")
    _preset_state_exechost_re = _flavour_default("state_exechost_re")
    _preset_state_unknown_re = _flavour_default("state_unknown_re")
    _preset_batch_force_cancel_cmd = _flavour_default("batch_force_cancel_cmd")
    _preset_batch_status_cmd = _flavour_default("batch_status_cmd")
    _preset_state_gone_re = _flavour_default("state_gone_re")
    _status_parser = staticmethod(parse_qstat)

    @default("batch_status_sep")
    def _batch_status_sep_default(self) -> str:
        return " "

    def _single_info(self, text: str) -> JobInfo | None:
        jobs = parse_qstat(text)
        return jobs.get(self.job_id) or jobs.get(self.job_id.split(".", 1)[0])

    batch_force_cancel_cmd = Unicode(
        help="""Deletes a job that outlived ``stop_grace`` after the cancel command ('': none),
        formatted like batch_cancel_cmd. Example: 'qdel -W force {job_id}'.""",
    ).tag(config=True)
    stop_grace = Integer(
        30,
        min=0,
        help="""Seconds ``stop`` waits for a deleted job to end before ``batch_force_cancel_cmd``.
        PBS keeps a job deleted in its first seconds running for the queue's kill_delay (10 s by
        default) before it kills it. Example: 30.""",
    ).tag(config=True)

    @property
    def scheduler(self) -> Scheduler:
        return "pbs" if self.flavour == "pro" else "torque"

    def check_scheduler_requests(self) -> None:
        super().check_scheduler_requests()
        if self.req_host and not _HOST.fullmatch(self.req_host):  # honoured: "#PBS -q queue@host"
            raise SiteError(
                f"{self._where('req_host')} = {self.req_host!r} is not a host name; set the PBS server's "
                "name, e.g. 'pbs01.cluster.local', or remove it."
            )

    # -- PBS's job states (see PBS_FLAVOURS)

    def _pbs_exec_host(self) -> str | None:
        """The job's exec host, if PBS has named it (never logs: an R job may not have one yet)."""
        if not self.state_exechost_re or not self.job_status:
            return None
        m = re.search(self.state_exechost_re, self.job_status)
        if not m:
            return None
        return m.expand(self.state_exechost_exp) if self.state_exechost_exp else m.group(1)

    def state_isrunning(self) -> bool:
        """R, with its exec host named (before that, the server has nowhere to be reached)."""
        return bool(super().state_isrunning()) and bool(self._pbs_exec_host())

    def state_ispending(self) -> bool:
        """Alive but not serving: queued, held, waiting, in transit, suspended; or R without an exec host."""
        if super().state_ispending():
            return True
        return bool(super().state_isrunning()) and not self._pbs_exec_host()

    def pending_message(self, where: str) -> str:
        m = re.search(r"job_state = (\w)", self.job_status or "")
        state = m.group(1) if m else "Q"
        what = _PBS_WAITING.get(state, _PBS_WAITING["Q"]).format(where=where)
        return f"Job {self.job_id} {what}..."

    def parse_job_id(self, output: str) -> str:
        """The id qsub printed (its last line): ``12.pbs01`` (PBS Pro), ``12`` (Slurm's wrappers)."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if not lines or not _PBS_JOB_ID.fullmatch(lines[-1]):
            raise ValueError(f"no PBS job id in {output[:200]!r}")
        return lines[-1]

    async def _get_batch_script(self, **subvars: Any) -> str:
        """PBS Pro's ``qsub -v`` mangles a value with a quote or a backslash (JupyterHub's OAuth
        scopes are JSON): such variables are set by ``export`` lines of the script instead."""
        if self.flavour == "pro" and subvars.get("keepvars"):
            from .batch import pbs_environment

            try:
                keepvars, exports = pbs_environment(self.get_env(), subvars["keepvars"])
            except ValueError as e:
                raise http_error(SpawnRefused(f"The job cannot be submitted: {e}", status=500)) from None
            subvars = {**subvars, "keepvars": keepvars, "exports": exports}
        return await super()._get_batch_script(**subvars)

    async def stop(self, now: bool = False) -> None:
        """Cancel the job and wait until it has ended: up to ``stop_grace`` more seconds (a job
        deleted in its first seconds stays R for PBS's kill_delay), then force its deletion."""
        from batchspawner.batchspawner import JobStatus

        await super().stop(now=now)
        if now or not self.job_id or getattr(self, "_cancel_deferred", False):
            return  # (deferred: the server does not answer, and the hub cancels the job when it does)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_grace
        while await self.query_job_status() in (JobStatus.RUNNING, JobStatus.UNKNOWN):
            if loop.time() > deadline:
                if self.batch_force_cancel_cmd:
                    subvars = {**self.get_req_subvars(), "job_id": self.job_id}
                    cmd = " ".join(
                        (
                            format_template(self.exec_prefix, **subvars),
                            format_template(self.batch_force_cancel_cmd, **subvars),
                        )
                    )
                    self.log.warning(
                        "Job %s outlived qdel by %g s; deleting it by force", self.job_id, self.stop_grace
                    )
                    try:
                        await self.run_command(cmd)
                    except RuntimeError as e:
                        self.log.error("Could not delete job %s by force: %s", self.job_id, str(e)[:200])
                return
            await asyncio.sleep(1)


#: a job id as qsub prints it: "12.pbs01", "12[].pbs01" (an array), "12"
_PBS_JOB_ID = re.compile(r"\d+(?:\[\d*\])?(?:\.[A-Za-z0-9][A-Za-z0-9.-]*)?", re.ASCII)
#: what the spawn page says while a PBS job waits, by its state
_PBS_WAITING = {
    "Q": "is queued{where}, waiting for a node",
    "H": "is held{where} (by you, an operator or a dependency); it waits until the hold is released",
    "W": "is waiting{where} for the start time it was given",
    "T": "is being moved{where} to where it will run",
    "S": "is suspended{where} by the scheduler or an operator; it goes on when resumed",
    "U": "is suspended{where} while its node is busy; it goes on when resumed",
    "B": "has begun{where} (an array job)",
    "R": "is starting{where}; waiting for the scheduler to name its node",
}
