"""Kernel templates (``kernels/<name>/``), rendering them, and smoke-testing kernels.

A template is an ordinary kernelspec directory whose ``kernel.json`` may use
``{env_prefix}`` and names its environment in ``metadata.hubstock.env``; other
files (logos) are copied along. ``metadata.hubstock.check`` may hold code the
smoke test runs (for example ``import numpy``); ``metadata.hubstock.modules`` lists
Lmod modules to load before the kernel starts (after those of its env: a module env's,
a venv's interpreter module): the published argv runs ``module purge; module load ...``
through Lmod's own shell function, then the kernel. ``metadata.hubstock.groups`` names the
Unix groups the kernel is for (default: its env's ``groups``; everybody when neither names any):
it is published closed to all others (:mod:`hubstock.store.access`). Published names are the
directory names, stable across builds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import PublishError, SiteError
from ...lmod import MODULE_NAME, kernel_argv
from ...site import Site
from ...store.generations import Generation
from ..lock.envconf import check_group_names
from .smoke import Outcome, SmokeJob, run_smoke

KERNEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: names jupyter_client takes over: it starts its own native kernel (the server's python3) for them
RESERVED_NAMES = {"python", "python2", "python3"}
PLACEHOLDER = "{env_prefix}"
#: code run when a template names no check, by language
DEFAULT_CHECK = {"python": "import sys; print(sys.prefix)", "r": "cat(R.home())"}


@dataclass(frozen=True)
class KernelTemplate:
    name: str
    dir: Path
    spec: dict[str, Any]
    resources: tuple[Path, ...]

    @property
    def env(self) -> str:
        return self.spec["metadata"]["hubstock"]["env"]


@dataclass(frozen=True)
class BuildRef:
    """One complete build that a kernel (or the server) runs on."""

    env: str
    build_id: str
    prefix: Path
    lock_hash: str
    kind: str = "conda"
    #: the Lmod modules its kernels load first (a module env's, a venv's interpreter module)
    modules: tuple[str, ...] = ()
    #: the Unix groups the build is closed to (its provenance's ``groups``)
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class LmodRef:
    """Where Lmod is, for kernels that load modules: its bash init and the trees to ``module use``;
    ``python``: the server build's python, which runs :mod:`.unavailable_kernel` in the kernel's place
    (and tells the user why) when the modules no longer load."""

    init: str
    use: tuple[str, ...] = ()
    python: str | None = None


#: the kernel that says why a kernel cannot start, copied into each kernel that loads modules
UNAVAILABLE_KERNEL = "hubstock-unavailable-kernel.py"


@dataclass(frozen=True)
class RenderedKernel:
    """A kernelspec ready to publish: its kernel.json and the files to copy along."""

    name: str
    spec: dict[str, Any]
    build: BuildRef
    resources: dict[str, bytes] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.spec["display_name"]

    @property
    def check(self) -> str | None:
        hub = self.spec.get("metadata", {}).get("hubstock", {})
        return hub.get("check") or DEFAULT_CHECK.get(self.spec.get("language", "").lower())

    @property
    def groups(self) -> list[str]:
        """The Unix groups it is for (everybody's when empty)."""
        return list(self.spec.get("metadata", {}).get("hubstock", {}).get("groups", []))


def load_kernel_templates(site: Site) -> list[KernelTemplate]:
    """Every template in ``kernels/``, validated; a :class:`SiteError` names the culprit."""
    kdir = site.kernels_dir
    if not kdir.is_dir():
        return []
    envs = set(site.env_names())
    out = []
    for d in sorted(p for p in kdir.iterdir() if p.is_dir()):
        path = d / "kernel.json"
        rel = f"kernels/{d.name}/kernel.json"
        if not path.is_file():
            raise SiteError(f"kernels/{d.name}/ has no kernel.json; add one or remove the folder.")
        if not KERNEL_NAME_RE.match(d.name):
            raise SiteError(
                f"kernels/{d.name}: kernel names use lowercase letters, digits, '.', '_' and '-'; rename it."
            )
        if d.name in RESERVED_NAMES:
            raise SiteError(
                f"kernels/{d.name}: the name {d.name!r} is reserved by Jupyter, which would start the server's "
                f"own python3 instead; rename the folder, e.g. to kernels/{d.name}-stock."
            )
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SiteError(f"{rel} is not valid JSON ({e}); fix the file.") from None
        _validate(rel, spec, envs)
        resources = tuple(sorted(p for p in d.rglob("*") if p.is_file() and p.name != "kernel.json"))
        out.append(KernelTemplate(name=d.name, dir=d, spec=spec, resources=resources))
    return out


def _validate(rel: str, spec: Any, envs: set[str]) -> None:
    if not isinstance(spec, dict):
        raise SiteError(f"{rel} must be a JSON object; fix the file.")
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise SiteError(f"{rel}: 'argv' must be a non-empty list of strings.")
    if "{connection_file}" not in argv:
        raise SiteError(f"{rel}: 'argv' must pass '{{connection_file}}' to the kernel.")
    if not isinstance(spec.get("display_name"), str) or not spec["display_name"].strip():
        raise SiteError(f"{rel}: 'display_name' must be a non-empty string.")
    env_vars = spec.get("env", {})
    if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
        raise SiteError(f"{rel}: 'env' must map variable names to strings.")
    hub = spec.get("metadata", {}).get("hubstock") if isinstance(spec.get("metadata"), dict) else None
    if not isinstance(hub, dict) or not isinstance(hub.get("env"), str):
        raise SiteError(f"{rel}: 'metadata.hubstock.env' must name the environment the kernel runs in.")
    if hub["env"] not in envs:
        raise SiteError(
            f"{rel}: metadata.hubstock.env names {hub['env']!r}, which is not an environment in envs/ "
            f"(the site has: {', '.join(sorted(envs)) or 'none'})."
        )
    unknown = set(hub) - {"env", "check", "modules", "groups"}
    if unknown:
        raise SiteError(
            f"{rel}: unknown key metadata.hubstock.{sorted(unknown)[0]}; use 'env', 'check', 'modules' "
            "and 'groups'."
        )
    groups = hub.get("groups", [])
    if not isinstance(groups, list) or not groups and "groups" in hub:
        raise SiteError(f"{rel}: metadata.hubstock.groups must be a non-empty list of Unix group names.")
    try:
        check_group_names(groups)
    except ValueError as e:
        raise SiteError(f"{rel}: metadata.hubstock.groups: {e}.") from None
    if "check" in hub and not isinstance(hub["check"], str):
        raise SiteError(f"{rel}: metadata.hubstock.check must be code, as a string.")
    mods = hub.get("modules", [])
    if not isinstance(mods, list) or not all(isinstance(m, str) and MODULE_NAME.fullmatch(m) for m in mods):
        raise SiteError(f"{rel}: metadata.hubstock.modules must be a list of module names like 'R/4.2'.")


def kernel_groups(spec: dict[str, Any], build: BuildRef, rel: str = "") -> list[str]:
    """The groups a kernel is for: its template's own, else its build's. A kernel of a restricted
    build may name only groups the build is open to (others would see it and could not run it)."""
    own = list(spec.get("metadata", {}).get("hubstock", {}).get("groups", []))
    if not own:
        return list(build.groups)
    outside = [g for g in own if build.groups and g not in build.groups]
    if outside:
        raise SiteError(
            f"{rel or 'kernel ' + repr(spec.get('display_name'))}: metadata.hubstock.groups names "
            f"{outside[0]!r}, but env {build.env!r} is for {', '.join(build.groups)} only: its members "
            f"would see the kernel and could not run it; add {outside[0]!r} to envs/{build.env}/env.toml's "
            "groups, or leave it out here."
        )
    return own


def kernel_modules(spec: dict[str, Any], build: BuildRef) -> list[str]:
    """The modules a kernel loads: its env's, then its template's own (each once)."""
    own = spec.get("metadata", {}).get("hubstock", {}).get("modules", [])
    return list(dict.fromkeys([*build.modules, *own]))


def render_kernelspec(spec: dict[str, Any], build: BuildRef, lmod: LmodRef | None = None) -> dict[str, Any]:
    """``spec`` with ``{env_prefix}`` filled in and the build recorded in its metadata; a kernel
    that loads modules starts through Lmod (``lmod``: where it is).

    Other placeholders (``{connection_file}``, ``{resource_dir}``) are left for
    jupyter_client. Pure: no files are read or written.
    """
    prefix = str(build.prefix)
    out = json.loads(json.dumps(spec))
    out["argv"] = [a.replace(PLACEHOLDER, prefix) for a in spec["argv"]]
    modules = kernel_modules(spec, build)
    if modules:
        if lmod is None:
            raise SiteError(
                f"kernel {spec.get('display_name')!r} loads modules {' '.join(modules)} but Lmod was not found; "
                "install it or set [modules] init in hubstock.toml."
            )
        fallback = (
            (lmod.python, "{resource_dir}/" + UNAVAILABLE_KERNEL, spec.get("language") or "")
            if lmod.python
            else ()
        )
        out["argv"] = kernel_argv(out["argv"], modules, init=lmod.init, use=lmod.use, fallback=fallback)
    if "env" in spec:
        out["env"] = {k: v.replace(PLACEHOLDER, prefix) for k, v in spec["env"].items()}
    out.setdefault("metadata", {})["hubstock"] = {
        **spec["metadata"]["hubstock"],
        "env": build.env,
        "build": build.build_id,
        "lock_hash": build.lock_hash,
    }
    groups = kernel_groups(spec, build)
    if groups:
        out["metadata"]["hubstock"]["groups"] = groups
    return out


def render_template(t: KernelTemplate, build: BuildRef, lmod: LmodRef | None = None) -> RenderedKernel:
    resources = {str(p.relative_to(t.dir)): p.read_bytes() for p in t.resources}
    if lmod is not None and lmod.python and kernel_modules(t.spec, build):
        resources[UNAVAILABLE_KERNEL] = (Path(__file__).parent / "unavailable_kernel.py").read_bytes()
    return RenderedKernel(
        name=t.name, spec=render_kernelspec(t.spec, build, lmod), build=build, resources=resources
    )


def write_kernel(gen: Generation, k: RenderedKernel) -> Path:
    """Write ``k`` into the generation being staged (a restricted kernel under ``restricted/``)."""
    d = gen.kernel_dir(k.name, restricted=bool(k.groups))
    d.mkdir(parents=True)
    for rel, data in k.resources.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    (d / "kernel.json").write_text(json.dumps(k.spec, indent=1, sort_keys=True) + "\n")
    return d


# --- smoke tests (run by hubstock.admin.publish.smoke) --------------------------------------------


def smoke_jobs(kernels: list[RenderedKernel], gen: Generation) -> list[SmokeJob]:
    """What the smoke tests need of each kernel: its name, where it is, its build and its check."""
    return [
        SmokeJob(
            k.name,
            str(k.build.prefix),
            _check(k),
            k.spec["argv"][0],
            exe_in_prefix=k.build.kind == "conda",
            kernels_dir=str(gen.kernel_dir(k.name, restricted=bool(k.groups)).parent),
        )
        for k in kernels
    ]


def _check(k: RenderedKernel) -> str:
    """The kernel's check code; a python kernel of a venv must also run in its build."""
    code = k.check or ""
    if k.build.kind == "venv" and k.spec.get("language", "").lower() == "python":
        want = json.dumps(str(k.build.prefix))
        code = (
            f"import sys as _s, os as _o\nassert _o.path.realpath(_s.prefix) == _o.path.realpath({want}), "
            f"'runs ' + _s.prefix + ', not its build ' + {want}\n{code}"
        )
    return code


def raise_first_failure(kernels: list[RenderedKernel], outcomes: list[Outcome]) -> None:
    """A :class:`PublishError` for the first kernel that failed its smoke test, naming it and its build."""
    for k, outcome in zip(kernels, outcomes, strict=True):
        if outcome is not None:
            reason, log = outcome
            raise PublishError(
                f"kernel {k.name!r} ({k.display_name}) on env {k.build.env!r} build {k.build.build_id} "
                f"failed its smoke test: {reason}; nothing was published, the current kernels stay.",
                detail=log,
            )


def smoke_test(kernels: list[RenderedKernel], gen: Generation, timeout: float) -> None:
    """Start every kernel of the staged generation ``gen`` and run code in it, in this process;
    raise for the first failure. A kernel passes when its process runs from the build it names and its check
    code (``metadata.hubstock.check``, else a default for its language) runs without error.
    (``hubstock publish`` runs the same tests in a :class:`~hubstock.admin.publish.smoke.SmokeWorker`.)
    """
    raise_first_failure(kernels, run_smoke(smoke_jobs(kernels, gen), gen.kernels_dir, timeout))
