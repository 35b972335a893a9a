"""Batch spawners for the hub: Slurm, and PBS in two flavours (PBS Pro, Torque-compatible).

They are batchspawner's spawners with what a cluster hub needs on top:

- the site's limits (queues with their maximum CPUs, memory, GPUs and walltime,
  and defaults) as configuration, and a spawn form built from them;
- validation of ``user_options`` against those limits *before anything is
  submitted*, whether they come from the form or from the REST API (which
  bypasses the form): unknown keys, out-of-range values and anything that is
  not the expected shape are refused with a message the user can read;
- batch scripts rendered from the validated values only (batchspawner merges raw
  ``user_options`` into the template; these spawners do not), and no environment
  in the logs (it carries the server's API token);
- progress messages that say where the job is (queued in which queue, running on
  which node).

Schedulers differ in configuration (commands, regular expressions, templates),
not in code: the two PBS flavours are presets of the same class. The site's batch
script templates live in its ``spawner/`` folder (``slurm.sh``, ``pbs.sh``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import batchspawner
from batchspawner.batchspawner import format_template
from tornado import web
from traitlets import Dict, Enum, Integer, List, Unicode, default, observe
from traitlets.config import LoggingConfigurable

from .options import (
    Limits,
    Memory,
    Options,
    OptionsError,
    Walltime,
    format_memory_pbs,
    format_memory_slurm,
    format_walltime,
    options_from_form,
    render_options_form,
    validate_options,
)


def render_batch_script(template: str, subvars: dict[str, Any]) -> str:
    """The batch script for ``subvars`` (pure; jinja2 or str.format, as batchspawner does)."""
    return format_template(template, **subvars)


class SpawnRefused(web.HTTPError):
    """A spawn request refused before anything was submitted; the message is for the user."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(status, log_message=message.replace("%", "%%"), reason="Bad spawn request")
        self.jupyterhub_message = message
        self.message = message


class HubstockBatchMixin(LoggingConfigurable):
    """Site limits, the spawn form, validated options and safe submission (mixed into a batchspawner class)."""

    queues = List(
        Dict(),
        help="""Queues (PBS) or partitions (Slurm) users may choose, with their limits.

        Example::

            c.SlurmSpawner.queues = [
                {"name": "interactive", "description": "Short sessions, fast start",
                 "max_cpus": 8, "max_memory": "32G", "max_gpus": 0, "max_walltime": "08:00:00"},
                {"name": "gpu", "description": "One node with GPUs",
                 "max_cpus": 16, "max_memory": "128G", "max_gpus": 2, "max_walltime": "24:00:00"},
            ]
        """,
    ).tag(config=True)
    default_queue = Unicode("", help="Queue chosen when the user names none, e.g. 'interactive'.").tag(
        config=True
    )
    default_cpus = Integer(1, help="CPUs requested when the user names none, e.g. 1.").tag(config=True)
    default_memory = Memory("4G", help="Memory requested when the user names none, e.g. '4G'.").tag(
        config=True
    )
    default_gpus = Integer(0, help="GPUs requested when the user names none, e.g. 0.").tag(config=True)
    default_walltime = Walltime(
        "01:00:00", help="Walltime requested when the user names none, e.g. '01:00:00'."
    ).tag(config=True)

    req_ngpus = Unicode("", help="GPUs requested (set from the validated options).")

    @property
    def limits(self) -> Limits:
        queues = self.queues or [
            {
                "name": self.default_queue or "batch",
                "max_cpus": 1,
                "max_memory": "4G",
                "max_walltime": "01:00:00",
            }
        ]
        return Limits.from_config(
            queues,
            {
                "queue": self.default_queue or queues[0]["name"],
                "cpus": self.default_cpus,
                "memory": self.default_memory,
                "gpus": self.default_gpus,
                "walltime": self.default_walltime,
            },
        )

    @default("options_form")
    def _options_form_default(self) -> str:
        return render_options_form(self.limits)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        """Validate the form at once, so a mistake is shown on the form itself."""
        try:
            return validate_options(options_from_form(formdata), self.limits).to_user_options()
        except OptionsError as e:
            raise SpawnRefused(str(e)) from None

    def validated_options(self) -> Options:
        """``user_options`` checked against the site's limits (a :class:`SpawnRefused` if not)."""
        try:
            return validate_options(self.user_options or {}, self.limits)
        except OptionsError as e:
            raise SpawnRefused(str(e)) from None

    def apply_options(self, opts: Options) -> None:
        """Set the scheduler requests from validated options (scheduler-specific)."""
        raise NotImplementedError

    async def start(self):
        opts = self.validated_options()  # before anything reaches a batch script
        self.user_options = opts.to_user_options()
        self.apply_options(opts)
        self._hubstock_options = opts
        return await super().start()

    async def submit_batch_script(self) -> str:
        """Submit the script rendered from validated values only; log no environment."""
        subvars = self.get_req_subvars()
        cmd = " ".join(
            (format_template(self.exec_prefix, **subvars), format_template(self.batch_submit_cmd, **subvars))
        )
        subvars["cmd"] = self.cmd_formatted_for_batch()
        script = render_batch_script(self.batch_script, subvars)
        self.log.info("Submitting a batch job for %s: %s", self.user.name, self.user_options)
        self.log.debug("Batch script for %s:\n%s", self.user.name, script)
        try:
            out = await self.run_command(cmd, input=script, env=self.get_env())
        except RuntimeError as e:
            raise SpawnRefused(f"The scheduler refused the job: {str(e).strip()[:300]}", status=500) from None
        try:
            self.job_id = self.parse_job_id(out)
        except (ValueError, IndexError):
            self.log.error("Could not read a job id from the submit command's output: %r", out[:300])
            self.job_id = ""
        on_submit = getattr(self, "hubstock_on_submit", None)
        if self.job_id and on_submit:
            on_submit(self.job_id)
        return self.job_id

    async def progress(self):
        opts = getattr(self, "_hubstock_options", None)
        where = f" in queue {opts.queue!r}" if opts else ""
        while True:
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


class SlurmSpawner(HubstockBatchMixin, batchspawner.SlurmSpawner):
    """Single-user servers as Slurm jobs, within the site's limits."""

    def apply_options(self, opts: Options) -> None:
        self.req_partition = opts.queue
        self.req_nprocs = str(opts.cpus)
        self.req_memory = format_memory_slurm(opts.memory_mib)
        self.req_runtime = format_walltime(opts.walltime_s)
        self.req_gres = f"gpu:{opts.gpus}" if opts.gpus else ""
        self.req_ngpus = str(opts.gpus) if opts.gpus else ""


#: what differs between PBS Pro and Torque-compatible commands: configuration only
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


class PBSSpawner(HubstockBatchMixin, batchspawner.PBSSpawner):
    """Single-user servers as PBS jobs (PBS Pro or Torque-compatible commands)."""

    flavour = Enum(
        ["pro", "torque"],
        "pro",
        help="""Which PBS commands the cluster has: 'pro' (PBS Pro / OpenPBS: qstat -fx, select=)
        or 'torque' (Torque, and Slurm's slurm-wlm-torque wrappers: qstat -f, nodes=1:ppn=).
        Sets the query command and state regexes; each stays configurable. Example: 'torque'.""",
    ).tag(config=True)
    req_flavour = Unicode("pro")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._apply_flavour()

    @observe("flavour")
    def _flavour_changed(self, change: dict[str, Any]) -> None:
        self._apply_flavour()

    def _apply_flavour(self) -> None:
        self.req_flavour = self.flavour
        configured = set()
        cfg = getattr(self, "config", None)
        if cfg is not None:
            for cls in type(self).mro():
                section = cfg.get(cls.__name__) if cls.__name__ in cfg else None
                if section:
                    configured |= set(section)
        for name, value in PBS_FLAVOURS[self.flavour].items():
            if name not in configured:  # an explicit setting wins over the preset
                setattr(self, name, value)

    def apply_options(self, opts: Options) -> None:
        self.req_queue = opts.queue
        self.req_nprocs = str(opts.cpus)
        self.req_memory = format_memory_pbs(opts.memory_mib)
        self.req_runtime = format_walltime(opts.walltime_s)
        self.req_ngpus = str(opts.gpus) if opts.gpus else ""
