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
import re
from collections.abc import AsyncIterator
from typing import Any

import batchspawner
from batchspawner.batchspawner import format_template
from tornado import web
from traitlets import Dict as DictTrait
from traitlets import Enum, Integer, List, Unicode, default

from ..errors import SiteError, SpawnRefused
from ..limits import Limits, Options, OptionsError, Scheduler, format_memory, format_walltime
from .batch import batch_vars, check_extras
from .form import render_options_form
from .options import limits_from_config, options_from_form, validate_options
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


def http_error(refused: SpawnRefused) -> web.HTTPError:
    """``refused`` as the tornado HTTPError JupyterHub answers with: its status and its message."""
    reason = "Bad spawn request" if refused.status == 400 else "Spawn failed"
    error = web.HTTPError(refused.status, log_message=refused.message.replace("%", "%%"), reason=reason)
    error.jupyterhub_message = refused.jupyterhub_message  # type: ignore[attr-defined]  # read by JupyterHub
    return error


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

    #: the validated request of the current spawn (set by ``start``)
    _hubstock_options: Options | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_scheduler_requests()
        self.limits  # noqa: B018  # a configuration mistake shows when the spawner is made

    @property
    def scheduler(self) -> Scheduler:
        """Which scheduler's directives and commands this spawner uses."""
        raise NotImplementedError

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

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        """Validate the form at once, so a mistake is shown on the form itself."""
        try:
            return validate_options(options_from_form(formdata), self.limits).to_user_options()
        except OptionsError as e:
            raise http_error(SpawnRefused(str(e))) from None

    def validated_options(self) -> Options:
        """``user_options`` checked against the site's limits (an HTTP 400 error with the reason if not)."""
        try:
            return validate_options(self.user_options or {}, self.limits)
        except OptionsError as e:
            raise http_error(SpawnRefused(str(e))) from None

    async def start(self) -> Any:
        self.check_scheduler_requests()  # a pre-spawn hook may have set one on this spawner
        opts = self.validated_options()  # before anything reaches a batch script
        self.user_options = opts.to_user_options()
        self._hubstock_options = opts
        return await super().start()

    async def submit_batch_script(self) -> str:
        """Submit the script rendered from validated values only (through ``_get_batch_script``); log no environment."""
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
        try:
            out = await self.run_command(cmd, input=script, env=self.get_env())
        except RuntimeError as e:
            refused = SpawnRefused(f"The scheduler refused the job: {str(e).strip()[:300]}", status=500)
            raise http_error(refused) from None
        try:
            self.job_id = self.parse_job_id(out)
        except (ValueError, IndexError):
            self.log.error("Could not read a job id from the submit command's output: %r", out[:300])
            self.job_id = ""
        on_submit = getattr(self, "hubstock_on_submit", None)
        if self.job_id and on_submit:
            on_submit(self.job_id)
        return str(self.job_id)

    async def progress(self) -> AsyncIterator[dict[str, str]]:
        while True:
            opts = self._hubstock_options  # set by start(), which may begin after this
            where = f" in queue {opts.queue!r}" if opts else ""
            if not self.job_id:
                yield {"message": "Submitting your server as a batch job..."}
            elif self.state_ispending():
                yield {"message": f"Job {self.job_id} is queued{where}, waiting for a node..."}
            elif self.state_isrunning():
                host = self.state_gethost()
                yield {"message": f"Job {self.job_id} is running on {host}; starting JupyterLab..."}
                return
            else:
                yield {"message": f"Job {self.job_id}: waiting for the scheduler..."}
            await asyncio.sleep(1)


class SlurmSpawner(HubstockBatchSpawner, batchspawner.SlurmSpawner):
    """Single-user servers as Slurm jobs, within the site's limits."""

    @property
    def scheduler(self) -> Scheduler:
        return "slurm"

    def check_scheduler_requests(self) -> None:
        super().check_scheduler_requests()
        if self.req_host:
            raise SiteError(
                f"{self._where('req_host')} = {self.req_host!r} has no meaning for Slurm; remove it (for "
                "another cluster, set [spawner] directives = ['#SBATCH --clusters=NAME'] in hubstock.toml)."
            )


#: what differs between PBS Pro and Torque-compatible commands: the defaults of these settings
PBS_FLAVOURS: dict[str, dict[str, str]] = {
    "pro": {
        "batch_submit_cmd": "qsub",
        "batch_query_cmd": "qstat -fx {job_id}",
        "batch_cancel_cmd": "qdel {job_id}",
        "state_pending_re": r"job_state = [QHW]",
        "state_running_re": r"job_state = R",
        "state_exechost_re": r"exec_host = ([\w.-]+)/",
        "state_unknown_re": r"Connection refused|cannot connect to server",
    },
    "torque": {
        # Torque's qstat has no -x; Slurm's torque wrappers' qsub cannot read stdin
        "batch_submit_cmd": "qsub",
        "batch_query_cmd": "qstat -f {job_id}",
        "batch_cancel_cmd": "qdel {job_id}",
        "state_pending_re": r"job_state = [QHW]",
        "state_running_re": r"job_state = R",
        "state_exechost_re": r"exec_host = ([\w.-]+)/",
        "state_unknown_re": r"Problem loading jobs|Unable to contact slurm controller|cannot connect to server",
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
