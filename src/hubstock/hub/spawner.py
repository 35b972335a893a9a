"""Batch spawners for the hub: Slurm, and PBS in two flavours (PBS Pro, Torque-compatible).

They are :class:`~hubstock.hub.batch_spawner.HubstockBatchSpawner` (batchspawner's spawner with
the site's limits, the spawn form, validated options, safe submission and the hub's shared
status queries) for one scheduler each; JupyterHub loads them by name
(``hubstock.hub.spawner.SlurmSpawner``, ``hubstock.hub.spawner.PBSSpawner``).

The job's requests come from hubstock.toml only. batchspawner's ``req_*`` settings for them
(``req_nprocs``, ``req_account``, ``req_options``...) are refused with a :class:`SiteError`
naming the hubstock.toml key to use, when the spawner is made and again at each start;
``req_prologue``, ``req_epilogue``, ``req_srun``, ``req_keepvars_extra`` and (PBS)
``req_host`` are honoured.

Schedulers differ in configuration, not in code: the two PBS flavours are traitlets
defaults of the same class, so configuration, constructor arguments and a subclass's own
defaults win over them.

The base class and its helpers stay importable from here: :class:`HubstockBatchSpawner`,
:func:`apply_user_options` (for a site's own ``c.Spawner.apply_user_options``),
:func:`http_error`, :func:`audit_reason`, :func:`read_tail` and :data:`SCHEDULER_REQUESTS`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import batchspawner
from batchspawner.batchspawner import format_template
from traitlets import Enum, Integer, Unicode, default

from ..errors import SiteError, SpawnRefused
from ..limits import Scheduler
from .batch_spawner import HubstockBatchSpawner
from .refusals import audit_reason, http_error, read_tail
from .schedulers import PBS_FLAVOURS
from .spawn_options import SCHEDULER_REQUESTS, apply_user_options
from .status_parse import JobInfo, parse_qstat, parse_squeue, slurm_hostnames

__all__ = [
    "PBS_FLAVOURS",
    "SCHEDULER_REQUESTS",
    "HubstockBatchSpawner",
    "PBSSpawner",
    "SlurmSpawner",
    "apply_user_options",
    "audit_reason",
    "http_error",
    "read_tail",
]

#: batchspawner's per-job Slurm query, which the batched one replaces (another is the site's own)
_SLURM_QUERY = "squeue -h -j {job_id} -o '%T %B'"
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", re.ASCII)


class SlurmSpawner(HubstockBatchSpawner, batchspawner.SlurmSpawner):
    """Single-user servers as Slurm jobs, within the site's limits."""

    _status_parser = staticmethod(parse_squeue)

    @property
    def scheduler(self) -> Scheduler:
        return "slurm"

    @default("batch_status_cmd")
    def _batch_status_cmd_default(self) -> str:
        if self.batch_query_cmd != _SLURM_QUERY:
            return ""  # a site's or a subclass's own per-job query is honoured: each job on its own
        # every state: a job that ended is still listed (for MinJobAge), with why
        return "squeue -h -t all -j {job_ids} -o '%i|%T %B|%r'"

    @default("state_gone_re")
    def _state_gone_re_default(self) -> str:
        return r"Invalid job id specified|already completing or completed"

    # Every Slurm job state, on purpose (squeue's %T):
    # - pending (the job lives and may yet serve; the hub keeps waiting, and keeps a running server):
    #   PENDING, CONFIGURING (nodes booting), SUSPENDED and STOPPED (an operator or a preemption
    #   paused it: it resumes), REQUEUED, REQUEUE_HOLD, REQUEUE_FED (it runs again), RESV_DEL_HOLD;
    # - running: RUNNING, COMPLETING (its processes are ending: batchspawner's choice, kept),
    #   RESIZING, SIGNALING;
    # - ended (the server is gone): STAGE_OUT (its processes ended), and every end state
    #   (COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE,
    #   OUT_OF_MEMORY, REVOKED, SPECIAL_EXIT), or a job squeue no longer knows (state_gone_re);
    # - unknown (the controller does not answer; the job is taken to be alive): state_unknown_re.
    @default("state_pending_re")
    def _state_pending_re_default(self) -> str:
        return r"^(?:PENDING|CONFIGURING|SUSPENDED|STOPPED|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|RESV_DEL_HOLD)\b"

    @default("state_running_re")
    def _state_running_re_default(self) -> str:
        return r"^(?:RUNNING|COMPLETING|RESIZING|SIGNALING)\b"

    @default("state_exechost_re")
    def _state_exechost_re_default(self) -> str:
        return r"^[A-Z_]+\s+(\S+)"  # the batch host, or a hostlist (a site's query with %N)

    def state_gethost(self) -> str | None:
        """The job's host; of a Slurm hostlist (``node[01-02]``), its first host."""
        host = super().state_gethost()
        if host and "[" in host:
            hosts = slurm_hostnames(host)
            return hosts[0] if hosts else None
        return host

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

    @default("batch_status_cmd")
    def _preset_batch_status_cmd(self) -> str:
        if self.batch_query_cmd != PBS_FLAVOURS[self.flavour]["batch_query_cmd"]:
            return ""  # a site's or a subclass's own per-job query is honoured: each job on its own
        return PBS_FLAVOURS[self.flavour]["batch_status_cmd"]

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
                    res = await self._run(cmd, self.status_timeout + 20)
                    if not res.ok:
                        self.log.error(
                            "Could not delete job %s by force: %s", self.job_id, (res.err or res.out)[:200]
                        )
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
