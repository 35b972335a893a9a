"""What the current generation's venv and module builds need from a node: site interpreters and
Lmod modules; read from the root, and checked on the hub node.

A venv build runs on a site interpreter, identified in its provenance by the sha256 of its real
binary (and the Lmod module it came from, if any). A kernel that loads modules loads its
build's modules (a module env's, a venv's interpreter module, as ``hubstock build`` resolved
them: ``provenance.modules``, in Lmod's order) and then its template's own
(``metadata.hubstock.modules`` of its published kernel.json): :func:`kernel_modules`, the rule
``hubstock publish`` renders the kernel's argv with. The modules are read from these records,
not parsed out of the argv's shell script, whose wording may change between hubstock versions.

Where a kernel finds Lmod, though, only its argv records: the init it sources and the module
trees it ``module use``s were fixed when it was published, by the publishing checkout's
``[modules]`` (a relative ``use`` is that checkout's). :func:`lmod_location` reads just those two
leading statements of the argv's script; when they cannot be read, the site's ``[modules]`` as
doctor sees it stands in.

The hub node does not run kernels, so here a changed interpreter or a module that does not load
is only a warning (``generation.interpreter``, ``generation.modules``); the probe job checks the
same on a compute node, where it fails (:mod:`.node`). A generation of conda builds only gives no
such lines.
"""

from __future__ import annotations

import json
import os
import shlex
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
#: how a kernel that loads modules starts (:func:`hubstock.lmod.kernel_argv`): bash runs a script
_WRAPPER = ["/bin/bash", "--noprofile", "--norc", "-c"]


@dataclass(frozen=True)
class LmodAt:
    """Where Lmod is for a kernel: its bash init and the module trees to ``module use``."""

    init: str
    use: tuple[str, ...] = ()


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
    #: where a kernel of the build finds Lmod (None: no kernel says; the site's [modules])
    lmod: LmodAt | None = None


@dataclass(frozen=True)
class ModuleSet:
    """One distinct set of modules that published kernels load, in load order, where they find
    Lmod (None: their argv does not say; the site's [modules]), and those kernels."""

    modules: tuple[str, ...]
    kernels: tuple[str, ...]
    lmod: LmodAt | None = None


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


def lmod_location(argv: object) -> LmodAt | None:
    """Where a published kernel's argv finds Lmod: the script's leading ``source INIT`` and
    ``module use DIR...`` (before ``module purge``); None when the argv is not such a script."""
    if not isinstance(argv, list) or len(argv) < 5 or argv[:4] != _WRAPPER or not isinstance(argv[4], str):
        return None
    lexer = shlex.shlex(argv[4], posix=True, punctuation_chars=";")
    lexer.whitespace_split = True
    statements: list[list[str]] = [[]]
    try:
        for token in lexer:
            if token == ";":
                if statements[-1] == ["module", "purge"]:
                    break
                statements.append([])
            else:
                statements[-1].append(token)
    except ValueError:  # unbalanced quotes
        return None
    if statements[-1] != ["module", "purge"] or len(statements) not in (2, 3):
        return None
    source = statements[0]
    if len(source) != 2 or source[0] not in ("source", "."):
        return None
    use: tuple[str, ...] = ()
    if len(statements) == 3:
        if statements[1][:2] != ["module", "use"] or len(statements[1]) < 3:
            return None
        use = tuple(statements[1][2:])
    return LmodAt(init=source[1], use=use)


def module_sets(kernels: Sequence[tuple[str, tuple[str, ...], LmodAt | None]]) -> tuple[ModuleSet, ...]:
    """``(kernel, modules, where Lmod is)`` grouped by modules and Lmod (kernels loading none left
    out), in the order the sets first appear."""
    groups: dict[tuple[tuple[str, ...], LmodAt | None], list[str]] = {}
    for name, mods, at in kernels:
        if mods:
            groups.setdefault((tuple(mods), at), []).append(name)
    return tuple(ModuleSet(modules=m, kernels=tuple(k), lmod=at) for (m, at), k in groups.items())


def read_generation_envs(root: Root, gen: Generation, manifest: GenerationManifest) -> GenerationEnvs:
    """The interpreters and module sets of the generation's builds (server and kernels)."""
    builds: dict[tuple[str, str], Path] = {}
    if manifest.server is not None:
        builds[(manifest.server.env, manifest.server.build)] = Path(manifest.server.prefix)
    for k in manifest.kernels:
        builds.setdefault((k.env, k.build), root.build(k.env, k.build))
    problems: list[str] = []
    provenances = {}
    for key, prefix in builds.items():
        try:
            prov = read_provenance(prefix)
        except RecordError as e:
            problems.append(str(e))
            continue
        if prov is not None:  # None: an incomplete build, which the generation check names
            provenances[key] = prov
    kernels: list[tuple[str, tuple[str, ...], LmodAt | None]] = []
    build_lmod: dict[tuple[str, str], LmodAt] = {}
    for k in manifest.kernels:
        path = gen.entry_dir(k) / "kernel.json"
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue  # the generation check says so
        except (OSError, ValueError) as e:
            problems.append(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})")
            continue
        prov = provenances.get((k.env, k.build))
        mods = kernel_modules((m.full_name for m in prov.modules) if prov else (), spec)
        at = lmod_location(spec.get("argv")) if mods and isinstance(spec, dict) else None
        if at is not None:
            build_lmod.setdefault((k.env, k.build), at)
        kernels.append((k.name, mods, at))
    interpreters = []
    for (env, bid), prov in provenances.items():
        if (i := prov.interpreter) is not None:
            interpreters.append(
                InterpreterUse(
                    env=env,
                    build=bid,
                    path=i.path,
                    sha256=i.sha256,
                    version=i.version,
                    module=i.module,
                    modules=tuple(m.full_name for m in prov.modules) if i.module else (),
                    lmod=build_lmod.get((env, bid)) if i.module else None,
                )
            )
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
        real = found.get("real")
        binary = f"its real binary {real}" if real and real != use.path else "it"
        return (
            f"{what} differs on {host} ({binary} has sha256 {short(found.get('sha256'))}..., not "
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


def site_lmod(init: str | None, use: Sequence[str]) -> LmodAt | None:
    """The site's ``[modules]`` as doctor sees it: ``init`` (else the one found here) and ``use``;
    None when neither names an init (the probe then looks in Lmod's usual places)."""
    found = os.path.expanduser(init) if init else None
    if not found:
        try:
            found = str(lmod.find_init(None))
        except HubstockError:
            return None
    return LmodAt(init=found, use=tuple(use))


def kernels_label(kernels: Sequence[str]) -> str:
    names = ", ".join(repr(k) for k in kernels)
    return f"kernel {names}" if len(kernels) == 1 else f"kernels {names}"


def check_modules_here(envs: GenerationEnvs, init: str | None, use: Sequence[str]) -> list[Check]:
    """``generation.modules``: each set of modules a kernel loads loads here, with the Lmod its
    kernels use, when this node has it (a warning otherwise: the hub node runs no kernels)."""
    if not envs.module_sets:
        return []
    name = "generation.modules"
    bad, unchecked = [], []
    for s in envs.module_sets:
        at = s.lmod or site_lmod(init, use)
        try:
            found = lmod.find_init(at.init if at else init)
        except HubstockError:
            unchecked.append(s)
            continue
        try:
            lmod.load(list(s.modules), init=found, use=list(at.use if at else use))
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
    if len(unchecked) == len(envs.module_sets):
        return [
            ok(name, "not checked here: no Lmod on the hub node (the probe job loads them on a compute node)")
        ]
    shown = "; ".join(
        f"{' '.join(s.modules)} ({', '.join(s.kernels)})" for s in envs.module_sets if s not in unchecked
    )
    return [ok(name, f"every kernel's modules load here: {shown}")]


def _where(at: LmodAt | None) -> dict[str, Any]:
    return {} if at is None else {"init": at.init, "use": list(at.use)}


def probe_args(envs: GenerationEnvs, init: str | None, use: Sequence[str]) -> dict[str, Any]:
    """The probe's part of ARGS.json for these builds (nothing when they need nothing): each
    interpreter and set of modules with where its kernels find Lmod, and the site's ``[modules]``
    for those whose kernels do not say."""
    args: dict[str, Any] = {}
    if envs.interpreters:
        args["interpreters"] = [
            {"path": u.path, "modules": list(u.modules), **_where(u.lmod)} for u in envs.interpreters
        ]
    if envs.module_sets:
        args["module_sets"] = [{"modules": list(s.modules), **_where(s.lmod)} for s in envs.module_sets]
    if any(u.modules for u in envs.interpreters) or envs.module_sets:
        at = site_lmod(init, use)
        args["lmod"] = _where(at) or {"init": None, "use": list(use)}
    return args
