"""What changed between two published generations: kernels, their packages, extension defaults.

Pure: :func:`diff_generations` takes what two generations hold (:class:`GenerationContents`:
the manifest, the provenance of every build it names, its extension defaults) and
returns a :class:`GenerationDiff`. ``hubstock diff`` and the hub's "Stock environments"
page both use it, so they always agree; :mod:`hubstock.store.catalog` reads the
contents from the root.

For each stock kernel: packages added, removed, upgraded and downgraded (conda and
PyPI alike, with versions); the Lmod modules under it (a module env's, a venv
interpreter's: manager ``module``, whose "build" is its modulefile's sha256, so a
modulefile the site changed in place shows as ``changed``); a venv's interpreter
(version, binary, path or module); kernels added, removed and renamed (the pinned
kernels of previous builds, ``<name>-<build8>``, included); and the extension defaults
(``page_config.json``, ``overrides.json``, ``jupyter_server_config.json``) key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .records import BuildProvenance, GenerationManifest, Interpreter, KernelEntry, LockedPackage
from .versions import canonicalize_name, compare_versions

#: the extension-default files of a generation that are compared, in this order
EXTENSION_FILES = ("page_config.json", "overrides.json", "jupyter_server_config.json")


@dataclass(frozen=True)
class GenerationContents:
    """What one generation holds, as far as users are concerned (immutable once published)."""

    name: str
    manifest: GenerationManifest
    #: ``<env>/<build-id>`` -> provenance, for every build the generation names (None: no longer on the root)
    provenances: dict[str, BuildProvenance | None] = field(default_factory=dict)
    #: extension-default file name -> its JSON content ({} when the generation has none)
    extensions: dict[str, Any] = field(default_factory=dict)

    def provenance(self, env: str, build: str) -> BuildProvenance | None:
        return self.provenances.get(f"{env}/{build}")

    def packages(self, env: str, build: str) -> list[LockedPackage] | None:
        prov = self.provenance(env, build)
        return list(prov.packages) if prov else None


def module_package(family_and_version: str, path: str, sha256: str) -> LockedPackage:
    """An Lmod module as a package of manager ``module``, as a module env's provenance has it:
    ``R/4.2`` -> name ``R``, version ``4.2`` (``default`` when the full name has no version)."""
    name, _, version = family_and_version.partition("/")
    return LockedPackage(manager="module", name=name, version=version or "default", url=path, sha256=sha256)


def compared_packages(prov: BuildProvenance) -> list[LockedPackage]:
    """What a build's diff compares: its packages, and the modules it loads that are not among
    them (a venv interpreter's module; a module env has its modules as packages already)."""
    out = list(prov.packages)
    have = {p.name.lower() for p in out if p.manager == "module"}
    for m in prov.modules:
        p = module_package(m.full_name, m.path, m.sha256)
        if p.name.lower() not in have:
            have.add(p.name.lower())
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------------------
# the result


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageChange(_Out):
    """One package that differs between two builds."""

    manager: str  # "conda", "pip" or "module" (an Lmod module: name "R", version "4.2")
    name: str
    #: "changed": the same version, but another file (a module's modulefile edited in place, a
    #: package's artifact with another sha256), or versions that differ only in spelling
    change: Literal["added", "removed", "upgraded", "downgraded", "rebuilt", "changed"]
    before: str | None = None  # version
    after: str | None = None
    before_build: str | None = None  # conda build string; a module's: its modulefile's sha256
    after_build: str | None = None


class InterpreterChange(_Out):
    """A venv build's interpreter (the site's Python) that differs between two builds: another
    version, another binary (sha256), another path or another module."""

    change: Literal["added", "removed", "upgraded", "downgraded", "changed"]
    before: Interpreter | None = None
    after: Interpreter | None = None


class KernelChange(_Out):
    """One kernel of either generation, and how it changed."""

    name: str  # its name in the later generation (in the earlier one when removed)
    change: Literal["added", "removed", "renamed", "changed", "unchanged"]
    renamed_from: str | None = None
    display_name: str
    display_name_before: str | None = None  # only when it changed
    env: str
    build: str
    env_before: str | None = None  # only when a kernel is changed or renamed
    build_before: str | None = None
    pinned_of: str | None = None  # a previous build's kernel: the stock kernel it was
    packages: list[PackageChange] = []
    packages_known: bool = True  # False when a build's provenance is gone from the root
    interpreter: InterpreterChange | None = None  # only when a venv's interpreter changed
    groups: list[str] = []  # the Unix groups it is for (none: everybody's)
    groups_before: list[str] | None = None  # only when they changed


class ServerChange(_Out):
    """The single-user server's build (JupyterLab and friends)."""

    env: str
    change: Literal["added", "removed", "changed", "unchanged"]
    build: str | None = None
    build_before: str | None = None
    packages: list[PackageChange] = []
    packages_known: bool = True
    interpreter: InterpreterChange | None = None


class ExtensionChange(_Out):
    """One setting of the extension defaults that changed: ``key`` is its path in the file."""

    file: str
    key: list[str]
    change: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None


class GenerationRef(_Out):
    generation: str
    created: str
    by: str


class GenerationDiff(_Out):
    """Everything that changed from ``before`` (None: nothing was published) to ``after``."""

    before: GenerationRef | None
    after: GenerationRef
    kernels: list[KernelChange]
    server: ServerChange | None = None
    extensions: list[ExtensionChange] = []

    @property
    def changed(self) -> bool:
        return (
            any(k.change != "unchanged" for k in self.kernels)
            or bool(self.server and self.server.change != "unchanged")
            or bool(self.extensions)
        )


# ---------------------------------------------------------------------------------------------------------
# the diff


def _key(p: LockedPackage) -> tuple[str, str]:
    name = canonicalize_name(p.name) if p.manager == "pip" else p.name.lower()
    return p.manager, name


def _build(p: LockedPackage) -> str | None:
    """What tells two files of one version apart: a conda build string; a module's modulefile sha256."""
    return p.sha256 if p.manager == "module" else (p.build or None)


def diff_packages(before: list[LockedPackage], after: list[LockedPackage]) -> list[PackageChange]:
    """Packages added, removed, upgraded, downgraded, rebuilt or changed, sorted by name then manager.

    The same version and build with another sha256 is "changed" (a modulefile edited in place,
    a wheel or package file replaced): what a kernel runs is not the same."""
    a = {_key(p): p for p in before}
    b = {_key(p): p for p in after}
    out = []
    for key in sorted(a.keys() | b.keys(), key=lambda k: (k[1], k[0])):
        pa, pb = a.get(key), b.get(key)
        if pa and pb:
            same_build = _build(pa) == _build(pb)
            if pa.version == pb.version and same_build and pa.sha256 == pb.sha256:
                continue
            c = compare_versions(pa.version, pb.version)
            if c:
                kind: Literal["upgraded", "downgraded", "rebuilt", "changed"] = (
                    "upgraded" if c < 0 else "downgraded"
                )
            elif pa.version == pb.version and not same_build and pb.manager != "module":
                kind = "rebuilt"
            else:
                kind = "changed"
            out.append(
                PackageChange(
                    manager=pb.manager,
                    name=pb.name,
                    change=kind,
                    before=pa.version,
                    after=pb.version,
                    before_build=_build(pa),
                    after_build=_build(pb),
                )
            )
        elif pb:
            out.append(
                PackageChange(
                    manager=pb.manager, name=pb.name, change="added", after=pb.version, after_build=_build(pb)
                )
            )
        elif pa:
            out.append(
                PackageChange(
                    manager=pa.manager,
                    name=pa.name,
                    change="removed",
                    before=pa.version,
                    before_build=_build(pa),
                )
            )
    return out


def diff_interpreters(before: Interpreter | None, after: Interpreter | None) -> InterpreterChange | None:
    """How a venv's interpreter changed (None: it did not, or neither build is a venv)."""
    if before == after:
        return None
    if before is None:
        return InterpreterChange(change="added", after=after)
    if after is None:
        return InterpreterChange(change="removed", before=before)
    c = compare_versions(before.version, after.version)
    kind: Literal["upgraded", "downgraded", "changed"] = (
        "upgraded" if c < 0 else "downgraded" if c > 0 else "changed"
    )
    return InterpreterChange(change=kind, before=before, after=after)


def _renames(removed: list[KernelEntry], added: list[KernelEntry]) -> dict[str, KernelEntry]:
    """Pair kernels that left with kernels that came, when one is plainly the other renamed:
    on the same env and of the same kind (stock or pinned), and with the same display name,
    or else the same build, or else as the only pair left. Returns new name -> old entry."""

    def compatible(o: KernelEntry, n: KernelEntry) -> bool:
        return o.env == n.env and bool(o.pinned_of) == bool(n.pinned_of)

    criteria = (
        lambda o, n: o.display_name == n.display_name,
        lambda o, n: o.build == n.build,
        lambda o, n: True,
    )
    pairs: dict[str, KernelEntry] = {}
    left = list(removed)
    for match in criteria:
        for n in added:
            if n.name in pairs:
                continue
            cands = [o for o in left if compatible(o, n) and match(o, n)]
            if len(cands) != 1:
                continue
            o = cands[0]
            if any(m is not n and m.name not in pairs and compatible(o, m) and match(o, m) for m in added):
                continue  # two kernels could be it: not plainly a rename
            pairs[n.name] = o
            left.remove(o)
    return pairs


def _package_changes(
    before: GenerationContents, after: GenerationContents, env_a: str, build_a: str, env_b: str, build_b: str
) -> tuple[list[PackageChange], bool, InterpreterChange | None]:
    """(package and module changes, whether both builds' provenances are known, interpreter change)."""
    if (env_a, build_a) == (env_b, build_b):
        return [], True, None
    pa, pb = before.provenance(env_a, build_a), after.provenance(env_b, build_b)
    if pa is None or pb is None:
        return [], False, None
    pkgs = diff_packages(compared_packages(pa), compared_packages(pb))
    return pkgs, True, diff_interpreters(pa.interpreter, pb.interpreter)


def _flatten_changes(file: str, a: Any, b: Any, path: list[str], out: list[ExtensionChange]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys()):
            if k not in b:
                out.append(ExtensionChange(file=file, key=[*path, k], change="removed", before=a[k]))
            elif k not in a:
                out.append(ExtensionChange(file=file, key=[*path, k], change="added", after=b[k]))
            else:
                _flatten_changes(file, a[k], b[k], [*path, k], out)
    elif a != b:
        out.append(ExtensionChange(file=file, key=path, change="changed", before=a, after=b))


def diff_extensions(before: dict[str, Any], after: dict[str, Any]) -> list[ExtensionChange]:
    """Every setting added, removed or changed, file by file (JSON content, not text)."""
    out: list[ExtensionChange] = []
    names = [*EXTENSION_FILES, *sorted((before.keys() | after.keys()) - set(EXTENSION_FILES))]
    for name in names:
        _flatten_changes(name, before.get(name) or {}, after.get(name) or {}, [], out)
    return out


def _ref(c: GenerationContents) -> GenerationRef:
    return GenerationRef(generation=c.name, created=c.manifest.created, by=c.manifest.by)


def diff_generations(before: GenerationContents | None, after: GenerationContents) -> GenerationDiff:
    """What changed from ``before`` to ``after`` (``before`` None: everything in ``after`` is new)."""
    empty = GenerationContents(
        name="", manifest=after.manifest.model_copy(update={"kernels": [], "server": None})
    )
    prev = before or empty
    old = {k.name: k for k in prev.manifest.kernels}
    new = {k.name: k for k in after.manifest.kernels}
    renamed = _renames(
        [k for n, k in old.items() if n not in new], [k for n, k in new.items() if n not in old]
    )
    renamed_old = {k.name for k in renamed.values()}
    kernels: list[KernelChange] = []
    for name, k in new.items():
        o = old.get(name) or renamed.get(name)
        if o is None:
            kernels.append(
                KernelChange(
                    name=name,
                    change="added",
                    display_name=k.display_name,
                    env=k.env,
                    build=k.build,
                    pinned_of=k.pinned_of,
                    groups=k.groups,
                )
            )
            continue
        pkgs, known, interp = _package_changes(prev, after, o.env, o.build, k.env, k.build)
        same = (o.env, o.build, o.display_name, o.groups) == (k.env, k.build, k.display_name, k.groups)
        kernels.append(
            KernelChange(
                name=name,
                change="renamed" if name not in old else "unchanged" if same else "changed",
                renamed_from=o.name if name not in old else None,
                display_name=k.display_name,
                display_name_before=o.display_name if o.display_name != k.display_name else None,
                env=k.env,
                build=k.build,
                env_before=o.env if (o.env, o.build) != (k.env, k.build) else None,
                build_before=o.build if (o.env, o.build) != (k.env, k.build) else None,
                pinned_of=k.pinned_of,
                packages=pkgs,
                packages_known=known,
                interpreter=interp,
                groups=k.groups,
                groups_before=o.groups if o.groups != k.groups else None,
            )
        )
    for name, o in old.items():
        if name not in new and name not in renamed_old:
            kernels.append(
                KernelChange(
                    name=name,
                    change="removed",
                    display_name=o.display_name,
                    env=o.env,
                    build=o.build,
                    pinned_of=o.pinned_of,
                    groups=o.groups,
                )
            )
    return GenerationDiff(
        before=_ref(before) if before else None,
        after=_ref(after),
        kernels=kernels,
        server=_server_change(prev, after),
        extensions=diff_extensions(prev.extensions if before else {}, after.extensions),
    )


def _server_change(before: GenerationContents, after: GenerationContents) -> ServerChange | None:
    a, b = before.manifest.server, after.manifest.server
    if a is None and b is None:
        return None
    if b is None:
        assert a is not None
        return ServerChange(env=a.env, change="removed", build_before=a.build)
    if a is None:
        return ServerChange(env=b.env, change="added", build=b.build)
    if (a.env, a.build) == (b.env, b.build):
        return ServerChange(env=b.env, change="unchanged", build=b.build)
    pkgs, known, interp = _package_changes(before, after, a.env, a.build, b.env, b.build)
    return ServerChange(
        env=b.env,
        change="changed",
        build=b.build,
        build_before=a.build,
        packages=pkgs,
        packages_known=known,
        interpreter=interp,
    )
