"""What the probe job's report says about the compute node, as checks. Pure: no I/O.

The report is :mod:`.node_probe`'s JSON, or the probe shell's short one when the server
build's python could not run at all (``probe_failed``, ``root_readable``, ``python_executable``).
``node.interpreter`` and ``node.modules`` appear only when the generation has venv builds or
kernels that load modules (:mod:`.envs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ...lmod import lmod_message
from .envs import GenerationEnvs, ModuleSet, interpreter_fix, interpreter_problem, kernels_label
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
    #: the generation's venv interpreters and the module sets its kernels load
    envs: GenerationEnvs = field(default_factory=GenerationEnvs)
    #: the groups the generation's restricted kernels and builds are for (none: no check)
    groups: tuple[str, ...] = ()


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


def _reported(report: dict[str, Any], key: str, count: int) -> list[dict[str, Any]] | None:
    """The report's ``key`` list if it has ``count`` entries (one per thing asked), else None."""
    found = report.get(key)
    if not isinstance(found, list) or len(found) != count or not all(isinstance(f, dict) for f in found):
        return None
    return found


def _load_said(load: dict[str, Any]) -> str:
    """Lmod's message of a failed load, in one line (or why there was no Lmod)."""
    output = str(load.get("output") or "")
    if load.get("code") == 4 or load.get("init") is None:
        return output.strip().splitlines()[0] if output.strip() else "no Lmod"
    return lmod_message(output) or f"exit status {load.get('code')}"


def interpreter_check(report: dict[str, Any], e: NodeExpect) -> list[Check]:
    """``node.interpreter``: every venv build's interpreter is on the node (after loading its
    module, as its kernel does) and its real binary is the one the build was made with."""
    uses = e.envs.interpreters
    if not uses:
        return []
    name, host = "node.interpreter", report.get("host", "the node")
    if "probe_failed" in report:
        return [warn(name, NOT_CHECKED)]
    found = _reported(report, "interpreters", len(uses))
    if found is None:
        return [
            warn(name, f"the probe on {host} did not report the interpreters", "run hubstock doctor again.")
        ]
    bad, unloaded = [], []
    for use, f in zip(uses, found, strict=True):
        load = f.get("load") or {}
        said = _load_said(load) if load and not load.get("ok") else ""
        problem = interpreter_problem(use, f, host)
        if problem:
            bad.append((use, problem + (f" (its module does not load there: {said})" if said else "")))
        elif said:
            unloaded.append(f"module {' '.join(use.modules)} of env {use.env!r} does not load there ({said})")
    if bad:
        return [
            fail(
                name,
                "; ".join(p for _, p in bad) + ": the site changed its Python",
                interpreter_fix(u.env for u, _ in bad),
            )
        ]
    if unloaded:
        return [
            warn(
                name,
                f"the interpreters are on {host} and unchanged, but " + "; ".join(unloaded),
                "install the module on the compute nodes, or fix [modules] use in hubstock.toml (see node.modules).",
            )
        ]
    shown = ", ".join(f"{u.path} ({u.env})" for u in uses)
    return [ok(name, f"the venv builds' interpreters are on {host} and unchanged: {shown}")]


def _named(modules: tuple[str, ...], message: str) -> list[str]:
    """The modules of a set that Lmod's message names (all of them when it names none)."""
    named = [m for m in modules if re.search(rf"(?<![\w./+-]){re.escape(m)}(?![\w./+-])", message)]
    return named or list(modules)


def module_problem(s: ModuleSet, load: dict[str, Any], host: str) -> tuple[str, str]:
    """(the sentence, its fix) for a set of modules that does not load on ``host``."""
    who = f"{kernels_label(s.kernels)} cannot start on {host}"
    said = _load_said(load)
    if load.get("code") == 4 or load.get("init") is None:
        init = load.get("init")
        where = f"Lmod's init {init} is missing there or is not Lmod" if init else "it has no Lmod"
        return (
            f"{who}: {where} ({said})",
            "install Lmod on the compute nodes at the path the kernels use, or set [modules] init in "
            "hubstock.toml to where it is there and publish again.",
        )
    names = " ".join(_named(s.modules, said))
    plural = "s" if " " in names else ""
    how = "unknown" if "unknown" in said.lower() else "failing"
    verb = ("are" if plural else "is") + f" {how} there"
    return (
        f"{who}: module{plural} {names} {verb} ({said})",
        "install the module on the compute nodes, or fix [modules] use in hubstock.toml, then lock, build "
        "and publish again.",
    )


def modules_check(report: dict[str, Any], e: NodeExpect) -> list[Check]:
    """``node.modules``: every set of modules a published kernel loads loads on the node, with the
    site's Lmod (``module load`` through bash, as the kernel does)."""
    sets = e.envs.module_sets
    if not sets:
        return []
    name, host = "node.modules", report.get("host", "the node")
    if "probe_failed" in report:
        return [warn(name, NOT_CHECKED)]
    found = _reported(report, "modules", len(sets))
    if found is None:
        return [warn(name, f"the probe on {host} did not report the modules", "run hubstock doctor again.")]
    bad = [module_problem(s, f, host) for s, f in zip(sets, found, strict=True) if not f.get("ok")]
    if bad:
        return [fail(name, "; ".join(d for d, _ in bad), bad[0][1])]
    shown = "; ".join(f"{' '.join(s.modules)} ({', '.join(s.kernels)})" for s in sets)
    return [ok(name, f"every kernel's modules load on {host}: {shown}")]


def groups_check(report: dict[str, Any], e: NodeExpect) -> list[Check]:
    """``node.groups``: the groups of the kernels for some groups only exist on the node, and what
    is closed to the test account (not a member) refuses it there."""
    if not e.groups:
        return []
    name, host = "node.groups", report.get("host", "the node")
    if "probe_failed" in report:
        return [warn(name, NOT_CHECKED)]
    found = report.get("restricted")
    if not isinstance(found, dict):
        return [warn(name, f"the probe on {host} did not report the groups", "run hubstock doctor again.")]
    missing = list(found.get("missing_groups") or [])
    if missing:
        return [
            fail(
                name,
                f"the group(s) {', '.join(missing)}, which kernels are for, do not exist on {host}: their "
                "members cannot use those kernels there",
                "create the groups on the compute nodes (or in the directory service they use), with the "
                "same members as on the hub node.",
            )
        ]
    opened = list(found.get("opened") or [])
    if opened:
        return [
            fail(
                name,
                f"{e.user}, in none of their groups, can read {', '.join(opened)} on {host}: a kernel or "
                "build for some groups only was opened",
                "run `hubstock verify --repair` on the admin machine, which closes it again.",
            )
        ]
    return [
        ok(name, f"the groups {', '.join(e.groups)} exist on {host}, and what is theirs is closed to others")
    ]


def node_checks(report: dict[str, Any], e: NodeExpect) -> list[Check]:
    """Every check of the node from the probe's report."""
    return [
        root_check(report, e),
        python_check(report, e),
        *virtual_checks(report, e),
        hub_api_check(report, e),
        *interpreter_check(report, e),
        *modules_check(report, e),
        *groups_check(report, e),
    ]
