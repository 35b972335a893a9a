"""A batch job as the hub submits one, for whoever submits another on the site's terms (the
doctor's probe job, a user's build job): the site's commands and batch template over the
spawners' defaults, the script rendered as the hub renders it, and the scheduler's answers read
as the hub reads them. Pure, and light: it imports neither JupyterHub nor batchspawner (a user's
``hubstock mine`` starts in a fraction of a second), except for batchspawner's own template when
the site has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hub.batch import batch_vars, render_batch_script
from .hub.schedulers import PBS_FLAVOURS, SLURM_COMMANDS
from .limits import Limits, Options, Scheduler
from .site import Site

#: batchspawner's request variables a template may use; hubstock's own come from batch_vars
_REQ_VARS = (
    "queue",
    "host",
    "memory",
    "nprocs",
    "runtime",
    "partition",
    "account",
    "options",
    "ngpus",
    "gres",
    "reservation",
    "qos",
    "cluster",
    "constraint",
    "directives",
    "epilogue",
    "keepvars_extra",
)


@dataclass(frozen=True)
class JobCommands:
    """How the hub submits, queries and cancels a job, and its batch template."""

    scheduler: Scheduler
    exec_prefix: str
    submit: str
    query: str
    cancel: str
    pending_re: str
    running_re: str
    template: str
    srun: str
    prologue: str
    #: deletes a job the cancel left (PBS Pro's ``qdel -W force``: a job whose mom is down); '': none
    force_cancel: str = ""


def job_commands(site: Site) -> JobCommands:
    """The site's settings over the spawner classes' defaults, as :mod:`hubstock.hub.config` applies them
    (without importing the spawners, unless the site has no batch template of its own)."""
    sp = site.settings.spawner
    scheduler: Scheduler = (
        "slurm" if sp.scheduler == "slurm" else "pbs" if sp.scheduler == "pbs" else "torque"
    )
    if scheduler == "slurm":
        d = SLURM_COMMANDS
        template_file = site.dir / "spawner" / "slurm.sh"
    else:
        d = PBS_FLAVOURS["pro" if scheduler == "pbs" else "torque"]
        template_file = site.dir / "spawner" / "pbs.sh"
    return JobCommands(
        scheduler=scheduler,
        exec_prefix=sp.exec_prefix,
        submit=sp.submit_cmd.replace("{site}", str(site.dir)) if sp.submit_cmd else d["batch_submit_cmd"],
        query=d["batch_query_cmd"],
        cancel=d["batch_cancel_cmd"],
        force_cancel=PBS_FLAVOURS["pro"]["batch_force_cancel_cmd"] if scheduler == "pbs" else "",
        pending_re=d["state_pending_re"],
        running_re=d["state_running_re"],
        template=template_file.read_text() if template_file.is_file() else default_batch_script(scheduler),
        srun=sp.srun if scheduler == "slurm" else "",
        prologue=sp.prologue,
    )


def default_batch_script(scheduler: Scheduler) -> str:
    """batchspawner's own batch template for ``scheduler`` (a site without ``spawner/*.sh``)."""
    from .hub.spawner import PBSSpawner, SlurmSpawner

    cls = SlurmSpawner if scheduler == "slurm" else PBSSpawner
    return str(cls.class_traits()["batch_script"].default_value)


def render_probe_script(
    cmds: JobCommands, limits: Limits, opts: Options, username: str, homedir: str, keepvars: str, command: str
) -> str:
    """The batch script the hub would write for ``opts``, running ``command`` instead of the server."""
    subvars: dict[str, Any] = dict.fromkeys(_REQ_VARS, "")
    subvars.update(
        username=username, homedir=homedir, keepvars=keepvars, prologue=cmds.prologue, srun=cmds.srun
    )
    subvars.update(batch_vars(opts, cmds.scheduler, limits))
    subvars["cmd"] = command
    return render_batch_script(cmds.template, subvars)


def parse_job_id(scheduler: Scheduler, out: str) -> str:
    """The job id in the submit command's output (batchspawner's rules); ValueError if none."""
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    job = last.split(";")[0] if scheduler == "slurm" else last
    if not re.fullmatch(r"\d+" if scheduler == "slurm" else r"[\w.\[\]-]+", job):
        raise ValueError(f"no job id in the submit command's output {out.strip()[:200]!r}")
    return job


#: states in which a job is neither pending nor running for the spawner, yet still in the scheduler
#: (PBS: exiting, begun, suspended, in transit; Slurm: suspended, stopped, requeued, signalled...)
_ENDING = re.compile(
    r"job_state = [EBSTU]\b|^(?:SUSPENDED|STOPPED|REQUEUE\w*|RESIZING|SIGNALING|STAGE_OUT|PREEMPTED)", re.M
)


def job_state(cmds: JobCommands, code: int, out: str, err: str) -> str:
    """'pending', 'running' (the spawner's regexes), 'ending' (still in the scheduler, neither),
    'gone' (finished, or unknown to the scheduler) or 'unknown' (the scheduler did not answer)."""
    if code == 0:
        if re.search(cmds.running_re, out):
            return "running"
        if re.search(cmds.pending_re, out):
            return "pending"
        return "ending" if _ENDING.search(out) else "gone"
    if re.search(r"invalid job id|unknown job id|does not exist", err + out, re.I):
        return "gone"
    return "unknown"


def output_file(script: str, job: str) -> Path | None:
    """The file the script sends the job's output to (``#SBATCH --output``, ``#PBS -o``), ``%j``
    replaced by ``job``; None when it names none, or a relative or patterned one."""
    m = re.search(r"^#(?:SBATCH\s+(?:--output[= ]|-o\s*)|PBS\s+-o\s+)(\S+)", script, re.M)
    if not m:
        return None
    path = m.group(1).replace("%j", job)
    if "%" in path.replace("%%", "") or not path.startswith("/"):
        return None
    return Path(path.replace("%%", "%"))


def job_logs(script: str, job: str, home: Path) -> list[Path]:
    """Files the job's output may be in: :func:`output_file`, and Torque-style ``<name>.o<id>``
    and ``<name>.e<id>`` in the home folder."""
    out = [p for p in [output_file(script, job)] if p is not None]
    number = job.split(".")[0]
    if number:
        out += sorted(home.glob(f"*.o{number}")) + sorted(home.glob(f"*.e{number}"))
    return out
