"""What a user may ask for: the environment's name, its requirements and its stock base.

Everything here checks a value a user typed (on the command line or in the stock page's form)
against the site's ``[personal]`` limits before anything is written or submitted, and turns a
bad one into one sentence that names it and says what to do. Pure, but :func:`resolve_base`,
which reads the published generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import PersonalError
from ..limits import show
from ..site import PersonalSettings, Settings
from ..store.access import may_use
from ..store.generations import Generation
from ..store.records import GenerationManifest, PersonalBase

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
#: the longest requirement line a user may give
MAX_REQUIREMENT = 200


def check_name(name: str) -> str:
    """``name`` if it can name a personal environment (and a folder, and a kernel)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PersonalError(
            f"{show(name)} cannot name your environment: use up to 32 lowercase letters, digits, '-' "
            "and '_', starting with a letter or digit (for example 'analysis')."
        )
    return name


def denied(settings: Settings) -> set[str]:
    """The packages no personal environment may contain: ``[personal] deny`` and ``[server] forbidden``."""
    return {canonicalize_name(n) for n in (*settings.personal.deny, *settings.server.forbidden)}


def check_requirements(reqs: Iterable[str], settings: Settings) -> list[str]:
    """The requirements, each checked (a package of the index, with versions and extras at most;
    no URL, no path, no option), against the site's allow and deny lists and the count limit."""
    personal: PersonalSettings = settings.personal
    out: list[str] = []
    for raw in reqs:
        text = raw.strip() if isinstance(raw, str) else raw
        if not isinstance(text, str) or not text:
            raise PersonalError(
                f"{show(raw)} is not a package requirement; give a package name, such as 'tabulate'."
            )
        if len(text) > MAX_REQUIREMENT:
            raise PersonalError(
                f"the requirement {show(text)} is {len(text)} characters long, more than the "
                f"{MAX_REQUIREMENT} allowed; give a package name with at most a version, such as 'tabulate>=0.9'."
            )
        if text.startswith("-"):
            raise PersonalError(
                f"{show(text)} is an option, not a package; personal environments use the site's index "
                "only: give package names, such as 'tabulate'."
            )
        try:
            req = Requirement(text)
        except InvalidRequirement:
            raise PersonalError(
                f"{show(text)} is not a package requirement; give a name with an optional version, "
                "such as 'tabulate' or 'humanize>=4'."
            ) from None
        if req.url:
            raise PersonalError(
                f"{show(text)} names a URL; personal environments install from the site's index only: "
                f"give the package name {req.name!r} instead."
            )
        name = canonicalize_name(req.name)
        if name in denied(settings):
            raise PersonalError(
                f"package {req.name!r} may not be installed in a personal environment on this site "
                "([personal] deny); ask the site's administrators."
            )
        if personal.allow and name not in {canonicalize_name(n) for n in personal.allow}:
            raise PersonalError(
                f"package {req.name!r} is not among the packages this site allows in personal environments "
                f"({', '.join(sorted(personal.allow))}); ask the site's administrators to add it."
            )
        out.append(str(req))
    if not out:
        raise PersonalError("no package given; name the packages to add, such as `tabulate humanize`.")
    if len(out) > personal.max_packages:
        raise PersonalError(
            f"{len(out)} requirements is more than the {personal.max_packages} a personal environment may name "
            "([personal] max_packages); put fewer in it."
        )
    if len({canonicalize_name(Requirement(r).name) for r in out}) != len(out):
        raise PersonalError("a package is named twice; name each package once, with its version if any.")
    return out


def read_requirements_file(path: Path) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines left out)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise PersonalError(
            f"{path} cannot be read ({getattr(e, 'strerror', None) or e}); give a readable file."
        ) from None
    lines = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def resolve_base(
    gen: Generation, manifest: GenerationManifest, wanted: str | None, member_of: set[str]
) -> PersonalBase:
    """The stock kernel named ``wanted`` (a kernel, or an env's first kernel; None: the default
    kernel) in the published generation: a Python kernel whose argv runs its build's python."""
    entries = [k for k in manifest.kernels if not k.pinned_of and may_use(k.groups, member_of)]
    name = wanted or manifest.default_kernel
    found = [k for k in entries if k.name == name] or [k for k in entries if k.env == name]
    if not found:
        offered = ", ".join(sorted({k.name for k in entries} | {k.env for k in entries})) or "none"
        raise PersonalError(
            f"there is no stock kernel or environment {show(name)} to build on; use one of: {offered}."
        )
    entry = found[0]
    build = manifest.builds.get(entry.env)
    kernel_json = gen.entry_dir(entry) / "kernel.json"
    try:
        spec = json.loads(kernel_json.read_text())
    except (OSError, ValueError) as e:
        raise PersonalError(
            f"the stock kernel {entry.name!r} cannot be read ({e}); tell the site's administrators."
        ) from None
    argv = spec.get("argv") or []
    prefix = build.prefix if build else ""
    if (
        (entry.language or spec.get("language")) != "python"
        or not prefix
        or f"{prefix}/bin/python" not in argv
    ):
        raise PersonalError(
            f"the stock kernel {entry.name!r} is not a Python kernel of a build, so nothing can be added to it; "
            "build on a Python kernel, such as the default one."
        )
    check = str(spec.get("metadata", {}).get("hubstock", {}).get("check", ""))
    return PersonalBase(
        kernel=entry.name,
        display_name=entry.display_name,
        env=entry.env,
        build=entry.build,
        prefix=prefix,
        generation=gen.name,
        spec=spec,
        check=check,
        kernel_dir=str(kernel_json.parent),
    )


def kernel_spec(base: PersonalBase, name: str, prefix: Path) -> dict:
    """The personal kernel's kernel.json: the stock kernel's, running the personal build's python
    (which sees the stock packages) and with the personal build's ``bin`` first on ``PATH``."""
    spec = json.loads(json.dumps(base.spec))
    stock_python = f"{base.prefix}/bin/python"
    spec["argv"] = [f"{prefix}/bin/python" if a == stock_python else a for a in spec["argv"]]
    spec["display_name"] = f"{base.display_name} + mine: {name}"
    env = spec.setdefault("env", {})
    env["PATH"] = f"{prefix}/bin:{env['PATH']}" if "PATH" in env else f"{prefix}/bin:${{PATH}}"
    meta = spec.setdefault("metadata", {}).setdefault("hubstock", {})
    meta.update(personal=name, base_kernel=base.kernel, base_build=f"{base.env}/{base.build}")
    for key in ("groups", "build", "lock_hash"):  # the stock build's own, not this one's
        meta.pop(key, None)
    return spec
