"""The scheduler as the hub node sees it: does it answer, has it every queue of hubstock.toml, and
do its limits allow what the spawn form offers.

Reading the scheduler's output (``scontrol show partition -o`` and ``show node -o`` for Slurm;
``qmgr -c 'list queue @default'`` or ``qstat -Q -f``, and ``pbsnodes -a``, for PBS) is pure, in
functions of their text; :func:`check_scheduler` runs the commands.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ...limits import Queue, format_memory, format_walltime
from .daemons import Knock, check_node_daemons, knock, scheduler_down
from .model import Check, fail, ok

Runner = Callable[[list[str]], tuple[int, str, str]]
_UNLIMITED = {"UNLIMITED", "INFINITE", "NONE", "N/A", "(null)", ""}
_PBS_UNITS = {"b": 1, "w": 8}
_SCALE = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


@dataclass(frozen=True)
class QueueLimits:
    """The most a job may ask for in one queue (None: no limit the scheduler states), and where
    each limit comes from (``cpus: "MaxCPUsPerNode"``), for the messages."""

    name: str
    up: bool
    state: str
    walltime: int | None = None  # seconds
    cpus: int | None = None
    memory: int | None = None  # MiB
    gpus: int | None = None
    source: dict[str, str] = field(default_factory=dict)


def _min(*pairs: tuple[int | None, str]) -> tuple[int | None, str]:
    known = [(v, s) for v, s in pairs if v is not None]
    return min(known, key=lambda p: p[0]) if known else (None, "")


# ---------------------------------------------------------------------------------------------- Slurm


def parse_slurm_records(text: str) -> list[dict[str, str]]:
    """``scontrol -o show ...``: one record a line, ``Key=value`` words (a value with spaces, such
    as ``OS=Linux 6.1 #1 SMP``, keeps its following words)."""
    out = []
    for line in text.splitlines():
        rec: dict[str, str] = {}
        key = None
        for word in line.split():
            k, sep, v = word.partition("=")
            if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:]*", k):
                key, rec[k] = k, v
            elif key:
                rec[key] += " " + word
        if rec:
            out.append(rec)
    return out


def slurm_time(value: str) -> int | None:
    """Seconds of a Slurm time (``1-00:00:00``, ``08:00:00``, ``30:00``, ``90``); None when unlimited."""
    v = value.strip()
    if v.upper() in _UNLIMITED:
        return None
    days, _, rest = v.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:  # minutes:seconds
        h, m, s = 0, *parts
    else:  # minutes
        h, m, s = 0, parts[0], 0
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def _number(value: str | None) -> int | None:
    if value is None or value.strip().upper() in _UNLIMITED:
        return None
    m = re.match(r"\d+", value.strip())
    return int(m.group()) if m else None


def gres_gpus(gres: str) -> int:
    """GPUs in a Slurm ``Gres=`` value: ``gpu:2``, ``gpu:a100:4(S:0-1),shard:8`` -> 2, 4."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres or ""):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _slurm_node_usable(state: str) -> bool:
    s = state.upper()
    return not s.endswith("*") and not any(
        w in s for w in ("DOWN", "DRAIN", "FAIL", "FUTURE", "POWERED_DOWN")
    )


def slurm_limits(partitions: list[dict[str, str]], nodes: list[dict[str, str]]) -> dict[str, QueueLimits]:
    out = {}
    for p in partitions:
        name = p.get("PartitionName", "")
        mine = [n for n in nodes if name in n.get("Partitions", "").split(",")]
        usable = [n for n in mine if _slurm_node_usable(n.get("State", ""))]
        node_cpus = max((_number(n.get("CPUTot")) or 0 for n in usable), default=None)
        node_mem = max((_number(n.get("RealMemory")) or 0 for n in usable), default=None)
        node_gpus = max((gres_gpus(n.get("Gres", "")) for n in usable), default=None)
        cpus = _min(
            (_number(p.get("MaxCPUsPerNode")), "MaxCPUsPerNode"), (node_cpus, "the CPUs of its nodes")
        )
        mem = _min(
            (_number(p.get("MaxMemPerNode")), "MaxMemPerNode"), (node_mem, "the RealMemory of its nodes")
        )
        state = p.get("State", "?")
        if state == "UP" and mine and not usable:
            state = (
                "UP, but none of its nodes is usable (" + ", ".join(n.get("State", "?") for n in mine) + ")"
            )
        out[name] = QueueLimits(
            name=name,
            up=p.get("State") == "UP" and bool(usable),
            state=state,
            walltime=slurm_time(p.get("MaxTime", "UNLIMITED")),
            cpus=cpus[0],
            memory=mem[0],
            gpus=node_gpus,
            source={
                "walltime": "MaxTime",
                "cpus": cpus[1],
                "memory": mem[1],
                "gpus": "the GPUs (Gres) of its nodes",
            },
        )
    return out


# ---------------------------------------------------------------------------------------------- PBS


def parse_pbs_blocks(text: str) -> dict[str, dict[str, str]]:
    """Blocks of ``name`` then indented ``key = value`` lines: ``qmgr -c 'list queue @default'``
    (``Queue workq``), ``qstat -Q -f`` (``Queue: workq``) and ``pbsnodes -a`` (``node01``)."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            head = line.strip()
            head = re.sub(r"^Queue:?\s+", "", head)
            current = out.setdefault(head, {})
        elif current is not None and "=" in line:
            k, _, v = line.strip().partition("=")
            current[k.strip()] = v.strip()
    return out


def pbs_time(value: str | None) -> int | None:
    """Seconds of a PBS walltime (``24:00:00``, ``30:00``, ``3600``)."""
    if not value:
        return None
    parts = [int(float(p)) for p in value.strip().split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return h * 3600 + m * 60 + s


def pbs_size(value: str | None) -> int | None:
    """MiB of a PBS size (``8gb``, ``16331512kb``, ``1024mb``, ``4096``: bytes)."""
    m = re.fullmatch(r"(\d+)([kmgtp]?)([bw]?)", (value or "").strip().lower())
    if not m:
        return None
    return int(m.group(1)) * _SCALE[m.group(2)] * _PBS_UNITS[m.group(3) or "b"] // 1024**2


def _status_field(status: str, key: str) -> str | None:
    m = re.search(rf"(?:^|,){key}=([^,]+)", status or "")
    return m.group(1) if m else None


def pbs_limits(queues: dict[str, dict[str, str]], nodes: dict[str, dict[str, str]]) -> dict[str, QueueLimits]:
    out = {}
    for name, q in queues.items():
        mine = [n for n in nodes.values() if n.get("queue", name) == name]
        usable = [n for n in mine if not re.search(r"down|offline|unknown", n.get("state", ""), re.I)]
        node_cpus = max(
            (_number(n.get("resources_available.ncpus") or n.get("np")) or 0 for n in usable), default=None
        )
        node_mem = max(
            (
                pbs_size(
                    n.get("resources_available.mem")
                    or _status_field(n.get("status", ""), "physmem")
                    or _status_field(n.get("status", ""), "availmem")
                )
                or 0
                for n in usable
            ),
            default=None,
        )
        node_gpus = max(
            (_number(n.get("resources_available.ngpus") or n.get("gpus") or "0") or 0 for n in usable),
            default=None,
        )
        yes = {"true", "yes"}
        up = q.get("enabled", "").lower() in yes and q.get("started", "").lower() in yes
        cpus = _min(
            (_number(q.get("resources_max.ncpus")), "resources_max.ncpus"),
            (node_cpus, "the CPUs of its nodes"),
        )
        mem = _min(
            (pbs_size(q.get("resources_max.mem")), "resources_max.mem"), (node_mem, "the memory of its nodes")
        )
        gpus = _min(
            (_number(q.get("resources_max.ngpus")), "resources_max.ngpus"),
            (node_gpus, "the GPUs of its nodes"),
        )
        state = f"enabled={q.get('enabled', '?')}, started={q.get('started', '?')}"
        if up and not usable:
            state += ", and no node is usable"
        out[name] = QueueLimits(
            name=name,
            up=up and bool(usable),
            state=state,
            walltime=pbs_time(q.get("resources_max.walltime")),
            cpus=cpus[0],
            memory=mem[0],
            gpus=gpus[0],
            source={"walltime": "resources_max.walltime", "cpus": cpus[1], "memory": mem[1], "gpus": gpus[1]},
        )
    return out


# ---------------------------------------------------------------------------------------------- checks


_WHO = {"slurm": "Slurm", "pbs": "PBS", "torque": "Torque"}


def compare_queue(queue: Queue, limits: QueueLimits | None, scheduler: str, known: list[str]) -> Check:
    """``queue.<name>``: the queue exists, is up, and allows the form's maxima."""
    name = f"queue.{queue.name}"
    kind = "partition" if scheduler == "slurm" else "queue"
    if limits is None:
        return fail(
            name,
            f"{_WHO.get(scheduler, scheduler)} has no {kind} {queue.name!r} (it has: {', '.join(known) or 'none'})",
            f"create the {kind}, or rename or remove [[spawner.queues]] {queue.name!r} in hubstock.toml.",
        )
    if not limits.up:
        start = (
            f"`scontrol update PartitionName={queue.name} State=UP`"
            if scheduler == "slurm"
            else f"`qmgr -c 'set queue {queue.name} enabled=True,started=True'`"
        )
        return fail(
            name,
            f"{kind} {queue.name!r} takes no jobs now ({limits.state})",
            f"start it ({start}) and bring its nodes up.",
        )
    short = []
    for key, offered, allowed, fmt in (
        ("walltime", queue.max_walltime, limits.walltime, format_walltime),
        ("cpus", queue.max_cpus, limits.cpus, str),
        ("memory", queue.max_memory, limits.memory, format_memory),
        ("gpus", queue.max_gpus, limits.gpus, str),
    ):
        if allowed is not None and offered > allowed:
            short.append((key, fmt(offered), fmt(allowed), limits.source.get(key, "")))
    if short:
        said = "; ".join(f"max_{k} {o} but {kind} allows {a} ({src})" for k, o, a, src in short)
        keys = ", ".join(
            f"max_{k} = {a!r}" if k in ("walltime", "memory") else f"max_{k} = {a}" for k, _, a, _ in short
        )
        return fail(
            name,
            f"the form offers more than {kind} {queue.name!r} allows: {said}",
            f"set {keys} in [[spawner.queues]] {queue.name!r} of hubstock.toml, or raise the {kind}'s limits.",
        )
    allows = ", ".join(
        f"{k} {fmt(v) if v is not None else 'unlimited'}"
        for k, v, fmt in (
            ("walltime", limits.walltime, format_walltime),
            ("cpus", limits.cpus, str),
            ("memory", limits.memory, format_memory),
            ("gpus", limits.gpus, str),
        )
    )
    return ok(name, f"{kind} {queue.name!r} is up and allows what the form offers ({allows})")


def run_command(env: Mapping[str, str], timeout: float = 30) -> Runner:
    """A runner of the scheduler's commands with ``env``: (exit code, stdout, stderr); 127 when missing."""

    def run(cmd: list[str]) -> tuple[int, str, str]:
        try:
            p = subprocess.run(
                cmd, env=dict(env), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            return 127, "", f"{cmd[0]}: command not found"
        except subprocess.TimeoutExpired:
            return 124, "", f"{' '.join(cmd)} did not answer within {timeout:.0f} s"
        return p.returncode, p.stdout, p.stderr

    return run


QUERIES: dict[str, list[list[str]]] = {
    "slurm": [["scontrol", "show", "partition", "-o"], ["scontrol", "show", "node", "-o"]],
    "pbs": [["qstat", "-B"], ["qmgr", "-c", "list queue @default"], ["pbsnodes", "-av"]],
    "torque": [["qstat", "-Q", "-f"], ["pbsnodes", "-a"]],
}
NAMES = {"slurm": "Slurm", "pbs": "PBS", "torque": "the Torque commands"}


def check_scheduler(
    scheduler: str,
    queues: tuple[Queue, ...],
    run: Runner,
    env: Mapping[str, str] | None = None,
    run_short: Runner | None = None,
    knock: Knock = knock,
) -> list[Check]:
    """``scheduler``: its commands answer (if not, which daemon does not: the controller, munged;
    :func:`~.daemons.scheduler_down`, which asks munge through ``run_short``); then one
    ``queue.<name>`` check per queue of the site, and ``scheduler.nodes``: the node daemons of
    their nodes run (:func:`~.daemons.check_node_daemons`). ``env``: the commands' environment."""
    outputs = []
    for cmd in QUERIES[scheduler]:
        code, out, err = run(cmd)
        if code != 0:
            problem = (err or out).strip().splitlines()[-1:] or [f"exit code {code}"]
            return [scheduler_down(scheduler, cmd, code, problem[0], env or {}, run_short or run)]
        outputs.append(out)
    if scheduler == "slurm":
        node_records: list[dict[str, str]] | dict[str, dict[str, str]] = parse_slurm_records(outputs[1])
        found = slurm_limits(parse_slurm_records(outputs[0]), parse_slurm_records(outputs[1]))
    else:
        node_records = parse_pbs_blocks(outputs[-1])
        found = pbs_limits(parse_pbs_blocks(outputs[-2]), node_records)
    known = sorted(found)
    checks = [
        ok("scheduler", f"{NAMES[scheduler]} answers on the hub node; queues: {', '.join(known) or 'none'}")
    ]
    checks += [compare_queue(q, found.get(q.name), scheduler, known) for q in queues]
    checks.append(check_node_daemons(scheduler, queues, node_records, env or {}, knock))
    return checks
