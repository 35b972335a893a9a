"""Installing a conda lock into a build: every archive checked against the lock's sha256 (rattler
does not check ``file://`` URLs), py-rattler installing from the package cache under the root
(hard links on the same filesystem) while each extracted package is checked and sealed, then the
``pip:`` part linked from the wheel cache, and what the build wrote byte-compiled with checked
hashes (:mod:`.install`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
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
    from rattler import InstallerReporter, RepoDataRecord

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
    installer = PRESTARTED.get()  # the command's forked installer, if it started one
    records = []
    if installer is None:
        import asyncio  # only a build that installs needs it (not an up-to-date one)

        records = asyncio.run(_records(conda, archives))
    dists = [cache.dist_of(p.url) for p in conda]
    progress.step(f"[{env}] installing {len(conda)} conda package(s) into {prefix}")
    # each package the installer extracts is checked and sealed while it works on the others;
    # on an error, sealing stops: a package not sealed is checked again by the next build
    with Sealer(
        {d: Extracted(root, d, a, p.hash.sha256) for d, a, p in zip(dists, archives, conda, strict=True)}
    ) as sealer:
        if installer is not None:
            _install_forked(installer, root, conda, archives, dists, prefix, platform, progress, sealer)
        else:
            names = {r.name.normalized: d for r, d in zip(records, dists, strict=True)}
            _install_conda(root, records, prefix, platform, progress, sealer, names)
        _seal_extracted(sealer)
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
        raise _install_error(str(e), is_disk_full(e), prefix, records) from None


def _install_forked(
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
    """:func:`_install_conda` by the command's forked installer (:mod:`.installer`), which reads the
    archives' records itself; its progress reaches ``sealer`` as it happens."""
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


def _install_error(said: str, disk_full: bool, prefix: Path, installed: list) -> HubstockError:
    """The error of an install that failed saying ``said``: the disk full, or one sentence."""
    if disk_full or says_disk_full(said):
        # extracted, roughly three times the archives
        needs = sum(_size(x) for x in installed) * 3
        return DiskFullError.at(prefix, "installing the conda packages", needs)
    return BuildError(
        f"installing the conda packages into {prefix} failed: {said.splitlines()[0] if said else 'no reason given'}; "
        "check free space and permissions on the root.",
        detail=said,
    )


def _size(x: Any) -> int:
    """An archive's size in bytes (a record's ``size``, or the file's)."""
    if isinstance(x, Path):
        try:
            return x.stat().st_size
        except OSError:
            return 0
    return getattr(x, "size", 0) or 0


def _seal_extracted(sealer: Sealer) -> None:
    """Wait for the packages the install extracted to be sealed: the seals' errors are the build's."""
    sealer.finish()


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
