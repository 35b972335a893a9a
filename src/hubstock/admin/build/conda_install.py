"""Installing a conda lock into a build: every archive checked against the lock's sha256 (rattler
does not check ``file://`` URLs), py-rattler installing from the package cache under the root
(hard links on the same filesystem) while each extracted package is checked and sealed, then the
``pip:`` part linked from the wheel cache, and what the build wrote byte-compiled with checked
hashes (:mod:`.install`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from ...errors import BuildError, DiskFullError, HubstockError, IntegrityError, is_disk_full
from ...progress import Progress
from ...site import Site
from ...store.root import Root
from ..kinds.base import Installed
from . import cache
from .bytecode import conda_files
from .extraction import Extracted
from .install import compile_sources, install_pip, recheck, says_disk_full
from .installer import PRESTARTED, Installer, InstallFailed
from .seals import Sealer, Watermarks, pkg_watermarks

if TYPE_CHECKING:
    from ..lock.condalock import LockedDependency


def install_conda_lock(
    site: Site,
    root: Root,
    env: str,
    entries: list[LockedDependency],
    platform: str,
    prefix: Path,
    progress: Progress,
) -> Installed:
    """Install the locked ``entries`` (conda and pip) of ``platform`` into ``prefix``."""
    conda = [p for p in entries if p.manager == "conda"]
    pip = [p for p in entries if p.manager == "pip"]
    progress.step(f"[{env}] verifying {len(conda)} package archive(s) against the lock")
    archives = [_verified_archive(site, root, env, p) for p in conda]
    marks = pkg_watermarks(root)
    _check_cache(root, env, conda, archives, marks, progress)
    dists = [cache.dist_of(p.url) for p in conda]
    progress.step(f"[{env}] installing {len(conda)} conda package(s) into {prefix}")
    # each package the installer extracts is checked and sealed while it works on the others;
    # on an error, sealing stops: a package not sealed is checked again by the next build
    prestarted = PRESTARTED.get()  # the command's, forked at its start, if it made one
    with (
        contextlib.nullcontext(prestarted) if prestarted else Installer.start() as installer,
        Sealer(
            {d: Extracted(root, d, a, p.hash.sha256) for d, a, p in zip(dists, archives, conda, strict=True)}
        ) as sealer,
    ):
        _install(installer, root, conda, archives, dists, prefix, platform, progress, sealer)
        sealer.finish()  # the seals' errors are the build's
    cache.secure(root, dists)
    marks.advance(dists)  # all checked; the links of this install moved their change times
    done = Installed()
    if pip:
        progress.step(f"[{env}] linking {len(pip)} pip package(s) from the wheel cache")
        done = install_pip(site, root, env, pip, prefix, progress)
    conda_part = conda_files(prefix)
    progress.step(f"[{env}] byte-compiling what the build wrote")
    progress.step(f"[{env}] {compile_sources(env, prefix, conda_part.sources)}")
    done.compiled = set(conda_part.sources)
    done.declared |= conda_part.declared
    done.hashes = conda_part.hashes
    return done


def _check_cache(
    root: Root,
    env: str,
    conda: list[LockedDependency],
    archives: list[Path],
    marks: Watermarks,
    progress: Progress,
) -> None:
    """Keep only the cached packages hubstock sealed and that are intact; the installer extracts
    the others again from their verified archives. Builds that link a damaged one are verified."""
    progress.step(f"[{env}] checking {len(conda)} cached package(s) against their archives")
    prepared = cache.prepare(
        root, {cache.dist_of(p.url): (p.hash.sha256, a) for p, a in zip(conda, archives, strict=True)}, marks
    )
    if prepared.damaged:
        names = ", ".join(sorted(prepared.damaged))
        progress.step(
            f"[{env}] the cache's copy of {names} was damaged: extracting it again from the archive"
        )
        recheck(root, env, sorted(prepared.damaged), progress)


def _verified_archive(site: Site, root: Root, env: str, p: LockedDependency) -> Path:
    """A local copy of ``p``'s archive whose sha256 matches the lock: the channel's own file, the
    root's download, or one of the site's ``mirrors``; downloaded if none has it."""
    u = urlparse(p.url)
    fn = p.url.rsplit("/", 1)[-1]
    if u.scheme == "file":
        path = Path(unquote(u.path))
        if not path.is_file():
            found = _mirrored(site, p)
            if found is None:
                raise BuildError(
                    f"package {p.name} {p.version} of env {env!r}: {path} no longer exists; restore "
                    "the channel (or list a `hubstock mirror` of it in `mirrors`) or lock again with `nox -s lock`."
                )
            path = found
    else:
        path = root.downloads / fn
        if path.is_file() and cache.sha256_file(path) == p.hash.sha256:
            return path
        found = _mirrored(site, p)
        if found is not None:
            _copy_in(found, path)
        else:
            _download(p.url, path, env, p.name)
    got = cache.sha256_file(path)
    if got != p.hash.sha256:
        raise IntegrityError(
            f"package {p.name} {p.version} of env {env!r} does not match its lock: {p.url} has "
            f"sha256 {got[:16]}..., the lock says {p.hash.sha256[:16]}...; the archive changed "
            "after locking, so restore the original or lock again with `nox -s lock`."
        )
    return path


def _mirrored(site: Site, p: LockedDependency) -> Path | None:
    """A site mirror's copy of ``p`` (imported here: a build whose archives are at hand needs none)."""
    from ..mirror import mirrored

    return mirrored(site, p.url, p.hash.sha256 or "")


def _copy_in(source: Path, dest: Path) -> None:
    """``source`` (a mirror's file) into the root's downloads, whole or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _install(
    installer: Installer,
    root: Root,
    conda: list[LockedDependency],
    archives: list[Path],
    dists: list[str],
    prefix: Path,
    platform: str,
    progress: Progress,
    sealer: Sealer,
) -> None:
    """Install the verified ``archives`` into ``prefix`` from the cache under the root, by py-rattler
    in the installer's process (:mod:`.installer`), which reads the archives' records itself; the
    installer tells ``sealer`` as it extracts and links each package (on a terminal it draws its
    progress bars instead, and everything is sealed after the install)."""
    hear = {"extracting": sealer.extracting, "extracted": sealer.extracted, "linked": sealer.linked}

    def on_event(what: str, i: int) -> None:
        if what in hear and 0 <= i < len(dists):
            hear[what](dists[i])

    # the copy just verified is installed; the record keeps the channel of the lock's URL
    todo = [(a, a.as_uri(), p.url.rsplit("/", 2)[0]) for a, p in zip(archives, conda, strict=True)]
    try:
        installer.install(todo, prefix, root.pkgs, platform, progress.bars, on_event)
    except InstallFailed as e:
        full = e.errno is not None and is_disk_full(OSError(e.errno, str(e)))
        raise _install_error(str(e), full, prefix, archives) from None
    except RuntimeError as e:
        raise BuildError(
            f"installing the conda packages into {prefix} failed: {e}; run the build again."
        ) from None


def _install_error(said: str, disk_full: bool, prefix: Path, archives: list[Path]) -> HubstockError:
    """The error of an install that failed saying ``said``: the disk full, or one sentence."""
    if disk_full or says_disk_full(said):
        # extracted, roughly three times the archives
        needs = sum(_size(a) for a in archives) * 3
        return DiskFullError.at(prefix, "installing the conda packages", needs)
    return BuildError(
        f"installing the conda packages into {prefix} failed: "
        f"{said.splitlines()[0] if said else 'no reason given'}; "
        "check free space and permissions on the root.",
        detail=said,
    )


def _size(archive: Path) -> int:
    try:
        return archive.stat().st_size
    except OSError:
        return 0
