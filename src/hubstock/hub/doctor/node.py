"""What the probe job's report says about the compute node, as checks. Pure: no I/O.

The report is :mod:`.node_probe`'s JSON, or the probe shell's short one when the server
build's python could not run at all (``probe_failed``, ``root_readable``, ``python_executable``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .model import Check, fail, ok, warn

NOT_CHECKED = "not checked: the server build's python did not run on the node"


@dataclass(frozen=True)
class NodeExpect:
    """What the node should satisfy, and what the hub node knows."""

    root: str
    server_prefix: str
    glibc: str  # [virtual_packages]
    linux: str
    cuda: str | None
    gpu: bool  # the probe job asked for a GPU
    hub_url: str  # http://<hub_connect_ip>:<hub_port>/hub/api
    hub_running: bool  # the hub answers on the hub node
    user: str


def version_tuple(text: str | None) -> tuple[int, ...]:
    """``"2.36"`` -> (2, 36); ``"6.1.0-13-amd64"`` -> (6, 1, 0); anything else -> ()."""
    m = re.match(r"\d+(?:\.\d+)*", (text or "").strip())
    return tuple(int(p) for p in m.group().split(".")) if m else ()


def _at_least(have: str | None, need: str) -> bool:
    h, n = version_tuple(have), version_tuple(need)
    width = max(len(h), len(n))
    return bool(h) and h + (0,) * (width - len(h)) >= n + (0,) * (width - len(n))


def root_check(report: dict[str, Any], e: NodeExpect) -> Check:
    host = report.get("host", "the node")
    if "probe_failed" in report:  # the shell's report: only whether the root's folder is open
        if report.get("root_readable"):
            return ok("node.root", f"{e.root} is visible to {e.user} on {host} (not walked: see node.python)")
        return fail(
            "node.root",
            f"{e.root} is missing or not readable by {e.user} on {host}",
            f"mount the shared root at {e.root} on every compute node, readable by all users.",
        )
    root = report.get("root") or {}
    if not root.get("visible"):
        return fail(
            "node.root",
            f"{e.root} does not exist on {host}",
            f"mount the shared root at {e.root} on every compute node (the same path as on the hub node).",
        )
    problems = root.get("unreadable") or []
    if problems:
        shown = ", ".join(f"{p['path']} ({p['error']})" for p in problems)
        return fail(
            "node.root",
            f"{e.user} cannot read on {host}: {shown}",
            f"make them readable by all users (`chmod -R a+rX {problems[0]['path']}`).",
        )
    return ok("node.root", f"{e.root} is there and readable by {e.user} on {host}")


def python_check(report: dict[str, Any], e: NodeExpect) -> Check:
    host = report.get("host", "the node")
    exe = f"{e.server_prefix}/bin/jupyterhub-singleuser --version"
    if "probe_failed" in report:
        why = "is not executable" if not report.get("python_executable") else "failed"
        err = f": {report['stderr']}" if report.get("stderr") else ""
        return fail(
            "node.python",
            f"the server build's python {why} on {host}{err}",
            f"run `{e.server_prefix}/bin/python -c pass` on a compute node as {e.user} to see why, and rebuild "
            "the server env for the nodes if it cannot run there.",
        )
    su = report.get("singleuser") or {}
    if not su.get("ok"):
        return fail(
            "node.python",
            f"`{exe}` failed on {host}: {str(su.get('error', ''))[-300:]}",
            f"run it on a compute node as {e.user} to see why, then fix the server env and publish again.",
        )
    return ok(
        "node.python",
        f"python {report.get('python')} runs on {host}; jupyterhub-singleuser {su.get('version')}",
    )


def _virtual(name: str, have: str | None, need: str, host: str, what: str) -> Check:
    if have is None:
        return warn(
            f"node.{name}", f"{host} did not say its {what}", f"check `[virtual_packages] {name}` by hand."
        )
    if not _at_least(have, need):
        return fail(
            f"node.{name}",
            f"{host} has {what} {have}, older than [virtual_packages] {name} = {need!r} in hubstock.toml",
            f"set [virtual_packages] {name} = {'.'.join(map(str, version_tuple(have)[:2]))!r} (what the nodes have), "
            "then lock, build and publish again.",
        )
    return ok(f"node.{name}", f"{host} has {what} {have} (the site's builds assume {need} or newer)")


def virtual_checks(report: dict[str, Any], e: NodeExpect) -> list[Check]:
    host = report.get("host", "the node")
    if "probe_failed" in report:
        return [warn("node.glibc", NOT_CHECKED)]
    checks = [
        _virtual("glibc", report.get("glibc"), e.glibc, host, "glibc"),
        _virtual("linux", report.get("linux"), e.linux, host, "Linux kernel"),
    ]
    if e.gpu:
        cuda = report.get("cuda") or {}
        have = cuda.get("version")
        if have is None:
            checks.append(
                fail(
                    "node.cuda",
                    f"a GPU job on {host} finds no CUDA driver ({cuda.get('error', 'unknown')})",
                    "install the NVIDIA driver on the GPU nodes, or set max_gpus = 0 for the queue.",
                )
            )
        elif e.cuda is None:
            checks.append(
                warn(
                    "node.cuda",
                    f"{host}'s driver supports CUDA {have}, but [virtual_packages] cuda is not set",
                    f"set [virtual_packages] cuda = {have!r}, then lock, build and publish again.",
                )
            )
        else:
            checks.append(_virtual("cuda", have, e.cuda, host, "a driver for CUDA"))
    return checks


def hub_api_check(report: dict[str, Any], e: NodeExpect) -> Check:
    host = report.get("host", "the node")
    if "probe_failed" in report:
        return warn("node.hub_api", NOT_CHECKED)
    answer = report.get("hub_api") or {}
    if answer.get("status") == 200 and answer.get("version"):
        return ok(
            "node.hub_api",
            f"the hub's API answers at {e.hub_url} from {host} (JupyterHub {answer['version']})",
        )
    said = answer.get("error") or f"HTTP {answer.get('status')}"
    if not e.hub_running:
        return warn(
            "node.hub_api",
            f"nothing answers at {e.hub_url} from {host} ({said}), but the hub is not running on the hub node either",
            "start the hub and run hubstock doctor again.",
        )
    return fail(
        "node.hub_api",
        f"the hub runs, but its API does not answer at {e.hub_url} from {host} ({said})",
        "set [hub] hub_connect_ip to the hub node's address on the compute network (and let the nodes reach "
        "its hub_port through the firewall).",
    )


def node_checks(report: dict[str, Any], e: NodeExpect) -> list[Check]:
    """Every check of the node from the probe's report."""
    return [
        root_check(report, e),
        python_check(report, e),
        *virtual_checks(report, e),
        hub_api_check(report, e),
    ]
