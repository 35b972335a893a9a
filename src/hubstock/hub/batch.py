"""What a batch script says, from a validated request: pure functions, no scheduler, no I/O.

:func:`batch_vars` turns a validated :class:`~hubstock.limits.Options` and the site's
:class:`~hubstock.limits.Limits` into the template variables of the site's batch script
(``spawner/slurm.sh``, ``spawner/pbs.sh``); :func:`render_batch_script` renders it. The
spawner adds batchspawner's own variables (``username``, ``homedir``, ``keepvars``,
``prologue``, ``epilogue``, ``srun``, ``cmd``) and nothing a user typed.

:func:`check_extras` says whether the site's accounts, QoS, constraints and directive lines
fit the scheduler: Slurm takes all of them, PBS only an account and ``#PBS`` lines, and no
directive may set what hubstock sets itself (the queue, the limits, the account...).
"""

from __future__ import annotations

import re
from typing import Any

from ..limits import JobExtras, Limits, LimitsError, Options, Scheduler, check_mib, format_walltime_for

#: each scheduler's directive prefix
DIRECTIVE_PREFIX: dict[str, str] = {"slurm": "#SBATCH ", "pbs": "#PBS ", "torque": "#PBS "}
_LIMITS = "the queues' limits ([[spawner.queues]] max_cpus, max_memory, max_gpus, max_walltime)"
#: what hubstock sets itself, by Slurm option or PBS option or ``-l`` resource, and the key to use instead
_OWNED: dict[str, dict[str, str]] = {
    "slurm": {
        **dict.fromkeys(["-p", "--partition", "-t", "--time", "--mem", "--mem-per-cpu"], _LIMITS),
        **dict.fromkeys(["-c", "--cpus-per-task", "--gres", "-G", "--gpus"], _LIMITS),
        **{"-A": "account", "--account": "account", "--reservation": "reservation", "-q": "qos"},
        **{"--qos": "qos", "-C": "constraint", "--constraint": "constraint"},
    },
    "pbs": {
        "-q": "[[spawner.queues]] name",
        "-A": "account",
        **dict.fromkeys(["walltime", "select", "nodes", "mem", "ncpus", "ngpus"], _LIMITS),
    },
}


def format_memory_slurm(mib: int) -> str:
    """Memory for Slurm's ``--mem``: ``"4096M"``."""
    return f"{check_mib(mib)}M"


def format_memory_pbs(mib: int) -> str:
    """Memory for PBS's ``mem=``: ``"4096mb"``."""
    return f"{check_mib(mib)}mb"


def batch_vars(opts: Options, scheduler: Scheduler, limits: Limits) -> dict[str, str]:
    """The batch script's variables for the validated request ``opts`` on ``scheduler``.

    The chosen queue's JobExtras (account, reservation, qos, constraint, directives) override
    the site's. Every value is a string; an empty one means "leave the line out". For example,
    2 CPUs, 4G and 1 GPU for an hour on queue ``gpu``:

    - slurm: ``partition="gpu"``, ``nprocs="2"``, ``memory="4096M"``, ``runtime="01:00:00"``,
      ``gres="gpu:1"``;
    - pbs (PBS Pro): ``queue="gpu"``, ``resources="select=1:ncpus=2:mem=4096mb:ngpus=1"``;
    - torque: ``queue="gpu"``, ``resources="nodes=1:ppn=2:gpus=1"``, ``memory="4096mb"``.

    The walltime is spelt as each scheduler reads it: 36 hours is ``runtime="1-12:00:00"`` for
    Slurm's ``--time`` and ``runtime="36:00:00"`` for PBS's ``walltime=``.
    """
    extras = limits.extras_for(opts.queue)
    gpus = str(opts.gpus) if opts.gpus else ""
    common = {
        "runtime": format_walltime_for(opts.walltime, scheduler),
        "nprocs": str(opts.cpus),
        "ngpus": gpus,
        "account": extras.account or "",
        "directives": "\n".join(extras.directives or ()),
    }
    if scheduler == "slurm":
        return {
            **common,
            "partition": opts.queue,
            "memory": format_memory_slurm(opts.memory),
            "gres": f"gpu:{gpus}" if gpus else "",
            "reservation": extras.reservation or "",
            "qos": extras.qos or "",
            "constraint": extras.constraint or "",
        }
    memory = format_memory_pbs(opts.memory)
    if scheduler == "pbs":
        resources = f"select=1:ncpus={opts.cpus}:mem={memory}" + (f":ngpus={gpus}" if gpus else "")
    else:
        resources = f"nodes=1:ppn={opts.cpus}" + (f":gpus={gpus}" if gpus else "")
    flavour = "pro" if scheduler == "pbs" else "torque"
    return {**common, "queue": opts.queue, "memory": memory, "resources": resources, "flavour": flavour}


def render_batch_script(template: str, subvars: dict[str, Any]) -> str:
    """The batch script for ``subvars``."""
    return format_template(template, **subvars)


def format_template(template: str, **subvars: Any) -> str:
    """A command or script template filled in: jinja2 for one with ``{{`` or ``{%``, else
    ``str.format``, as batchspawner's ``format_template`` does (without importing batchspawner,
    which imports JupyterHub; tests/test_batchjob.py checks that they agree)."""
    if "{{" in template or "{%" in template:
        from jinja2 import Template

        return str(Template(template).render(**subvars))
    return template.format(**subvars)


#: what PBS Pro's ``qsub -v`` cannot pass in a value: it turns ``"`` into ``\`` and doubles ``\``,
#: and refuses a ``'`` ("cannot send environment with the job")
PBS_UNSAFE_VALUE = re.compile(r"[\"'\\]")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|KEY|CREDENTIAL", re.I)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def pbs_environment(env: dict[str, str], keepvars: str) -> tuple[str, str]:
    """Share the job's variables between ``#PBS -v`` and ``export`` lines: (keepvars, exports).

    ``keepvars`` names the variables the job gets (``"PATH,JUPYTERHUB_API_TOKEN,..."``); those
    whose value in ``env`` PBS Pro can pass stay there (by name: qsub reads their values from its
    own environment), and each of the others (JupyterHub's OAuth scopes are JSON lists) becomes
    ``export NAME='value'`` for the script. A secret (a name with TOKEN, SECRET, KEY...) never goes
    into a script: one that PBS cannot pass is a ValueError, as is a name the shell cannot set.

    >>> pbs_environment({"PATH": "/bin", "SCOPES": '["a"]'}, "PATH,SCOPES")
    ('PATH', 'export SCOPES=\\'["a"]\\'')
    """
    import shlex

    carried, exports = [], []
    for name in (n.strip() for n in keepvars.split(",")):
        if not name:
            continue
        value = env.get(name)
        if value is None or not PBS_UNSAFE_VALUE.search(value):
            carried.append(name)
        elif _SECRET_NAME.search(name):
            raise ValueError(
                f"the variable {name} holds a quote or a backslash, which PBS's qsub -v cannot pass, "
                "and a secret never goes into a batch script"
            )
        elif not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a variable name a batch script can set")
        else:
            exports.append(f"export {name}={shlex.quote(value)}")
    return ",".join(carried), "\n".join(exports)


def check_extras(limits: Limits, scheduler: Scheduler) -> None:
    """A LimitsError if the site's or a queue's JobExtras do not fit ``scheduler``."""
    _check(limits, scheduler, "[spawner]")
    for q in limits.queues:
        _check(q, scheduler, f"[[spawner.queues]] {q.name!r}")


def _check(extras: JobExtras, scheduler: Scheduler, where: str) -> None:
    if scheduler != "slurm":
        for key in ("reservation", "qos", "constraint"):
            if getattr(extras, key):
                raise LimitsError(
                    f"{where}: {key} is a Slurm setting; for {scheduler}, remove it and add the "
                    f"scheduler's own line to directives, e.g. directives = ['#PBS -l ...']."
                )
    prefix = DIRECTIVE_PREFIX[scheduler]
    owned = _OWNED["slurm" if scheduler == "slurm" else "pbs"]
    for line in extras.directives or ():
        if not line.startswith(prefix):
            raise LimitsError(
                f"{where}: directive {line!r} must start with {prefix.strip()!r} for {scheduler}."
            )
        words = [*line[len(prefix) :].split(), ""]
        flags = {words[0].split("=")[0]}
        if words[0] == "-l":  # PBS resources: "-l walltime=1:00:00,mem=1gb", "-l select=1:ncpus=2"
            flags = {part.split("=")[0] for part in words[1].split(":")[0].split(",")}
        if use := next((owned[f] for f in sorted(flags) if f in owned), None):
            raise LimitsError(
                f"{where}: directive {line!r} sets what hubstock sets itself; remove it and set {use} instead."
            )


_SLURM_OUTPUT = re.compile(r"#SBATCH\s+(?:--output(?:=|\s+)|-o\s*)(\S+)")
_SLURM_CHDIR = re.compile(r"#SBATCH\s+(?:--chdir(?:=|\s+)|-D\s*)(\S+)")
_PBS_OUTPUT = re.compile(r"#PBS\s+-o\s+(\S+)")


def output_path(script: str, scheduler: Scheduler, job_id: str, username: str, homedir: str) -> str | None:
    """Where the job's own output goes, from its batch script: the last ``#SBATCH --output``
    (or ``-o``), Slurm's ``slurm-%j.out`` in its working folder without one, or the last
    ``#PBS -o`` (its ``host:`` part dropped). Slurm's ``%j``, ``%u``, ``%x`` and ``%%`` are
    filled in; a relative path is taken from the job's working folder (``--chdir``, or the
    home folder). None when the script does not say (PBS without ``-o``).

    >>> output_path("#SBATCH --output=/home/ada/.jupyterhub-slurm-%j.log", "slurm", "42", "ada", "/home/ada")
    '/home/ada/.jupyterhub-slurm-42.log'
    """
    lines = [ln.strip() for ln in script.splitlines()]
    if scheduler == "slurm":
        found = [m[1] for ln in lines if (m := _SLURM_OUTPUT.match(ln))]
        path = found[-1] if found else "slurm-%j.out"
        name = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("#SBATCH --job-name=")), "")
        path = re.sub(r"%(%|j|u|x)", lambda m: {"%": "%", "j": job_id, "u": username, "x": name}[m[1]], path)
        chdirs = [m[1] for ln in lines if (m := _SLURM_CHDIR.match(ln))]
        base = chdirs[-1] if chdirs else homedir
    else:
        found = [m[1] for ln in lines if (m := _PBS_OUTPUT.match(ln))]
        if not found:
            return None
        path = found[-1].split(":", 1)[-1] if ":" in found[-1] else found[-1]
        base = homedir
    return path if path.startswith("/") else f"{base.rstrip('/')}/{path}"
