"""What a scheduler says about jobs, read: the parsers of ``squeue`` and ``qstat -f`` answers, and why a job ended.

:func:`parse_squeue` and :func:`parse_qstat` turn an answer into :class:`JobInfo` records (both PBS
flavours, and Slurm's PBS wrappers); :func:`describe_end` says in a few words why a job ended;
:func:`clean` strips control characters from what a command printed. Pure functions: no
commands are run here (:mod:`hubstock.hub.shell` runs them, :mod:`hubstock.hub.status` polls).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class JobInfo:
    """One job in a scheduler's answer.

    ``status`` is what the spawner's state patterns read (what its per-job query command would
    print: ``"RUNNING node042"`` for Slurm, the job's ``qstat -f`` block for PBS); ``state`` the
    scheduler's own word (``RUNNING``, ``TIMEOUT``, ``R``, ``F``); ``reason``, ``exit_status`` and
    ``comment`` what it says about why (``"None"``, ``"TimeLimit"``, ``"-29"``...).
    """

    job_id: str
    status: str
    state: str
    reason: str = ""
    exit_status: str = ""
    comment: str = ""


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Jobs in the output of ``squeue -h -o '%i|%T %B|%r'``: ``"42|RUNNING node042|None"`` per line."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) < 2 or not parts[0]:
            continue
        job_id, status = parts[0].strip(), parts[1].strip()
        state = status.split(" ", 1)[0]
        if state not in SLURM_STATES:
            continue  # a line cut short ("RUNN"), or garbled: not listed (never taken as an end)
        reason = parts[2].strip() if len(parts) > 2 else ""
        jobs[job_id] = JobInfo(job_id, status, state, reason=reason)
    return jobs


def slurm_hostnames(hostlist: str) -> list[str]:
    """The hosts of a Slurm hostlist, as ``scontrol show hostnames`` lists them:
    ``"node[01-03,07],gpu1"`` is node01, node02, node03, node07, gpu1; ranges keep their zero
    padding; several bracket groups multiply (``"r[1-2]n[1-2]"``: r1n1, r1n2, r2n1, r2n2).
    Anything that is not a hostlist is returned as the one host it names."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(hostlist):
        depth += c == "["
        depth -= c == "]"
        if c == "," and depth == 0:
            items.append(hostlist[start:i])
            start = i + 1
    items.append(hostlist[start:])
    out: list[str] = []
    for item in (x.strip() for x in items):
        if item:
            out += _expand(item)
    return out


_GROUP = re.compile(r"\[([^\[\]]*)\]")


def _expand(item: str) -> list[str]:
    m = _GROUP.search(item)
    if m is None:
        return [item]
    head, tail = item[: m.start()], item[m.end() :]
    values = []
    for part in m.group(1).split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return [item]  # not a range Slurm writes: the text as it is
        if not hi:
            values.append(lo)
            continue
        width = len(lo) if lo.startswith("0") else 0
        if int(hi) - int(lo) > 100_000:
            return [item]
        values += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    return [head + v + rest for v in values for rest in _expand(tail)]


def parse_qstat(text: str) -> dict[str, JobInfo]:
    """Jobs in the output of ``qstat -f`` or ``qstat -fx`` (PBS Pro, Torque, Slurm's PBS wrappers).

    Each job is a block that starts with ``Job Id: 42.pbs01``, with ``key = value`` lines (a long
    value continues on lines that start with a tab). A job is listed under its full id and, if
    no other job has it, under its number alone (``qsub`` and ``qstat`` may disagree on the
    server's name).
    """
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            blocks.append((line.split(":", 1)[1].strip(), [line]))
        elif blocks:
            blocks[-1][1].append(line)
    jobs: dict[str, JobInfo] = {}
    short: dict[str, list[str]] = {}
    for job_id, lines in blocks:
        attrs: dict[str, str] = {}
        key = None
        for line in lines[1:]:
            if " = " in line and not line.startswith("\t\t"):
                key, _, value = line.strip().partition(" = ")
                attrs[key] = value.strip()
            elif key and line.startswith("\t"):  # a long value goes on
                attrs[key] += line.strip()
        if attrs.get("job_state", "") not in PBS_STATES:
            continue  # a block cut short before its state, or garbled: not listed
        jobs[job_id] = JobInfo(
            job_id,
            "\n".join(lines),
            attrs["job_state"],
            exit_status=attrs.get("Exit_status", attrs.get("exit_status", "")),
            comment=attrs.get("comment", ""),
        )
        short.setdefault(job_id.split(".", 1)[0], []).append(job_id)
    for number, ids in short.items():
        if len(ids) == 1 and number not in jobs:
            jobs[number] = jobs[ids[0]]
    return jobs


#: every job state of PBS Pro and Torque (``qstat -f``'s ``job_state``)
PBS_STATES = frozenset("QHWTSUBREFXMC")

#: why a Slurm job ended, by its state
SLURM_ENDS = {
    "TIMEOUT": "walltime reached",
    "CANCELLED": "cancelled outside the hub (scancel, or an administrator)",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to start",
    "OUT_OF_MEMORY": "it ran out of memory",
    "PREEMPTED": "another job preempted it",
    "DEADLINE": "its deadline passed",
    "FAILED": "it failed",
    "COMPLETED": "the server exited",
    "REVOKED": "the scheduler revoked it",
    "SPECIAL_EXIT": "it ended with a special exit state",
}
#: every Slurm job state squeue's %T prints (a line with another word is not read)
SLURM_STATES = frozenset(SLURM_ENDS) | {
    "PENDING",
    "CONFIGURING",
    "SUSPENDED",
    "STOPPED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
    "RUNNING",
    "COMPLETING",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "POWER_UP_NODE",
    "UPDATE_DB",
}
#: PBS Pro's own exit statuses (JOB_EXEC_KILL_*): a limit that killed the job
PBS_PRO_LIMITS = {
    "-29": "walltime reached",
    "-27": "it used more memory than it asked for",
    "-26": "it used more virtual memory than it asked for",
    "-28": "it used more CPU time than it asked for",
    "-24": "it used more CPUs than it asked for",
    "-25": "it used more CPUs than it asked for",
}


def describe_end(info: JobInfo | None, scheduler: str) -> str:
    """Why the job ended, in a few words: ``"walltime reached"``, ``"cancelled outside the hub (...)"``.

    ``info`` is the job as the scheduler last listed it (None: it no longer lists the job).
    """
    if info is None:
        return "the scheduler no longer lists it"
    if scheduler == "slurm":
        said = SLURM_ENDS.get(info.state)
        if said is None:
            said = f"it ended ({info.state.lower() or 'unknown state'})"
        if info.state == "FAILED" and info.reason and info.reason not in ("None", "NonZeroExitCode"):
            said += f" ({info.reason})"
        return said
    code = info.exit_status
    if scheduler == "pbs" and code in PBS_PRO_LIMITS:
        return PBS_PRO_LIMITS[code]
    if code.lstrip("-").isdigit():
        n = int(code)
        if n == 0:
            return "the server exited"
        if n > 256:  # killed by a signal (qdel sends SIGTERM)
            sig = n - 256
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return f"it was killed ({name}: qdel, an administrator, or a limit)"
        if n > 0:
            return f"it exited with status {n}"
        return f"the scheduler ended it (exit status {n})"
    if info.comment:
        return f"it ended ({clean(info.comment)[:200]})"
    return "it ended"


def clean(text: str) -> str:
    """``text`` without control characters (tabs and newlines stay)."""
    return _CONTROL.sub("", text)
