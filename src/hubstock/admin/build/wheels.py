"""The wheel cache under the root (``$ROOT/cache/wheels/``): each pip package installed once,
checked file by file, byte-compiled and sealed; builds hard-link it.

An entry (``<name>-<version>-<sha256[:16]>-<pythonX.Y>``) holds one pip package's files as they
lie in a prefix (``lib/pythonX.Y/site-packages/...``, ``bin/``, ``share/``...) and their
checked-hash byte-code. It is made the first time a build needs the package: uv installs the
missing packages (``--require-hashes`` against the lock) into a staging prefix for the build's
interpreter, hard-linked from uv's cache when that is the root's own (``$ROOT/cache/uv``), copied
from any other (:func:`.wheel_fill.link_mode`); every file is checked against the ``RECORD`` the wheel
brought (sha256 and size), the ``.py`` files are compiled, the package's files move into the
entry, which is made read-only and sealed (:class:`WheelSeal`: every file's sha256, and the
inode, size and mtime of every file and folder).

A build links an entry only after checking that it is still what was sealed (the same inodes,
sizes and mtimes: a file changed in place, replaced, added or removed changes one of them). One
that differs is hashed again in full; if it no longer matches its seal it is removed (and the
builds that link it are checked, by the caller), and the package enters the cache again. Linking
is one hard link a file; only the console scripts, which name their prefix in their ``#!`` line,
are written anew for each build, with the ``RECORD`` that lists their hashes.
"""

from __future__ import annotations

import base64
import csv
import errno
import hashlib
import io
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BuildError, IntegrityError
from ...site import Site
from ...store.fs import make_read_only, read_regular, remove_tree
from ...store.perms import ADMIN_DIR, make_dir
from ...store.records import RecordError, WheelSeal
from ...store.root import Root
from ..uv import run_uv
from .cache import Finding, check_files, sha256_file
from .seals import Watermarks, fingerprints, unchanged, write_seal
from .wheel_fill import (
    OWN_FILES,
    WHEEL_SEAL,
    ChangedInUvCache,
    entry_key,
    populate,
    prefix_rel,
    record_rows,
    record_sha256,
    wheel_id,
)

if TYPE_CHECKING:
    from ..lock.condalock import LockedDependency


def python_dir(prefix: Path) -> str:
    """``pythonX.Y``: the ``lib/`` folder of the prefix's interpreter."""
    found = sorted(p.name for p in (prefix / "lib").glob("python3*") if (p / "site-packages").is_dir())
    if not found:
        raise BuildError(
            f"{prefix} has no lib/python3.*/site-packages, so its pip packages have nowhere to go; "
            "add python to the env's conda dependencies."
        )
    return found[-1]


@dataclass
class PipResult:
    """What :func:`install` did: the files it linked that no ``RECORD`` declares (the byte-code,
    ``rel -> sha256``, for the build's file list), the files the packages' ``RECORD`` declare,
    the files it linked (``prefix/rel -> sha256``), the packages that entered the cache, and the
    entries found damaged and replaced."""

    known: dict[str, str]
    declared: set[str]
    linked: dict[str, str]  # hard links of the cache's read-only files (``prefix/rel -> sha256``)
    added: list[str]
    damaged: list[str]  # wheel ids (:func:`wheel_id`)


def install(
    site: Site,
    root: Root,
    env: str,
    pip: list[LockedDependency],
    prefix: Path,
    say=lambda msg: None,
    warn=lambda msg: None,
) -> PipResult:
    """Link the pip packages ``pip`` into ``prefix`` from the wheel cache, adding those missing.
    ``say`` tells progress; ``warn`` what the admin must hear (a copy in uv's cache replaced)."""
    python = python_dir(prefix)
    make_dir(root.wheels, ADMIN_DIR)
    marks = wheel_watermarks(root)
    seals: dict[str, WheelSeal] = {}
    missing: list[LockedDependency] = []
    damaged: list[str] = []
    for p in pip:
        key = entry_key(p, python)
        seal = _usable(root, key, p, python, marks)
        if seal is not None:
            seals[key] = seal
            continue
        if os.path.lexists(root.wheel_entry(key)):
            if not check_wheel(root, key):  # intact after all (a copied root): take its fingerprints again
                seal = _refresh(root, key)
                if seal is not None:
                    seals[key] = seal
                    continue
            else:
                damaged.append(wheel_id(p.name, p.version, p.hash.sha256))
            remove_tree(root.wheel_entry(key), root.trash)
        missing.append(p)
    if missing:
        say(f"[{env}] adding {len(missing)} pip package(s) to the wheel cache")
        try:
            populate(site, root, env, missing, prefix, python, say)
        except ChangedInUvCache as e:
            # uv's cache shares its files with the entries it filled (hard links): a file changed in
            # place there (or in a build) is changed in uv's copy too. uv fetches a fresh one.
            warn(
                f"[{env}] uv's cached copy of {e.package} {e.why}: removed it from uv's cache, fetching it again"
            )
            run_uv(site, "cache", "clean", e.package, what=f"removing {e.package} from uv's cache")
            left = [p for p in missing if not os.path.lexists(root.wheel_entry(entry_key(p, python)))]
            populate(site, root, env, left, prefix, python, say)
        marks.made_now(entry_key(p, python) for p in missing)
        for p in missing:
            seal = _usable(root, entry_key(p, python), p, python, marks)
            if seal is None:
                raise IntegrityError(
                    f"pip package {p.name} {p.version} of env {env!r} did not enter the wheel cache "
                    f"{root.wheels} intact; check who writes there and build again."
                )
            seals[entry_key(p, python)] = seal
    done = PipResult(
        known={}, declared=set(), linked={}, added=[entry_key(p, python) for p in missing], damaged=damaged
    )
    made: set[str] = set()
    for p in pip:
        _link(root, seals[entry_key(p, python)], prefix, made, done)
    marks.advance(seals)  # all checked; the links of this install moved their change times
    return done


# --- checking an entry ---------------------------------------------------------------------------


def _read_seal(root: Root, key: str) -> WheelSeal | None:
    path = root.wheel_entry(key) / WHEEL_SEAL
    data = read_regular(path)
    if data is None:
        return None
    try:
        return WheelSeal.from_text(data, str(path))
    except RecordError:
        return None


def _owner(root: Root) -> int | None:
    try:
        return os.lstat(root.wheels).st_uid
    except OSError:
        return None


def wheel_watermarks(root: Root) -> Watermarks:
    """The wheel cache's :class:`~.seals.Watermarks`."""
    return Watermarks(root.cache / "ctime-wheels.json", root.held_since())


def _usable(root: Root, key: str, p: LockedDependency, python: str, marks: Watermarks) -> WheelSeal | None:
    """The entry's seal, if it is sealed for this very package and nothing in it changed since."""
    seal = _read_seal(root, key)
    if (
        seal is None
        or seal.package != key
        or seal.artifact_sha256 != p.hash.sha256
        or seal.python != python
        or not unchanged(root.wheel_entry(key), seal.stat, _owner(root), OWN_FILES, marks.accepts(key))
    ):
        return None
    base = os.fspath(root.wheel_entry(key)) + "/"
    for rel, h in seal.files.items():  # what runs at every start (.pth) or names what runs: hashed
        if rel.endswith(_ALWAYS_HASHED) and not h.startswith("link:") and sha256_file(base + rel) != h:
            return None
    return seal


#: the small files a build hashes before it links them, whatever the fingerprints say
_ALWAYS_HASHED = (".pth", ".dist-info/entry_points.txt")


def check_wheel(root: Root, key: str) -> list[Finding]:
    """Everything in the entry that differs from its seal, every file hashed (``hubstock verify``)."""
    entry = root.wheel_entry(key)
    try:
        st = os.lstat(entry)
    except OSError:
        return [Finding("missing", entry, key)]
    if not stat.S_ISDIR(st.st_mode):
        return [Finding(".....T", entry, key)]
    if read_regular(entry / WHEEL_SEAL) is None:
        return [Finding("unsealed", entry, key)]
    seal = _read_seal(root, key)
    if seal is None or seal.package != key:
        return [Finding("seal", entry / WHEEL_SEAL, key)]
    declared = [
        {"_path": rel, "path_type": "softlink", "target": h[5:]}
        if h.startswith("link:")
        else {"_path": rel, "path_type": "hardlink", "sha256": h}
        for rel, h in seal.files.items()
    ]
    findings = check_files(entry, declared, key, _owner(root))
    findings += _seal_against_record(entry, seal)
    dirs = {rel.rpartition("/")[0] for rel in seal.files}
    known = set(seal.files) | {WHEEL_SEAL}
    while dirs:
        known |= dirs
        dirs = {d.rpartition("/")[0] for d in dirs if "/" in d}
    base = os.fspath(entry)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in (*dirnames, *filenames):
            rel = f"{dirpath}/{name}"[len(base) + 1 :]
            if rel not in known:
                findings.append(Finding("extra", entry / rel, key))
            elif name in dirnames and os.lstat(f"{dirpath}/{name}").st_mode & 0o022:
                findings.append(Finding(".M....", entry / rel, key))
    return sorted(findings, key=lambda f: str(f.path))


def _seal_against_record(entry: Path, seal: WheelSeal) -> list[Finding]:
    """A seal is trusted only as far as the wheel's own ``RECORD`` agrees with it: a file whose
    sealed hash differs from the hash its ``RECORD`` gives (a forged seal, written to match
    changed bytes) is a ``seal`` finding, and the entry is made again from the wheel."""
    record = next((rel for rel in seal.files if rel.endswith(".dist-info/RECORD")), None)
    if record is None:
        return [Finding("seal", entry / WHEEL_SEAL, seal.package)]
    site_packages = f"lib/{seal.python}/site-packages"
    out = []
    for row in record_rows(entry / record):
        rel, digest = prefix_rel(site_packages, row[0]), record_sha256(row)
        if rel is None or digest is None:
            continue
        sealed = seal.files.get(rel)
        if sealed is not None and not sealed.startswith("link:") and sealed != digest:
            out.append(Finding("seal", entry / rel, seal.package))
    return out


def _refresh(root: Root, key: str) -> WheelSeal | None:
    seal = _read_seal(root, key)
    if seal is None:
        return None
    entry = root.wheel_entry(key)
    make_read_only(entry)  # as sealing left it (someone may have let the admin write)
    seal = seal.model_copy(update={"stat": fingerprints(entry, OWN_FILES)})
    write_seal(entry, seal, WHEEL_SEAL)
    return seal


def entries(root: Root) -> list[str]:
    """Every entry of the wheel cache."""
    if not root.wheels.is_dir():
        return []
    return sorted(p.name for p in root.wheels.iterdir() if not p.name.startswith(".") and p.is_dir())


def intact_entries(root: Root, marks: Watermarks) -> list[str]:
    """:func:`.cache.intact_entries` for the wheel cache."""
    out = []
    for key in entries(root):
        seal = _read_seal(root, key)
        if seal is not None and unchanged(
            root.wheel_entry(key), seal.stat, _owner(root), OWN_FILES, marks.accepts(key)
        ):
            out.append(key)
    return out


def discard(root: Root, key: str) -> None:
    remove_tree(root.wheel_entry(key), root.trash)


# --- linking into a build ------------------------------------------------------------------------


def _link(root: Root, seal: WheelSeal, prefix: Path, made: set[str], done: PipResult) -> None:
    """Hard-link the entry's files into ``prefix``; write its scripts for this prefix (and the
    ``RECORD`` that lists them). Adds what it linked and wrote to ``done``."""
    src = os.fspath(root.wheel_entry(seal.package)) + "/"
    dst = os.fspath(prefix) + "/"
    scripts = set(seal.scripts)
    old, new = seal.prefix.encode(), os.fsencode(prefix)
    written: dict[str, tuple[str, int]] = {}
    record = next((rel for rel in seal.files if rel.endswith(".dist-info/RECORD")), None)
    known, declared, linked = done.known, done.declared, done.linked
    unrecorded = set(seal.unrecorded)
    link, symlink = _link_or_copy, os.symlink
    for rel, h in seal.files.items():
        folder = rel.rpartition("/")[0]
        if folder not in made:
            os.makedirs(dst + folder, exist_ok=True)
            made.add(folder)
        known.pop(rel, None)  # another package's file of that name is replaced
        linked.pop(dst + rel, None)
        if rel in scripts:
            data = Path(src + rel).read_bytes().replace(old, new)
            _write_new(dst + rel, data, os.lstat(src + rel).st_mode)
            written[rel] = (hashlib.sha256(data).hexdigest(), len(data))
            continue
        if rel == record and scripts:
            continue  # written below, with the scripts' new hashes (and hashed with the build's files)
        try:
            if h.startswith("link:"):
                symlink(h[5:], dst + rel)
            else:
                link(src + rel, dst + rel)
        except FileExistsError:  # another package's file of the same name: the later one wins, as with pip
            os.unlink(dst + rel)
            symlink(h[5:], dst + rel) if h.startswith("link:") else link(src + rel, dst + rel)
        if h.startswith("link:"):
            continue
        linked[dst + rel] = h
        if rel in unrecorded:
            known[rel] = h
    declared.update(rel for rel in seal.files if rel not in unrecorded)
    if record is not None and scripts:
        _write_new(dst + record, _record_with(Path(src + record), record, written), 0o644)


def _write_new(path: str, data: bytes, mode: int) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, (mode & 0o777) | 0o200)
    with open(fd, "wb") as f:
        f.write(data)


def _record_with(record: Path, record_rel: str, written: dict[str, tuple[str, int]]) -> bytes:
    """The ``RECORD`` with the hashes and sizes of the files written for this prefix."""
    site_packages = record_rel.rsplit("/", 2)[0]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in record_rows(record):
        rel = prefix_rel(site_packages, row[0])
        if rel in written:
            digest, size = written[rel]
            b64 = base64.urlsafe_b64encode(bytes.fromhex(digest)).rstrip(b"=").decode()
            row = [row[0], f"sha256={b64}", str(size)]
        writer.writerow(row)
    return out.getvalue().encode()


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst``; a copy (mode and times kept) where the two are on different
    mounts: the replacement of a damaged build is made through a mount of its own
    (:mod:`.staged`)."""
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.copy2(src, dst, follow_symlinks=False)
