"""``hubstock build``: a fresh lock becomes an immutable, verified build on the root.

The build id comes from the locked packages, so building the same lock again is a
no-op. Every archive is checked against the lock's sha256 before anything is
installed (rattler does not check ``file://`` URLs); py-rattler installs from the
package cache under the root (hard links on the same filesystem); uv installs the
pip part with ``--require-hashes --no-deps``; everything is byte-compiled with
checked hashes so a read-only build starts without writing; group and other
write bits are removed; provenance is recorded; the completion marker is written
last. A build directory without the marker is an interrupted build: it is
removed before the next attempt.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from .. import __version__
from ..errors import BuildError, DiskFullError, IntegrityError, is_disk_full
from ..progress import Progress
from ..site import Site
from ..store.buildlock import write_lock_copy
from ..store.builds import (
    clear_damage,
    current_build,
    damage,
    is_complete,
    mark_complete,
    write_build_files,
    write_provenance,
)
from ..store.fs import atomic_symlink, empty_trash, make_read_only, now_iso, remove_tree
from ..store.perms import ADMIN_DIR, PUBLIC_DIR, make_dir
from ..store.records import BuildProvenance, LockedPackage
from ..store.root import Root
from . import cache, wheels
from .bytecode import compile_files, conda_files
from .envspec import EnvSpec
from .extraction import Extracted
from .lockfile import build_id, packages_for, require_fresh_lock
from .policy import check_server_packages
from .seals import Sealer
from .verify import build_file_list, recheck_builds

if TYPE_CHECKING:
    from rattler import InstallerReporter, RepoDataRecord

    from .condalock import LockedDependency, Lockfile


@dataclass(frozen=True)
class BuildResult:
    env: str
    build_id: str
    prefix: Path
    built: bool  # False when it was already complete


#: conda's name for this machine's platform, by (system, machine): no solver import for it
_PLATFORMS = {
    ("Linux", "x86_64"): "linux-64",
    ("Linux", "aarch64"): "linux-aarch64",
    ("Linux", "ppc64le"): "linux-ppc64le",
    ("Darwin", "x86_64"): "osx-64",
    ("Darwin", "arm64"): "osx-arm64",
    ("Windows", "AMD64"): "win-64",
}


def host_platform() -> str:
    import platform

    known = _PLATFORMS.get((platform.system(), platform.machine()))
    if known:
        return known
    from rattler import Subdir  # any other: the solver knows them all

    return str(Subdir.current())


def ensure_build(site: Site, spec: EnvSpec, progress: Progress) -> BuildResult:
    """Make sure the build of ``spec``'s fresh lock exists and is complete."""
    lock = require_fresh_lock(site, spec)
    platform = host_platform()
    bid = build_id(lock, platform)
    check_server_packages(site, spec.name, (p.name for p in packages_for(lock, platform)))
    root = Root(site.root)
    prefix = root.build(spec.name, bid)
    if current_build(root, spec.name) == bid and not damage(root, spec.name, bid):
        progress.step(f"[{spec.name}] build {bid} is up to date")
        return BuildResult(spec.name, bid, prefix, built=False)
    with root.locked(on_wait=progress.step):
        empty_trash(root.trash)
        damaged = is_complete(prefix, bid) and damage(root, spec.name, bid) is not None
        if damaged or not is_complete(prefix, bid):
            if prefix.exists():
                what = "damaged" if damaged else "interrupted"
                progress.step(f"[{spec.name}] removing the {what} build {bid}")
                remove_tree(prefix, root.trash)
            _build(site, root, spec, lock, platform, bid, prefix, progress)
            clear_damage(root, spec.name, bid)
            root.audit("build", env=spec.name, build=bid, **({"replaced": "damaged"} if damaged else {}))
            built = True
        else:
            built = False
        atomic_symlink(bid, root.env_current(spec.name))
    progress.step(f"[{spec.name}] build {bid} is complete")
    return BuildResult(spec.name, bid, prefix, built=built)


def ensure_builds(site: Site, specs: list[EnvSpec], progress: Progress) -> list[BuildResult]:
    """:func:`ensure_build` for each of ``specs``; then once more for any whose build a later
    one found damaged (a cached package it links was changed in place)."""
    results = [ensure_build(site, spec, progress) for spec in specs]
    root = Root(site.root)
    for i, (spec, result) in enumerate(zip(specs, results, strict=True)):
        if damage(root, spec.name, result.build_id) is not None:
            again = ensure_build(site, spec, progress)
            results[i] = BuildResult(spec.name, again.build_id, again.prefix, built=True)
    return results


def _build(
    site: Site,
    root: Root,
    spec: EnvSpec,
    lock: Lockfile,
    platform: str,
    bid: str,
    prefix: Path,
    progress: Progress,
) -> None:
    entries = packages_for(lock, platform)
    conda = [p for p in entries if p.manager == "conda"]
    pip = [p for p in entries if p.manager == "pip"]
    make_dir(root.env(spec.name), PUBLIC_DIR)
    make_dir(prefix, ADMIN_DIR)  # nobody else may reach into a build before it is read-only

    progress.step(f"[{spec.name}] verifying {len(conda)} package archive(s) against the lock")
    archives = [_verified_archive(root, spec.name, p) for p in conda]
    _check_cache(root, spec.name, conda, archives, progress)
    import asyncio  # only a build that installs needs it (not an up-to-date one)

    records = asyncio.run(_records(conda, archives))
    dists = [cache.dist_of(p.url) for p in conda]
    progress.step(f"[{spec.name}] installing {len(records)} conda package(s) into {prefix}")
    # each package the installer extracts is checked and sealed while it works on the others;
    # on an error, sealing stops: a package not sealed is checked again by the next build
    with Sealer(
        {d: Extracted(root, d, a, p.hash.sha256) for d, a, p in zip(dists, archives, conda, strict=True)}
    ) as sealer:
        names = {r.name.normalized: d for r, d in zip(records, dists, strict=True)}
        _install_conda(root, records, prefix, platform, progress, sealer, names)
        _seal_extracted(sealer)
    cache.secure(root, dists)
    known: dict[str, str] = {}
    declared: set[str] = set()
    linked: set[str] = set()
    if pip:
        progress.step(f"[{spec.name}] linking {len(pip)} pip package(s) from the wheel cache")
        known, declared, linked = _install_pip(site, root, spec.name, pip, prefix, progress)
    conda_part = conda_files(prefix)
    progress.step(f"[{spec.name}] byte-compiling what the build wrote")
    progress.step(f"[{spec.name}] {_compile(spec.name, prefix, conda_part.sources)}")
    provenance = BuildProvenance(
        build_id=bid,
        env=spec.name,
        platform=platform,
        lock_content_hash=dict(lock.metadata.content_hash),
        lock_platform_hash=lock.metadata.content_hash.get(platform),
        packages=[
            LockedPackage(
                manager=p.manager,
                name=p.name,
                version=p.version,
                build=p.build,
                url=p.url,
                sha256=p.hash.sha256,
            )
            for p in entries
        ],
        created=now_iso(),
        builder=f"hubstock {__version__}",
    )
    write_provenance(prefix, provenance)
    write_lock_copy(prefix, _lock_bytes(spec, provenance.lock_platform_hash))  # for users to download
    tree: list[tuple[str, os.stat_result]] = []
    # one walk for both; the files linked from the wheel cache are read-only (checked before)
    make_read_only(prefix, seen=lambda path, st: tree.append((path, st)), already=linked)
    os.chmod(prefix, 0o755)  # the file list and the marker are the writes left
    files = build_file_list(
        prefix,
        bid,
        known=known,
        compiled=set(conda_part.sources),
        declared=conda_part.declared | declared,
        tree=tree,
    )
    write_build_files(prefix, files)  # what hubstock verify checks the rest against
    mark_complete(prefix, bid)  # last: from now on the build counts
    os.chmod(prefix, 0o555)


def _lock_bytes(spec: EnvSpec, platform_hash: str | None) -> bytes:
    """The env's conda-lock.yml as it is now, which must still be the lock being built."""
    data = spec.lock_path.read_bytes()
    if platform_hash and platform_hash.encode() not in data:
        raise BuildError(
            f"envs/{spec.name}/conda-lock.yml changed while env {spec.name!r} was being built; "
            "run the build again."
        )
    return data


def _check_cache(
    root: Root, env: str, conda: list[LockedDependency], archives: list[Path], progress: Progress
) -> None:
    """Keep only the cached packages hubstock sealed and that are intact; the installer extracts
    the others again from their verified archives. Builds that link a damaged one are verified."""
    progress.step(f"[{env}] checking {len(conda)} cached package(s) against their archives")
    prepared = cache.prepare(
        root, {cache.dist_of(p.url): (p.hash.sha256, a) for p, a in zip(conda, archives, strict=True)}
    )
    if prepared.damaged:
        names = ", ".join(sorted(prepared.damaged))
        progress.step(
            f"[{env}] the cache's copy of {names} was damaged: extracting it again from the archive"
        )
        for check in recheck_builds(root, set(prepared.damaged)):
            if not check.ok:
                progress.step(
                    f"[{env}] build {check.env}/{check.build_id} links the damaged files: it is marked damaged"
                )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _verified_archive(root: Root, env: str, p: LockedDependency) -> Path:
    """A local copy of ``p``'s archive whose sha256 matches the lock."""
    u = urlparse(p.url)
    fn = p.url.rsplit("/", 1)[-1]
    if u.scheme == "file":
        path = Path(unquote(u.path))
        if not path.is_file():
            raise BuildError(
                f"package {p.name} {p.version} of env {env!r}: {path} no longer exists; restore "
                "the channel or lock again with `nox -s lock`."
            )
    else:
        path = root.downloads / fn
        if not (path.is_file() and _sha256(path) == p.hash.sha256):
            _download(p.url, path, env, p.name)
    got = _sha256(path)
    if got != p.hash.sha256:
        raise IntegrityError(
            f"package {p.name} {p.version} of env {env!r} does not match its lock: {p.url} has "
            f"sha256 {got[:16]}..., the lock says {p.hash.sha256[:16]}...; the archive changed "
            "after locking, so restore the original or lock again with `nox -s lock`."
        )
    return path


def _download(url: str, dest: Path, env: str, name: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        import urllib.request

        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError.at(dest.parent, f"downloading package {name} of env {env!r}") from None
        raise BuildError(
            f"package {name} of env {env!r} could not be downloaded from {url} ({e}); check the "
            "network or the channel."
        ) from None


async def _records(entries: list[LockedDependency], archives: list[Path]) -> list[RepoDataRecord]:
    """Install records made from the archives themselves (they keep ``noarch``)."""
    from rattler import RepoDataRecord

    records = []
    for p, path in zip(entries, archives, strict=True):
        r = await RepoDataRecord.from_package_archive(path)
        r.url = path.as_uri()  # install the copy that was just verified
        r.channel = p.url.rsplit("/", 2)[0]
        records.append(r)
    return records


def _install_conda(
    root: Root,
    records: list,
    prefix: Path,
    platform: str,
    progress: Progress,
    sealer: Sealer,
    names: dict[str, str],
) -> None:
    """Install ``records`` into ``prefix`` from the cache under the root; the installer tells
    ``sealer`` when it extracted and when it linked each package (``names``: the package's name
    -> its cache folder). On a terminal it draws its progress bars instead, and everything is
    sealed after the install."""
    import asyncio

    from rattler import Subdir, install
    from rattler.exceptions import InstallerError, LinkError, TransactionError

    try:
        asyncio.run(
            install(
                records,
                target_prefix=prefix,
                cache_dir=root.pkgs,
                platform=Subdir(platform),
                show_progress=progress.bars,
                reporter=None if progress.bars else _reporter(sealer, names),
                execute_link_scripts=False,
            )
        )
    except (InstallerError, LinkError, TransactionError, OSError) as e:
        if is_disk_full(e) or _says_disk_full(str(e)):
            # extracted, roughly three times the archives
            needs = sum(getattr(r, "size", 0) or 0 for r in records) * 3
            raise DiskFullError.at(prefix, "installing the conda packages", needs) from None
        raise BuildError(
            f"installing the conda packages into {prefix} failed: {str(e).splitlines()[0]}; "
            "check free space and permissions on the root.",
            detail=str(e),
        ) from None


def _reporter(sealer: Sealer, names: dict[str, str]) -> InstallerReporter:
    """The installer's progress callbacks (called from its threads) passed on to ``sealer``."""
    from rattler import InstallerReporter

    tokens = itertools.count()

    class Reporter(InstallerReporter):
        def __init__(self) -> None:
            self.dists: dict[int, str] = {}

        def _token(self, package_name: str) -> int:
            token = next(tokens)
            self.dists[token] = names.get(package_name, "")
            return token

        def on_populate_cache_start(self, operation: int, package_name: str) -> int:
            token = self._token(package_name)
            sealer.extracting(self.dists[token])
            return token

        def on_populate_cache_complete(self, cache_entry: int) -> None:
            sealer.extracted(self.dists.get(cache_entry, ""))

        def on_link_start(self, operation: int, package_name: str) -> int:
            return self._token(package_name)

        def on_link_complete(self, index: int) -> None:
            sealer.linked(self.dists.get(index, ""))

    return Reporter()  # type: ignore[abstract]  # its other callbacks do nothing: not abstract


def _seal_extracted(sealer: Sealer) -> None:
    """Wait for the packages the install extracted to be sealed: the seals' errors are the build's."""
    sealer.finish()


def _install_pip(
    site: Site, root: Root, env: str, pip: list[LockedDependency], prefix: Path, progress: Progress
) -> tuple[dict[str, str], set[str], set[str]]:
    """Link the pip part from the wheel cache (uv adds what it lacks): what it linked that no
    package declares (``rel -> sha256``), what the packages declare, and every file it linked.
    Builds that link a wheel found damaged are verified."""
    done = wheels.install(site, root, env, pip, prefix, say=progress.step)
    if done.damaged:
        progress.step(
            f"[{env}] the wheel cache's copy of {', '.join(done.damaged)} was damaged: installed again"
        )
        for check in recheck_builds(root, set(done.damaged)):
            if not check.ok:
                progress.step(
                    f"[{env}] build {check.env}/{check.build_id} links the damaged files: it is marked damaged"
                )
    return done.known, done.declared, done.linked


def _says_disk_full(text: str) -> bool:
    """Whether a tool's message is about a full filesystem or quota (os error 28 or 122)."""
    signs = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
    return any(s in text for s in signs)


def _compile(env: str, prefix: Path, sources: list[str]) -> str:
    """Byte-compile, with checked-hash pycs, the python files of the build that have no valid
    pyc yet: ``sources`` (relative to the build: :func:`~.bytecode.conda_sources`).

    Extraction changes mtimes, so only hash-checked pycs stay valid; files whose prefix was
    rewritten at install time are compiled here, after install. A conda package that ships
    its byte-code keeps it, and the pip part brings its own from the wheel cache. A package's
    stray file that does not compile (py2 test data) is reported, not fatal; a pyc that cannot
    be written (a full disk) fails the build.
    """
    python = prefix / "bin" / "python"
    if not python.exists() or not sources:
        return "nothing to byte-compile"
    return compile_files(env, python, (f"{prefix}/{rel}" for rel in sources), prefix)
