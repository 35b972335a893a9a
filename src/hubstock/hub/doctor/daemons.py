"""Which daemon is at fault: the scheduler's controller (slurmctld, pbs_server), munged on the hub
node, or a node's slurmd or pbs_mom.

:func:`scheduler_down` turns a scheduler command that failed into the check that names the daemon
(it asks munge itself when Slurm's commands fail); :func:`check_node_daemons` reads what the
scheduler says about the nodes of the site's queues and knocks on each node daemon's port
(a refused connection is a daemon that is not running; no answer proves nothing). Reading is
pure; the connections and commands are passed in, so the tests give their own.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from ...limits import Queue
from .model import Check, fail, ok, warn

Runner = Callable[[list[str]], tuple[int, str, str]]
#: (host, port) -> True: refused (nothing listens), False: it answered, None: no conclusion
Knock = Callable[[str, int], bool | None]

_CONTROLLER = re.compile(
    r"Unable to contact slurm controller|slurm_load_\w+ error: (?:Socket timed out|Connection refused)"
    r"|Connection refused|did not answer within",
    re.I,
)
_MUNGE = re.compile(
    r"munge|Invalid authentication credential|Protocol authentication error|Zero Bytes were transmitted",
    re.I,
)
_PBS_SERVER = re.compile(
    r"cannot connect to server|Connection refused|pbs_connect|Communication failure|did not answer within",
    re.I,
)
SLURMD_PORT = 6818
PBS_MOM_PORT = 15002


def slurm_conf(env: Mapping[str, str]) -> dict[str, str]:
    """``key=value`` settings of the hub node's slurm.conf (``SLURM_CONF`` or /etc/slurm/slurm.conf),
    keys in lower case, the first of each; {} when it cannot be read."""
    path = Path(env.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, eq, value = line.partition("=")
        if eq and " " not in key.strip():
            out.setdefault(key.strip().lower(), value.strip())
    return out


def munge_socket(conf: Mapping[str, str]) -> str | None:
    """The munge socket slurm.conf names (``AuthInfo=socket=/path``), if it names one."""
    m = re.search(r"(?:^|,)socket=([^,]+)", conf.get("authinfo", ""))
    return m.group(1) if m else None


def knock(host: str, port: int, timeout: float = 2.0) -> bool | None:
    """Whether a TCP connection to ``host:port`` is refused (True), taken (False), or neither (None)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError as e:
        return True if e.errno == errno.ECONNREFUSED else None


def scheduler_down(
    scheduler: str, cmd: list[str], code: int, said: str, env: Mapping[str, str], run_short: Runner
) -> Check:
    """The ``scheduler`` FAIL for a query that failed: which daemon, and what to do."""
    shown = f"`{' '.join(cmd)}`: {said[:200]}"
    if code == 127:
        return fail(
            "scheduler",
            f"{shown} on the hub node",
            "install the scheduler's client commands on the hub node and give them its configuration "
            "([spawner] environment, e.g. SLURM_CONF).",
        )
    if scheduler == "slurm" or re.search(r"slurm", said, re.I):
        conf = slurm_conf(env)
        sock = munge_socket(conf)
        mcode, mout, merr = run_short(
            ["sh", "-c", 'munge -n ${1:+-S "$1"} | unmunge ${1:+-S "$1"} >/dev/null', "-", sock or ""]
        )
        if mcode != 0:
            why = (merr or mout).strip().splitlines()[-1:] or [f"exit code {mcode}"]
            return fail(
                "scheduler",
                f"munged, the authentication daemon of Slurm's commands, is not answering on the hub node "
                f"(`munge -n | unmunge`{' on ' + sock if sock else ''}: {why[0][:160]}); {shown}",
                "start munged on the hub node (`systemctl restart munge`), and check that it has the "
                "cluster's /etc/munge/munge.key.",
            )
        if _MUNGE.search(said):
            return fail(
                "scheduler",
                f"Slurm's controller refused the hub node's munge credential ({shown})",
                "give the hub node the controller's /etc/munge/munge.key, restart munge, and check "
                "that the two clocks agree.",
            )
        if _CONTROLLER.search(said) or code == 124:
            host = conf.get("slurmctldhost") or conf.get("controlmachine") or "its host"
            return fail(
                "scheduler",
                f"slurmctld, Slurm's controller on {host.split('(')[0]}, is not answering ({shown})",
                f"start slurmctld on {host.split('(')[0]} (`systemctl status slurmctld` there), and check "
                "that the hub node's slurm.conf ([spawner] environment SLURM_CONF) names it.",
            )
    elif _PBS_SERVER.search(said) or code == 124:
        return fail(
            "scheduler",
            f"the PBS server (pbs_server) is not answering the hub node ({shown})",
            "start PBS on the server host (`systemctl status pbs` there), and check PBS_SERVER in "
            "the hub node's /etc/pbs.conf.",
        )
    return fail(
        "scheduler",
        f"{shown} failed on the hub node",
        "install the scheduler's client commands on the hub node and give them its configuration "
        "([spawner] environment, e.g. SLURM_CONF).",
    )


def _slurm_nodes(
    records: list[dict[str, str]], queues: tuple[Queue, ...], conf: Mapping[str, str], knock: Knock
) -> list[tuple[str, set[str], str | None]]:
    """(node, its site queues, why its slurmd is down or None) for every node of the site's queues."""
    names = {q.name for q in queues}
    port = int(conf.get("slurmdport", SLURMD_PORT)) if conf.get("slurmdport", "").isdigit() else SLURMD_PORT
    out = []
    for r in records:
        node = r.get("NodeName", "")
        parts = set(r.get("Partitions", "").split(",")) & names if r.get("Partitions") else set(names)
        if not node or not parts:
            continue
        state = r.get("State", "")
        addr = r.get("NodeAddr") or node
        node_port = int(r["Port"]) if r.get("Port", "").isdigit() and int(r["Port"]) else port
        why = None
        if "DOWN" in state.upper() or state.endswith("*") or "NOT_RESPONDING" in state.upper():
            reason = r.get("Reason", "")
            why = f"State={state}" + (f", Reason={reason}" if reason and reason != "(null)" else "")
        elif knock(addr, node_port):
            why = f"nothing listens on {addr}:{node_port}"
        out.append((node, parts, why))
    return out


def _pbs_nodes(
    blocks: dict[str, dict[str, str]], queues: tuple[Queue, ...], knock: Knock
) -> list[tuple[str, set[str], str | None]]:
    names = {q.name for q in queues}
    out = []
    for node, attrs in blocks.items():
        queue = attrs.get("queue")
        parts = ({queue} & names) if queue else set(names)
        if not parts:
            continue
        state = attrs.get("state", "")
        why = None
        if "down" in state or "state-unknown" in state:
            comment = attrs.get("comment", "")
            why = f"state = {state}" + (f", comment = {comment}" if comment else "")
        elif (
            attrs.get("Mom")
            and attrs.get("Port", "").isdigit()
            and knock(mom := attrs["Mom"].split(",")[0], int(attrs["Port"]))
        ):
            why = f"nothing listens on {mom}:{attrs['Port']}"
        out.append((node, parts, why))
    return out


def check_node_daemons(
    scheduler: str,
    queues: tuple[Queue, ...],
    nodes: list[dict[str, str]] | dict[str, dict[str, str]],
    env: Mapping[str, str],
    knock: Knock = knock,
) -> Check:
    """``scheduler.nodes``: the node daemon (slurmd, pbs_mom) of every node of the site's queues
    runs; FAIL when a queue has no node whose daemon runs (no server can start there), WARN when
    some nodes are down."""
    daemon = "slurmd" if scheduler == "slurm" else "pbs_mom"
    if isinstance(nodes, list):
        found = _slurm_nodes(nodes, queues, slurm_conf(env), knock)
    else:
        found = _pbs_nodes(nodes, queues, knock)
    down = [(n, why) for n, _, why in found if why]
    if not found:
        return warn(
            "scheduler.nodes",
            "the scheduler lists no node in the site's queues",
            "add nodes to the queues of [[spawner.queues]], or name queues that have nodes.",
        )
    if not down:
        return ok("scheduler.nodes", f"{daemon} runs on the {len(found)} node(s) of the site's queues")
    said = "; ".join(f"{daemon} on node {n} is not running ({why})" for n, why in down[:5])
    dead = sorted(q.name for q in queues if not any(q.name in p and not why for _, p, why in found))
    fix = (
        f"start {daemon} on {'that node' if len(down) == 1 else 'those nodes'} (`systemctl start "
        f"{'slurmd' if daemon == 'slurmd' else 'pbs'}` there)"
        + (
            "; slurmctld takes a node back by itself (ReturnToService), or `scontrol update "
            f"nodename={down[0][0]} state=resume`."
            if daemon == "slurmd"
            else "; the PBS server takes the node back once its mom answers."
        )
    )
    if dead:
        return fail("scheduler.nodes", f"{said}: no node of queue(s) {', '.join(dead)} can run a server", fix)
    return warn("scheduler.nodes", said, fix)
