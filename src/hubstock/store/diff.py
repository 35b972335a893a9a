"""What changed between two published generations: kernels, their packages, extension defaults.

Pure: :func:`diff_generations` takes what two generations hold (:class:`GenerationContents`:
the manifest, the provenance of every build it names, its extension defaults) and
returns a :class:`GenerationDiff`. ``hubstock diff`` and the hub's "Stock environments"
page both use it, so they always agree; :mod:`hubstock.store.catalog` reads the
contents from the root.

For each stock kernel: packages added, removed, upgraded and downgraded (conda and
PyPI alike, with versions); kernels added, removed and renamed (the pinned kernels of
previous builds, ``<name>-<build8>``, included); and the extension defaults
(``page_config.json``, ``overrides.json``, ``jupyter_server_config.json``) key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .records import BuildProvenance, GenerationManifest, KernelEntry, LockedPackage
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

    def packages(self, env: str, build: str) -> list[LockedPackage] | None:
        prov = self.provenances.get(f"{env}/{build}")
        return list(prov.packages) if prov else None


# ---------------------------------------------------------------------------------------------------------
# the result


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageChange(_Out):
    """One package that differs between two builds."""

    manager: str  # "conda" or "pip"
    name: str
    change: Literal["added", "removed", "upgraded", "downgraded", "rebuilt", "changed"]
    before: str | None = None  # version
    after: str | None = None
    before_build: str | None = None  # conda build string
    after_build: str | None = None


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


class ServerChange(_Out):
    """The single-user server's build (JupyterLab and friends)."""

    env: str
    change: Literal["added", "removed", "changed", "unchanged"]
    build: str | None = None
    build_before: str | None = None
    packages: list[PackageChange] = []
    packages_known: bool = True


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


def diff_packages(before: list[LockedPackage], after: list[LockedPackage]) -> list[PackageChange]:
    """Packages added, removed, upgraded, downgraded or rebuilt, sorted by name then manager."""
    a = {_key(p): p for p in before}
    b = {_key(p): p for p in after}
    out = []
    for key in sorted(a.keys() | b.keys(), key=lambda k: (k[1], k[0])):
        pa, pb = a.get(key), b.get(key)
        if pa and pb:
            if pa.version == pb.version and (pa.build or None) == (pb.build or None):
                continue
            c = compare_versions(pa.version, pb.version)
            kind = (
                "upgraded"
                if c < 0
                else "downgraded"
                if c > 0
                else "rebuilt"
                if pa.version == pb.version
                else "changed"
            )
            out.append(
                PackageChange(
                    manager=pb.manager,
                    name=pb.name,
                    change=kind,
                    before=pa.version,
                    after=pb.version,
                    before_build=pa.build,
                    after_build=pb.build,
                )
            )
        elif pb:
            out.append(
                PackageChange(
                    manager=pb.manager, name=pb.name, change="added", after=pb.version, after_build=pb.build
                )
            )
        elif pa:
            out.append(
                PackageChange(
                    manager=pa.manager,
                    name=pa.name,
                    change="removed",
                    before=pa.version,
                    before_build=pa.build,
                )
            )
    return out


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
) -> tuple[list[PackageChange], bool]:
    if (env_a, build_a) == (env_b, build_b):
        return [], True
    pa, pb = before.packages(env_a, build_a), after.packages(env_b, build_b)
    if pa is None or pb is None:
        return [], False
    return diff_packages(pa, pb), True


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
                )
            )
            continue
        pkgs, known = _package_changes(prev, after, o.env, o.build, k.env, k.build)
        same = (o.env, o.build, o.display_name) == (k.env, k.build, k.display_name)
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
    pkgs, known = _package_changes(before, after, a.env, a.build, b.env, b.build)
    return ServerChange(
        env=b.env, change="changed", build=b.build, build_before=a.build, packages=pkgs, packages_known=known
    )
