"""What the current generation's venv and module builds need from a node: site interpreters and
Lmod modules; read from the root, and checked on the hub node.

A venv build runs on a site interpreter, identified in its provenance by the sha256 of its real
binary (and the Lmod module it came from, if any). A kernel that loads modules loads its
build's modules (a module env's, a venv's interpreter module, as ``hubstock build`` resolved
them: ``provenance.modules``, in Lmod's order) and then its template's own
(``metadata.hubstock.modules`` of its published kernel.json): :func:`kernel_modules`, the rule
``hubstock publish`` renders the kernel's argv with. The modules are read from these records,
not parsed out of the argv's shell script, whose wording may change between hubstock versions.

The hub node does not run kernels, so here a changed interpreter or a module that does not load
is only a warning (``generation.interpreter``, ``generation.modules``); the probe job checks the
same on a compute node, where it fails (:mod:`.node`). A generation of conda builds only gives no
such lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import lmod
from ...errors import HubstockError
from ...store.builds import read_provenance
from ...store.generations import Generation
from ...store.records import GenerationManifest, RecordError
from ...store.root import Root
from .model import Check, ok, warn
from .node_probe import interpreter_state

HERE = "the hub node"


@dataclass(frozen=True)
class InterpreterUse:
    """The site interpreter one venv build of the generation runs on, as its provenance says."""

    env: str
    build: str
    path: str
    sha256: str
    version: str
    module: str | None = None
    #: the modules to load before looking for it (the build's: the interpreter's module first)
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleSet:
    """One distinct set of modules that published kernels load, in load order, and those kernels."""

    modules: tuple[str, ...]
    kernels: tuple[str, ...]


@dataclass(frozen=True)
class GenerationEnvs:
    """What the generation's builds need from a node; ``problems``: records that could not be read."""

    interpreters: tuple[InterpreterUse, ...] = ()
    module_sets: tuple[ModuleSet, ...] = ()
    problems: tuple[str, ...] = ()


def kernel_modules(build_modules: Iterable[str], spec: dict[str, Any]) -> tuple[str, ...]:
    """The modules a published kernel loads: its build's, then its kernel.json's own (each once)."""
    meta = spec.get("metadata") if isinstance(spec, dict) else None
    hub = meta.get("hubstock") if isinstance(meta, dict) else None
    own = hub.get("modules") if isinstance(hub, dict) else None
    own = [m for m in own if isinstance(m, str)] if isinstance(own, list) else []
    return tuple(dict.fromkeys([*build_modules, *own]))


def module_sets(kernels: Sequence[tuple[str, tuple[str, ...]]]) -> tuple[ModuleSet, ...]:
    """``(kernel, modules)`` pairs grouped by their modules (kernels loading none left out), in
    the order the sets first appear."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, mods in kernels:
        if mods:
            groups.setdefault(tuple(mods), []).append(name)
    return tuple(ModuleSet(modules=m, kernels=tuple(k)) for m, k in groups.items())


def read_generation_envs(root: Root, gen: Generation, manifest: GenerationManifest) -> GenerationEnvs:
    """The interpreters and module sets of the generation's builds (server and kernels)."""
    builds: dict[tuple[str, str], Path] = {}
    if manifest.server is not None:
        builds[(manifest.server.env, manifest.server.build)] = Path(manifest.server.prefix)
    for k in manifest.kernels:
        builds.setdefault((k.env, k.build), root.build(k.env, k.build))
    problems: list[str] = []
    interpreters: list[InterpreterUse] = []
    build_modules: dict[tuple[str, str], tuple[str, ...]] = {}
    for (env, bid), prefix in builds.items():
        try:
            prov = read_provenance(prefix)
        except RecordError as e:
            problems.append(str(e))
            continue
        if prov is None:
            continue  # an incomplete build: the generation check says so
        build_modules[(env, bid)] = tuple(m.full_name for m in prov.modules)
        if prov.interpreter is not None:
            i = prov.interpreter
            interpreters.append(
                InterpreterUse(
                    env=env,
                    build=bid,
                    path=i.path,
                    sha256=i.sha256,
                    version=i.version,
                    module=i.module,
                    modules=build_modules[(env, bid)] if i.module else (),
                )
            )
    kernels: list[tuple[str, tuple[str, ...]]] = []
    for k in manifest.kernels:
        path = gen.kernel_dir(k.name) / "kernel.json"
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue  # the generation check says so
        except (OSError, ValueError) as e:
            problems.append(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})")
            continue
        kernels.append((k.name, kernel_modules(build_modules.get((k.env, k.build), ()), spec)))
    return GenerationEnvs(tuple(interpreters), module_sets(kernels), tuple(problems))


# ---------------------------------------------------------------------------------------------- verdicts


def short(sha: object) -> str:
    return str(sha or "?")[:12]


def interpreter_problem(use: InterpreterUse, found: dict[str, Any], host: str) -> str | None:
    """What is wrong with ``use``'s interpreter as ``found`` on ``host`` (:func:`.node_probe.
    interpreter_state`, maybe with the module's ``on_path``), in one clause; None when it is the
    one the build was made with."""
    what = f"the interpreter {use.path} of env {use.env!r} build {use.build[:8]}"
    elsewhere = found.get("on_path")
    hint = (
        f"; module {use.module} gives {elsewhere} there"
        if use.module and elsewhere and elsewhere != use.path
        else ""
    )
    if not found.get("exists"):
        return f"{what} is missing on {host}{hint}"
    if found.get("error"):
        return f"{what} cannot be read on {host} ({found['error']})"
    if found.get("sha256") != use.sha256:
        real = f" ({found['real']})" if found.get("real") and found["real"] != use.path else ""
        return (
            f"{what} differs on {host}{real} (sha256 {short(found.get('sha256'))}... not "
            f"{short(use.sha256)}...){hint}"
        )
    return None


def interpreter_fix(envs: Iterable[str]) -> str:
    names = " ".join(dict.fromkeys(envs))
    return f"rebuild with `hubstock build {names}` and publish, or restore the interpreter."


def check_interpreters_here(envs: GenerationEnvs) -> list[Check]:
    """``generation.interpreter``: every venv build's interpreter is here, unchanged (a warning
    otherwise: the hub node runs no kernels, but ``hubstock build`` here would build anew)."""
    if not envs.interpreters and not envs.problems:
        return []
    name = "generation.interpreter"
    bad = []
    for use in envs.interpreters:
        problem = interpreter_problem(use, interpreter_state(use.path), HERE)
        if problem:
            bad.append((use, problem))
    if bad or envs.problems:
        parts = [p for _, p in bad]
        if bad:
            parts[-1] += (
                ": the site changed its Python here (kernels run on the compute nodes: see node.interpreter)"
            )
        if envs.problems:
            parts.append(f"some build records cannot be read: {'; '.join(envs.problems)}")
        fix = (
            interpreter_fix(u.env for u, _ in bad)
            if bad
            else "restore them, or rebuild those envs and publish."
        )
        return [warn(name, "; ".join(parts), fix)]
    shown = ", ".join(f"{u.path} ({u.env})" for u in envs.interpreters)
    return [ok(name, f"the venv builds' interpreters are here and unchanged: {shown}")]


def lmod_settings(init: str | None, use: Sequence[str]) -> dict[str, Any]:
    """Where the probe finds Lmod: ``[modules] init`` (else the one found here, else the probe
    looks in the usual places) and ``[modules] use``."""
    found = os.path.expanduser(init) if init else None
    if not found:
        try:
            found = str(lmod.find_init(None))
        except HubstockError:
            found = None
    return {"init": found, "use": list(use)}


def kernels_label(kernels: Sequence[str]) -> str:
    names = ", ".join(repr(k) for k in kernels)
    return f"kernel {names}" if len(kernels) == 1 else f"kernels {names}"


def check_modules_here(envs: GenerationEnvs, init: str | None, use: Sequence[str]) -> list[Check]:
    """``generation.modules``: each set of modules a kernel loads loads here, when this node has
    Lmod (a warning otherwise: the hub node runs no kernels)."""
    if not envs.module_sets:
        return []
    name = "generation.modules"
    try:
        found = lmod.find_init(init)
    except HubstockError:
        return [
            ok(name, "not checked here: no Lmod on the hub node (the probe job loads them on a compute node)")
        ]
    bad = []
    for s in envs.module_sets:
        try:
            lmod.load(list(s.modules), init=found, use=list(use))
        except HubstockError as e:
            said = lmod.lmod_message(getattr(e, "detail", "") or "") or str(e).rstrip(".")
            bad.append(f"{kernels_label(s.kernels)}: module load {' '.join(s.modules)} fails here ({said})")
    if bad:
        return [
            warn(
                name,
                "; ".join(bad) + " (kernels run on the compute nodes: see node.modules)",
                "install the modules on the hub node too, or fix [modules] use in hubstock.toml, to check them here.",
            )
        ]
    shown = "; ".join(f"{' '.join(s.modules)} ({', '.join(s.kernels)})" for s in envs.module_sets)
    return [ok(name, f"every kernel's modules load here: {shown}")]


def probe_args(envs: GenerationEnvs, init: str | None, use: Sequence[str]) -> dict[str, Any]:
    """The probe's part of ARGS.json for these builds (nothing when they need nothing)."""
    args: dict[str, Any] = {}
    if envs.interpreters:
        args["interpreters"] = [{"path": u.path, "modules": list(u.modules)} for u in envs.interpreters]
    if envs.module_sets:
        args["module_sets"] = [list(s.modules) for s in envs.module_sets]
    if any(u.modules for u in envs.interpreters) or envs.module_sets:
        args["lmod"] = lmod_settings(init, use)
    return args
