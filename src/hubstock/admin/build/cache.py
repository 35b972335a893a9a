"""The package cache under the root (``$ROOT/pkgs/``): trusted only once hubstock checked it.

Builds hard-link their files from the extracted packages in the cache, so whatever is
there ends up in every build. Archives are checked against the lock's sha256 before
anything is installed; an *extracted* package is trusted only when hubstock itself has
checked it against that verified archive and sealed it:

- during an install, every package the installer extracted is compared, file by file,
  with what its archive declares (``info/paths.json`` read from the archive itself:
  type, size, sha256), as soon as it is extracted (files it wrote in full are hashed while
  it extracts the rest: :class:`~.extraction.Extracted`); once the installer linked it, it is made
  read-only and a seal is written into it (the archive's sha256, the sha256 of every file
  under ``info/``); all while the installer works on the other packages;
- before the next install, every sealed package is checked again: the seal must match
  the archive the lock names, and every file and folder must still be the one hubstock
  hashed (the same inode, size and modification time as when it was sealed: a file changed
  in place, replaced, deleted or added changes one of them), owned by the admin and
  writable by nobody else. Only when that differs is the package hashed again in full
  against its archive (``info/`` against the seal, every file against the archive's own
  ``paths.json``): a package that fails (a file changed, replaced, deleted, a forged
  ``paths.json``, a file added) or has no seal is removed, and the installer extracts it
  again from the verified archive; one that passes (a copied or restored root) gets its
  fingerprints taken again. A damaged cache never blocks the root. ``hubstock verify``
  always hashes everything.

A file changed in place in the cache is changed in every build that links it: the builds
that use a package found damaged are verified at once (:mod:`.verify`), so ``status``
shows them damaged and the next ``build`` replaces them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ...store.fs import (
    link_target,
    read_regular,
    remove_tree,
)
from ...store.perms import ADMIN_DIR, admin_only, set_mode
from ...store.records import CacheSeal, RecordError
from ...store.root import CACHE_SEAL, Root
from .seals import (
    Watermarks,
    admin_uid,
    fingerprint,
    pkg_watermarks,
    read_seal,
    refresh_fingerprints,
    still_sealed,
    unchanged,
)

ARCHIVE_EXTS = (".conda", ".tar.bz2")


@dataclass(frozen=True)
class Finding:
    """One file that differs from what its package declares, ``rpm -V`` style.

    ``flags``: ``S`` size, ``M`` mode (writable by others), ``5`` sha256, ``L`` link
    target, ``U`` owner, ``T`` type; or ``missing`` / ``extra`` / ``unsealed`` / ``seal``.
    """

    flags: str
    path: Path
    package: str

    def line(self) -> str:
        return f"{self.flags:<9} {self.path}  ({self.package})"

    def to_json(self) -> dict[str, str]:
        """``{"flags": "S.5", "path": "...", "package": "..."}``: ``verify --json``'s fields."""
        return {"flags": self.flags, "path": str(self.path), "package": self.package}


def dist_of(url_or_filename: str) -> str:
    """``<name>-<version>-<build>``: the cache folder of an archive."""
    fn = url_or_filename.rsplit("/", 1)[-1]
    for ext in ARCHIVE_EXTS:
        if fn.endswith(ext):
            return fn[: -len(ext)]
    return fn


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def hash_many(paths: Iterable[str]) -> dict[str, str | None]:
    """sha256 of each file (None for one that cannot be read), a few at a time: each thread
    takes a share of the files (hashlib lets go of the GIL), not one file per task."""
    todo = list(paths)

    def some(chunk: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for p in chunk:
            try:
                out.append(sha256_file(p))
            except OSError:
                out.append(None)
        return out

    workers = min(4, (os.cpu_count() or 1) + 1)
    if len(todo) < 64:
        return dict(zip(todo, some(todo), strict=True))
    chunks = [todo[i :: workers * 4] for i in range(workers * 4)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(zip(chunks, pool.map(some, chunks), strict=True))
    return {p: h for chunk, hashes in done for p, h in zip(chunk, hashes, strict=True)}


# --- checking an extracted package ---------------------------------------------------------


def declared_paths(entry: Path) -> list[dict]:
    """The entries of the package's own ``info/paths.json`` (``_path``, ``path_type``, ...)."""
    data = json.loads((entry / "info" / "paths.json").read_bytes())
    paths = data.get("paths") if isinstance(data, dict) else None
    if not isinstance(paths, list):
        raise ValueError("no 'paths' list")
    return [p for p in paths if isinstance(p, dict) and isinstance(p.get("_path"), str)]


def check_files(
    top: Path,
    declared: Iterable[dict],
    package: str,
    owner: int | None,
    modes: bool = True,
    hashed: dict[str, str] | None = None,
) -> list[Finding]:
    """Compare the files under ``top`` with ``declared`` (entries in the form of ``paths.json``:
    ``_path``, ``path_type``, ``sha256``, ``size_in_bytes``): type, size, sha256, link target;
    with ``owner``, whose they are; with ``modes``, that nobody else may write them. A file
    that is still as it was when hubstock found its declared sha256 (``hashed``: ``_path`` ->
    its :func:`~.seals.fingerprint` then) is not read again."""
    hashed = hashed or {}
    findings: list[Finding] = []
    to_hash: dict[str, tuple[Path, str]] = {}
    for d in declared:
        rel = d["_path"]
        path = top / rel
        kind = d.get("path_type", "hardlink")
        try:
            st = os.lstat(path)
        except OSError:
            findings.append(Finding("missing", path, package))
            continue
        flags = set()
        if owner is not None and st.st_uid != owner and not stat.S_ISLNK(st.st_mode):
            flags.add("U")
        if kind == "softlink":
            if not stat.S_ISLNK(st.st_mode):
                flags.add("T")
            elif not _link_matches(link_target(path), d):
                flags.add("L")
        elif kind == "directory":
            if not stat.S_ISDIR(st.st_mode):
                flags.add("T")
        elif not stat.S_ISREG(st.st_mode):
            flags.add("T")
        else:
            if modes and stat.S_IMODE(st.st_mode) & 0o022:
                flags.add("M")
            size = d.get("size_in_bytes")
            if isinstance(size, int) and st.st_size != size:
                flags.add("S")
            if d.get("sha256") and hashed.get(rel) != fingerprint(st):
                to_hash[str(path)] = (path, d["sha256"])
        if flags:
            findings.append(Finding(rpm_flags(flags), path, package))
    hashes = hash_many(to_hash)
    bad = {Path(p) for p, got in hashes.items() if got != to_hash[p][1]}
    merged = {f.path: f for f in findings}
    for path in bad:
        old = merged.get(path)
        merged[path] = Finding(rpm_flags({*(old.flags if old else ""), "5"}), path, package)
    return sorted(merged.values(), key=lambda f: str(f.path))


def _link_matches(target: str, d: dict) -> bool:
    if "target" in d and target != d["target"]:
        return False
    return "target_sha256" not in d or hashlib.sha256(target.encode()).hexdigest() == d["target_sha256"]


def rpm_flags(flags: Iterable[str]) -> str:
    """``rpm -V``'s layout: one column per check, '.' where it passed."""
    have = set(flags)
    return "".join(c if c in have else "." for c in "SM5LUT")


def check_entry(
    root: Root, dist: str, archive_sha256: str | None = None, archive: Path | None = None
) -> list[Finding]:
    """What is wrong with the cached package ``dist`` (empty: it is sealed and intact).

    With ``archive`` (already verified against ``archive_sha256``), the package's
    ``info/paths.json`` must also say what the archive's own says: a forged seal cannot
    make a forged ``paths.json`` pass.
    """
    entry = root.pkg_entry(dist)
    owner = admin_uid(root)
    try:
        st = os.lstat(entry)
    except OSError:
        return [Finding("missing", entry, dist)]
    if not stat.S_ISDIR(st.st_mode):
        return [Finding(rpm_flags("T"), entry, dist)]
    data = read_regular(root.pkg_seal(dist))
    if data is None:
        return [Finding("unsealed", entry, dist)]
    try:
        seal = CacheSeal.from_text(data, str(root.pkg_seal(dist)))
    except RecordError:
        return [Finding("seal", root.pkg_seal(dist), dist)]
    if seal.package != dist or (archive_sha256 and seal.archive_sha256 != archive_sha256):
        return [Finding("seal", root.pkg_seal(dist), dist)]
    findings = []
    # info/: exactly what was sealed (paths.json among it: the declarations themselves)
    info_found = {
        os.path.relpath(os.path.join(d, f), entry)
        for d, _dirs, files in os.walk(entry / "info")
        for f in files
    }
    info_declared = [{"_path": rel, "sha256": sha} for rel, sha in seal.info.items()]
    findings += check_files(entry, info_declared, dist, owner)
    findings += [Finding("extra", entry / rel, dist) for rel in sorted(info_found - set(seal.info))]
    try:
        declared = declared_paths(entry)
    except (OSError, ValueError):
        return findings or [Finding("missing", entry / "info" / "paths.json", dist)]
    if archive is not None and not same_declarations(declared, archive_paths(archive)):
        findings.append(Finding(rpm_flags("5"), entry / "info" / "paths.json", dist))
    links = {rel: {"_path": rel, "path_type": "softlink", "target": t} for rel, t in seal.links.items()}
    declared = [links.get(d["_path"], d) for d in declared]
    findings += check_files(entry, declared, dist, owner)
    # nothing else may be there, nor writable by others
    known = {d["_path"] for d in declared} | set(seal.info) | {CACHE_SEAL}
    for dirpath, dirnames, filenames in os.walk(entry):
        rel_dir = os.path.relpath(dirpath, entry)
        dst = os.lstat(dirpath)
        dflags = {"M"} if stat.S_IMODE(dst.st_mode) & 0o022 else set()
        if owner is not None and dst.st_uid != owner:
            dflags.add("U")
        if dflags:
            findings.append(Finding(rpm_flags(dflags), Path(dirpath), dist))
        if rel_dir == "info":
            continue
        for name in (*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel not in known:
                findings.append(Finding("extra", entry / rel, dist))
    return findings


# --- before and after an install ---------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` found: packages removed because they were damaged or unsealed."""

    damaged: dict[str, list[Finding]]
    unsealed: list[str]


def prepare(root: Root, packages: dict[str, tuple[str, Path]], marks: Watermarks | None = None) -> Prepared:
    """Before an install: keep each cached package of ``packages`` (``dist`` -> the sha256 of
    its verified archive, and the archive) only if it is sealed, intact and declares what its
    archive declares; remove any other, so the installer extracts it again from the archive.
    A package that is still as it was sealed (:func:`still_sealed`) is not hashed again."""
    damaged: dict[str, list[Finding]] = {}
    unsealed = []
    marks = marks or pkg_watermarks(root)
    for dist, (sha, archive) in packages.items():
        entry = root.pkg_entry(dist)
        if not os.path.lexists(entry):
            root.pkg_lock(dist).unlink(missing_ok=True)  # the installer's record of an entry now gone
            continue
        if still_sealed(root, dist, sha, marks):
            continue
        findings = check_entry(root, dist, sha, archive)
        if not findings:
            refresh_fingerprints(root, dist)
            continue
        if findings[0].flags == "unsealed":
            unsealed.append(dist)
        else:
            damaged[dist] = findings
        discard(root, dist)
    return Prepared(damaged, unsealed)


def discard(root: Root, dist: str) -> None:
    """Remove a cached package (and the installer's record of it): it is extracted again."""
    remove_tree(root.pkg_entry(dist), root.trash)
    root.pkg_lock(dist).unlink(missing_ok=True)


def secure(root: Root, dists: Iterable[str]) -> None:
    """The installer's own lock files in the cache, whatever the umask made them: the admin's
    alone (a lock file others can open is a lock they can hold, stalling every build)."""
    set_mode(root.pkgs, ADMIN_DIR)
    for path in (root.pkgs_lock, *(root.pkg_lock(d) for d in dists)):
        set_mode(path, 0o600)
    if root.downloads.is_dir():
        admin_only(root.downloads)


def same_declarations(a: list[dict], b: list[dict]) -> bool:
    return {d["_path"]: _essence(d) for d in a} == {d["_path"]: _essence(d) for d in b}


def _essence(d: dict) -> tuple:
    """What a ``paths.json`` entry says of a file (an absent size is 0, an absent hash empty)."""
    return (d.get("path_type") or "hardlink", d.get("sha256") or "", d.get("size_in_bytes") or 0)


def archive_paths(archive: Path) -> list[dict]:
    """``info/paths.json`` as the verified archive itself declares it."""
    from rattler import PathsJson

    out = []
    for e in PathsJson.from_package_archive(archive).paths:
        kind = "softlink" if e.path_type.softlink else "directory" if e.path_type.directory else "hardlink"
        out.append(
            {
                "_path": e.relative_path.as_posix(),
                "path_type": kind,
                "sha256": e.sha256.hex() if e.sha256 else None,
                "size_in_bytes": e.size_in_bytes,
            }
        )
    return out


def cache_entries(root: Root) -> list[str]:
    """Every extracted package in the cache."""
    if not root.pkgs.is_dir():
        return []
    return sorted(
        p.name
        for p in root.pkgs.iterdir()
        if not p.name.startswith(".") and p != root.downloads and p.is_dir() and not p.is_symlink()
    )


def intact_entries(root: Root, marks: Watermarks) -> list[str]:
    """The cached packages whose quick check passes now (:func:`.seals.unchanged`): before ``gc``
    deletes builds, whose unlinks move their files' change times (then :meth:`~.seals.Watermarks.advance`)."""
    out = []
    for dist in cache_entries(root):
        seal = read_seal(root, dist)
        if seal is not None and unchanged(
            root.pkg_entry(dist), seal.stat, admin_uid(root), frozenset([CACHE_SEAL]), marks.accepts(dist)
        ):
            out.append(dist)
    return out
