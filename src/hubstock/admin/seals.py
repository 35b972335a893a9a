"""Seals of the package cache's entries, and the fingerprints that make checking them cheap.

A sealed entry records the archive it came from and, for every file and folder, the inode,
size and modification time it had when hubstock hashed it (:func:`fingerprints`). Before an
install, :func:`still_sealed` costs one ``lstat`` a path; only an entry that changed is hashed
again in full (:mod:`.cache`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..store.fs import fsync_dir, make_read_only, read_regular
from ..store.perms import set_mode
from ..store.records import CacheSeal, RecordError, WheelSeal
from ..store.root import CACHE_SEAL, Root


def admin_uid(root: Root) -> int | None:
    """Whose the cache is: the owner of ``pkgs/`` (the admin who builds)."""
    try:
        return os.lstat(root.pkgs).st_uid
    except OSError:
        return None


# --- fingerprints: what was hashed is still there -------------------------------------------


def fingerprint(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def fingerprints(top: Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """:func:`fingerprint` (inode, size, mtime) of every file and folder below ``top`` (not ``top``
    itself; not the top-level names in ``skip``), by path relative to ``top``."""
    out: dict[str, str] = {}
    base = os.fspath(top)
    cut = len(base) + 1
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == base:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in (*dirnames, *filenames):
            path = f"{dirpath}/{name}"
            out[path[cut:]] = fingerprint(os.lstat(path))
    return out


def unchanged(top: Path, stat_map: dict[str, str], owner: int | None, own: frozenset[str]) -> bool:
    """Whether everything below ``top`` is still what :func:`fingerprints` found: the same inode,
    size and modification time for each path, nothing added at the top (besides ``own``: the
    seal), owned by ``owner`` and read-only (as sealing left it: a build that links a file may
    count on its mode). A file changed in place changes its mtime; one replaced, added or
    removed changes its folder's. Costs one ``lstat`` a path."""
    if not stat_map:
        return False
    try:
        st = os.lstat(top)
        names = set(os.listdir(top))
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022 or (owner is not None and st.st_uid != owner):
        return False
    if names != {rel.split("/", 1)[0] for rel in stat_map} | own:
        return False
    base = os.fspath(top) + "/"
    lstat, is_link = os.lstat, stat.S_ISLNK
    for rel, was in stat_map.items():
        try:
            st = lstat(base + rel)
        except OSError:
            return False
        if f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}" != was:
            return False
        if not is_link(st.st_mode) and (st.st_mode & 0o222 or (owner is not None and st.st_uid != owner)):
            return False
    return True


def read_seal(root: Root, dist: str) -> CacheSeal | None:
    data = read_regular(root.pkg_seal(dist))
    if data is None:
        return None
    try:
        return CacheSeal.from_text(data, str(root.pkg_seal(dist)))
    except RecordError:
        return None


def still_sealed(root: Root, dist: str, archive_sha256: str) -> bool:
    """The quick check before an install: the package is sealed for this archive and nothing in
    it changed since it was hashed (:func:`unchanged`)."""
    seal = read_seal(root, dist)
    return (
        seal is not None
        and seal.package == dist
        and seal.archive_sha256 == archive_sha256
        and unchanged(root.pkg_entry(dist), seal.stat, admin_uid(root), frozenset([CACHE_SEAL]))
    )


def write_seal(entry: Path, record: CacheSeal | WheelSeal, name: str) -> None:
    """Write the seal into ``entry`` (made writable for the admin for it), then make it read-only."""
    set_mode(entry, 0o700)
    tmp = entry / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    with open(fd, "wb") as f:
        f.write(record.to_json().encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, entry / name)
    set_mode(entry, 0o555)
    fsync_dir(entry)


def refresh_fingerprints(root: Root, dist: str) -> None:
    """After a full check passed (a seal without fingerprints, or a root that was copied): take
    the fingerprints again, so the next install checks quickly."""
    seal = read_seal(root, dist)
    if seal is None:
        return
    entry = root.pkg_entry(dist)
    make_read_only(entry)  # as sealing left it (someone may have let the admin write)
    stat_map = fingerprints(entry, frozenset([CACHE_SEAL]))
    write_seal(entry, seal.model_copy(update={"stat": stat_map}), CACHE_SEAL)
