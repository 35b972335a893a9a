"""A package the installer extracts into the cache: checked against its verified archive and
sealed while the installer works on the others (the steps a :class:`~.seals.Sealer` runs).

See :mod:`.cache` for what the seal means and how the cache is checked before an install.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...errors import IntegrityError
from ...store.fs import current_user, link_target, make_read_only, now_iso, read_regular
from ...store.records import CacheSeal
from ...store.root import CACHE_SEAL, Root
from .cache import (
    Finding,
    archive_paths,
    check_files,
    declared_paths,
    discard,
    hash_many,
    rpm_flags,
    same_declarations,
    sha256_file,
)
from .seals import fingerprint, write_seal


def check_extracted(
    root: Root, dist: str, archive: Path, declared: list[dict], hashed: dict[str, str] | None = None
) -> list[Finding]:
    """Right after an install extracted ``dist`` from ``archive`` (verified): how its files differ
    from what the archive declares (``declared``: :func:`archive_paths`); empty when they match.
    Reads the files only: the installer may still be linking them. ``hashed``: files found
    intact while it was extracting them (:meth:`Extracted.watch`)."""
    entry = root.pkg_entry(dist)
    findings = []
    try:
        same = same_declarations(declared_paths(entry), declared)
    except (OSError, ValueError):
        same = False
    if not same:
        findings.append(Finding(rpm_flags("5"), entry / "info" / "paths.json", dist))
    # modes: made read-only after
    return findings + check_files(entry, declared, dist, None, modes=False, hashed=hashed)


def reject(root: Root, dist: str, archive: Path, findings: list[Finding]) -> IntegrityError:
    """Remove a freshly extracted package that failed :func:`check_extracted`: the error to raise."""
    discard(root, dist)
    first = findings[0]
    return IntegrityError(
        f"package {dist} in the cache {root.pkgs} did not match its verified archive {archive.name} "
        f"right after it was extracted ({first.flags.strip('.') or first.flags} "
        f"{first.path}); it was removed: run the build again, and check who writes to {root.pkgs}."
    )


def seal_checked(root: Root, dist: str, sha256: str, declared: list[dict]) -> None:
    """Seal ``dist`` once :func:`check_extracted` passed and the installer is done with it: make
    it read-only, then write the seal (the archive's sha256, ``info/``'s hashes, the links, the
    fingerprints). The seal is written atomically: a failure on the way leaves none."""
    entry = root.pkg_entry(dist)
    info = {
        os.path.relpath(os.path.join(d, f), entry): ""
        for d, _dirs, files in os.walk(entry / "info")
        for f in files
    }
    hashes = hash_many(str(entry / rel) for rel in info)
    links = {d["_path"]: link_target(entry / d["_path"]) for d in declared if d["path_type"] == "softlink"}
    (entry / CACHE_SEAL).unlink(missing_ok=True)
    stat_map: dict[str, str] = {}
    cut = len(str(entry)) + 1
    # one walk: read-only, and the fingerprints (a mode change changes none of them)
    make_read_only(entry, seen=lambda path, st: stat_map.__setitem__(path[cut:], fingerprint(st)))
    record = CacheSeal(
        package=dist,
        archive_sha256=sha256,
        info={rel: hashes[str(entry / rel)] or "" for rel in info},
        links=links,
        stat=stat_map,
        sealed=now_iso(),
        by=current_user(),
    )
    write_seal(entry, record, CACHE_SEAL)


def is_sealed(root: Root, dist: str) -> bool:
    """Whether ``dist`` has a seal (a package sealed before an install was checked before it)."""
    return read_regular(root.pkg_seal(dist)) is not None


class Extracted:
    """Sealing one package the installer extracts into the cache from its verified archive (the
    steps of :class:`~.seals.PackageSeal`, run by a :class:`~.seals.Sealer`). A package sealed
    before the install was checked before it (by the function :func:`~.cache.prepare`) and is left as
    it is."""

    def __init__(self, root: Root, dist: str, archive: Path, sha256: str) -> None:
        self.root, self.dist, self.archive, self.sha256 = root, dist, archive, sha256
        self._sealed_before = is_sealed(root, dist)
        self._declared: list[dict] | None = None
        self._pending: list[dict] | None = None  # the files watch() looks for, in order
        self._next = 0  # the first of them it has not found complete
        self._hashed: dict[str, str] = {}  # _path -> fingerprint when it matched its sha256
        self._findings: list[Finding] | None = None  # None: nothing to seal

    def prepare(self) -> None:
        if not self._sealed_before:
            self._declarations()

    def _declarations(self) -> list[dict]:
        if self._declared is None:
            self._declared = archive_paths(self.archive)
        return self._declared

    def watch(self) -> None:
        """While the installer extracts the package (into a temporary folder beside its place,
        renamed there when complete): hash the files it has written in full so far, so that
        :meth:`check` reads only the others. It writes them in about the order of ``paths.json``:
        each look goes on from the first file not found complete at the last one, up to the next
        such file. Only a speed-up: a file counts only if it is still the same (inode, size,
        modification time) when :meth:`check` looks at it, and a folder not found, or not found
        alone, is just not watched."""
        if self._sealed_before:
            return
        if self._pending is None:
            self._pending = [
                d for d in self._declarations() if d.get("sha256") and d["path_type"] == "hardlink"
            ]
        try:
            found = [n for n in os.listdir(self.root.pkgs) if n.startswith(f".{self.dist}")]
        except OSError:
            return
        if len(found) != 1:
            return
        base = f"{self.root.pkgs}/{found[0]}/"
        while self._next < len(self._pending):
            d = self._pending[self._next]
            path = base + d["_path"]
            try:
                st = os.lstat(path)
                size = d.get("size_in_bytes")  # None for an empty file
                if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
                    return  # not there yet, or being written
                got = sha256_file(path)
                after = os.lstat(path)
            except OSError:
                return
            if got != d["sha256"] or fingerprint(after) != fingerprint(st):
                return  # not written in full yet: the next look, or check(), reads it again
            self._hashed[d["_path"]] = fingerprint(st)
            self._next += 1

    def check(self) -> None:
        if is_sealed(self.root, self.dist):
            return
        declared = self._declarations()
        self._findings = check_extracted(self.root, self.dist, self.archive, declared, self._hashed)

    def seal(self) -> None:
        if self._findings is None or self._declared is None:
            return
        if self._findings:
            raise reject(self.root, self.dist, self.archive, self._findings)
        seal_checked(self.root, self.dist, self.sha256, self._declared)
