"""The wheel cache under the root (``$ROOT/cache/wheels/``): each pip package installed once,
checked file by file, byte-compiled and sealed; builds hard-link it.

An entry (``<name>-<version>-<sha256[:16]>-<pythonX.Y>``) holds one pip package's files as they
lie in a prefix (``lib/pythonX.Y/site-packages/...``, ``bin/``, ``share/``...) and their
checked-hash byte-code. It is made the first time a build needs the package: uv installs the
missing packages (``--require-hashes`` against the lock) into a staging prefix for the build's
interpreter, hard-linked from uv's cache when that is the root's own (``$ROOT/cache/uv``), copied
from any other (:func:`link_mode`); every file is checked against the ``RECORD`` the wheel
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
import hashlib
import io
import os
import posixpath
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuildError, CommandError, DiskFullError, IntegrityError
from ..site import Site
from ..store.fs import current_user, link_target, make_read_only, now_iso, read_regular, remove_tree
from ..store.perms import ADMIN_DIR, make_dir, set_mode
from ..store.records import RecordError, WheelSeal
from ..store.root import Root
from .bytecode import compile_files
from .cache import Finding, check_files, fingerprints, unchanged, write_seal
from .uv import run_uv, uv_env, uv_error_summary

if TYPE_CHECKING:
    from .condalock import LockedDependency

#: in a wheel cache entry: hubstock checked it and compiled it
WHEEL_SEAL = ".hubstock-sealed.json"
_OWN = frozenset([WHEEL_SEAL])


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_id(name: str, version: str, sha256: str) -> str:
    """What names a pip package in the cache, whatever the interpreter."""
    return f"{normalize(name)}-{version}-{sha256[:16]}"


def entry_key(p: LockedDependency, python: str) -> str:
    return f"{wheel_id(p.name, p.version, p.hash.sha256)}-{python}"


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
    the files it linked (as ``prefix/rel``), the packages that entered the cache, and the
    entries found damaged and replaced."""

    known: dict[str, str]
    declared: set[str]
    linked: set[str]  # hard links of the cache's read-only files
    added: list[str]
    damaged: list[str]  # wheel ids (:func:`wheel_id`)


def install(
    site: Site, root: Root, env: str, pip: list[LockedDependency], prefix: Path, say=lambda msg: None
) -> PipResult:
    """Link the pip packages ``pip`` into ``prefix`` from the wheel cache, adding those missing."""
    python = python_dir(prefix)
    make_dir(root.wheels, ADMIN_DIR)
    seals: dict[str, WheelSeal] = {}
    missing: list[LockedDependency] = []
    damaged: list[str] = []
    for p in pip:
        key = entry_key(p, python)
        seal = _usable(root, key, p, python)
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
            _populate(site, root, env, missing, prefix, python)
        except ChangedInUvCache as e:
            # uv's cache shares its files with the entries it filled (hard links): a file changed in
            # place there (or in a build) is changed in uv's copy too. uv fetches a fresh one.
            say(f"[{env}] uv's cached copy of {e.package} was changed: fetching it again")
            run_uv(site, "cache", "clean", e.package, what=f"removing {e.package} from uv's cache")
            left = [p for p in missing if not os.path.lexists(root.wheel_entry(entry_key(p, python)))]
            _populate(site, root, env, left, prefix, python)
        for p in missing:
            seal = _usable(root, entry_key(p, python), p, python)
            if seal is None:
                raise IntegrityError(
                    f"pip package {p.name} {p.version} of env {env!r} did not enter the wheel cache "
                    f"{root.wheels} intact; check who writes there and build again."
                )
            seals[entry_key(p, python)] = seal
    done = PipResult(
        known={}, declared=set(), linked=set(), added=[entry_key(p, python) for p in missing], damaged=damaged
    )
    made: set[str] = set()
    for p in pip:
        _link(root, seals[entry_key(p, python)], prefix, made, done)
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


def _usable(root: Root, key: str, p: LockedDependency, python: str) -> WheelSeal | None:
    """The entry's seal, if it is sealed for this very package and nothing in it changed since."""
    seal = _read_seal(root, key)
    if (
        seal is None
        or seal.package != key
        or seal.artifact_sha256 != p.hash.sha256
        or seal.python != python
        or not unchanged(root.wheel_entry(key), seal.stat, _owner(root), _OWN)
    ):
        return None
    return seal


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


def _refresh(root: Root, key: str) -> WheelSeal | None:
    seal = _read_seal(root, key)
    if seal is None:
        return None
    entry = root.wheel_entry(key)
    make_read_only(entry)  # as sealing left it (someone may have let the admin write)
    seal = seal.model_copy(update={"stat": fingerprints(entry, _OWN)})
    write_seal(entry, seal, WHEEL_SEAL)
    return seal


def entries(root: Root) -> list[str]:
    """Every entry of the wheel cache."""
    if not root.wheels.is_dir():
        return []
    return sorted(p.name for p in root.wheels.iterdir() if not p.name.startswith(".") and p.is_dir())


def discard(root: Root, key: str) -> None:
    remove_tree(root.wheel_entry(key), root.trash)


# --- adding packages -----------------------------------------------------------------------------


class ChangedInUvCache(IntegrityError):
    """uv installed a file that does not match its wheel's ``RECORD``."""

    def __init__(self, message: str, package: str) -> None:
        super().__init__(message)
        self.package = package


def _populate(
    site: Site, root: Root, env: str, pip: list[LockedDependency], prefix: Path, python: str
) -> None:
    """Install ``pip`` with uv into a staging prefix, check and compile it, and make an entry of
    each package."""
    for leftover in root.wheels.glob(".*"):  # an interrupted build's staging
        if leftover.is_dir() and not leftover.is_symlink():
            remove_tree(leftover, root.trash)
    staging = root.wheels / f".staging-{secrets.token_hex(4)}"
    make_dir(staging, ADMIN_DIR)
    try:
        _uv_install(site, env, pip, staging, prefix)
        site_packages = f"lib/{python}/site-packages"
        dist_infos = {}
        for d in (staging / site_packages).glob("*.dist-info"):
            name, _, version = d.name[: -len(".dist-info")].partition("-")
            dist_infos[normalize(name)] = d
        files: list[_Staged] = []
        for p in pip:
            info = dist_infos.get(normalize(p.name))
            if info is None:
                raise BuildError(
                    f"uv installed no {p.name} {p.version} for env {env!r} (no .dist-info in {staging}); "
                    "lock again with `nox -s lock`."
                )
            files.append(_check_staged(staging, p, _record_files(info, site_packages, env, p), prefix))
        sources = [
            f"{staging}/{rel}"
            for staged in files
            for rel in staged.files
            if rel.endswith(".py") and rel.startswith("lib/")
        ]
        compile_files(env, prefix / "bin" / "python", sources, root.wheels)  # only what was checked
        for staged in files:
            _make_entry(root, staging, staged, python, prefix)
    finally:
        remove_tree(staging, root.trash)


def link_mode(site: Site) -> str:
    """How uv puts files into the wheel cache: hard links from its cache when that is the root's own
    (``$ROOT/cache/uv``, the admin's alone, that only hubstock uses: the same filesystem, and nobody
    else changes, prunes or re-moulds its files); copies from any other uv cache (``UV_CACHE_DIR``), so
    that nothing outside the root shares a file with the builds."""
    own = Path(uv_env(site)["UV_CACHE_DIR"]) == Root(site.root).uv_cache
    return "hardlink" if own else "copy"


def _uv_install(site: Site, env: str, pip: list[LockedDependency], staging: Path, prefix: Path) -> None:
    reqs = "".join(f"{p.name} @ {p.url} --hash=sha256:{p.hash.sha256}\n" for p in pip)
    with tempfile.TemporaryDirectory(prefix="hubstock-pip-") as tmp:
        req_file = Path(tmp, "requirements.txt")
        req_file.write_text(reqs)
        try:
            run_uv(
                site,
                "pip",
                "install",
                "--prefix",
                str(staging),
                "--python",
                str(prefix / "bin" / "python"),
                "--require-hashes",
                "--no-deps",
                "--no-index",
                "--link-mode",
                link_mode(site),
                "-r",
                str(req_file),
                what=f"installing the pip part of env {env!r}",
            )
        except CommandError as e:
            if _says_disk_full(e.output):
                raise DiskFullError.at(staging, f"installing the pip part of env {env!r}") from None
            raise BuildError(
                f"uv could not install the pip packages of env {env!r}: {uv_error_summary(e.output)}; "
                "lock again with `nox -s lock` if the lock is old.",
                detail=e.output,
            ) from None


def _says_disk_full(text: str) -> bool:
    """Whether a tool's message is about a full filesystem or quota (os error 28 or 122)."""
    signs = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
    return any(s in text for s in signs)


def _record_rows(record: Path) -> list[list[str]]:
    try:
        text = record.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [row for row in csv.reader(io.StringIO(text)) if row]


def _prefix_rel(site_packages: str, path: str) -> str | None:
    """A ``RECORD`` path (relative to site-packages) relative to the prefix; None if outside it."""
    rel = f"{site_packages}/{path}"
    if "/." in rel or rel.startswith("."):
        rel = posixpath.normpath(rel)
    return None if rel.startswith(("..", "/")) else rel


def _record_files(
    info: Path, site_packages: str, env: str, p: LockedDependency
) -> dict[str, tuple[str, int] | None]:
    """``rel -> (sha256, size)`` from the package's ``RECORD`` (None where it gives no hash)."""
    out: dict[str, tuple[str, int] | None] = {}
    for row in _record_rows(info / "RECORD"):
        rel = _prefix_rel(site_packages, row[0])
        if rel is None:
            raise BuildError(
                f"pip package {p.name} {p.version} of env {env!r} installs {row[0]!r}, outside the "
                "environment; hubstock does not build it."
            )
        digest = None
        if len(row) > 1 and row[1].startswith("sha256="):
            b64 = row[1].split("=", 1)[1]
            digest = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
        size = int(row[2]) if len(row) > 2 and row[2].isdigit() else -1
        out[rel] = (digest, size) if digest else None
    return out


@dataclass
class _Staged:
    """One package in the staging prefix, checked: its files (``rel -> sha256`` or ``link:...``),
    those that hold the prefix, and those its ``RECORD`` gives no hash for."""

    p: LockedDependency
    files: dict[str, str]
    scripts: list[str]
    unrecorded: list[str]


def _check_staged(
    staging: Path, p: LockedDependency, rels: dict[str, tuple[str, int] | None], prefix: Path
) -> _Staged:
    """Check the package's files in ``staging`` against its ``RECORD`` (sha256 and size)."""
    old_prefix, stage = os.fsencode(prefix), os.fsencode(staging)
    staged = _Staged(p, {}, [], [rel for rel, want in rels.items() if want is None])
    for rel, want in rels.items():
        src = staging / rel
        if src.is_symlink():
            staged.files[rel] = "link:" + link_target(src)
            continue
        if not src.is_file():
            raise IntegrityError(
                f"pip package {p.name} {p.version}: {rel} is in its RECORD but uv did not install it; "
                "clear uv's cache (`uv cache clean`) and build again."
            )
        data = src.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if want is not None and (digest != want[0] or (want[1] >= 0 and len(data) != want[1])):
            raise ChangedInUvCache(
                f"pip package {p.name} {p.version}: {rel} does not match the RECORD of its wheel "
                f"(sha256 {digest[:16]}..., RECORD says {want[0][:16]}...), even as uv fetched it "
                "again; check who writes to uv's cache ($UV_CACHE_DIR, else $ROOT/cache/uv) and build again.",
                p.name,
            )
        if stage in data:
            raise IntegrityError(
                f"pip package {p.name} {p.version}: uv wrote the staging folder {staging} into {rel}; "
                "hubstock cannot install it for another prefix (report this to hubstock's developers)."
            )
        if old_prefix in data:
            staged.scripts.append(rel)
        staged.files[rel] = digest
    return staged


def _make_entry(root: Root, staging: Path, staged: _Staged, python: str, prefix: Path) -> None:
    """Move a checked package's files and their byte-code (made just now: the path a pyc names is
    set right at import) into a new entry; make it read-only and seal it."""
    p = staged.p
    key = entry_key(p, python)
    tmp = root.wheels / f".new-{key}-{secrets.token_hex(4)}"
    make_dir(tmp, ADMIN_DIR)
    files, unrecorded = dict(staged.files), list(staged.unrecorded)
    for rel in staged.files:
        if rel.endswith(".py") and rel.startswith("lib/"):
            folder, _, name = rel.rpartition("/")
            cache = staging / folder / "__pycache__"
            for pyc in cache.glob(f"{name[:-3]}.*.pyc") if cache.is_dir() else []:
                pyc_rel = f"{folder}/__pycache__/{pyc.name}"
                files[pyc_rel] = hashlib.sha256(pyc.read_bytes()).hexdigest()
                unrecorded.append(pyc_rel)
    for rel in files:
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / rel, dst)
    make_read_only(tmp)
    set_mode(tmp, 0o700)
    seal = WheelSeal(
        package=key,
        name=p.name,
        version=p.version,
        url=p.url,
        artifact_sha256=p.hash.sha256,
        python=python,
        prefix=str(prefix),
        files=files,
        scripts=sorted(staged.scripts),
        unrecorded=sorted(unrecorded),
        stat=fingerprints(tmp, _OWN),
        sealed=now_iso(),
        by=current_user(),
    )
    write_seal(tmp, seal, WHEEL_SEAL)
    os.rename(tmp, root.wheel_entry(key))


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
    link, symlink = os.link, os.symlink
    for rel, h in seal.files.items():
        folder = rel.rpartition("/")[0]
        if folder not in made:
            os.makedirs(dst + folder, exist_ok=True)
            made.add(folder)
        known.pop(rel, None)  # another package's file of that name is replaced
        linked.discard(dst + rel)
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
        linked.add(dst + rel)
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
    for row in _record_rows(record):
        rel = _prefix_rel(site_packages, row[0])
        if rel in written:
            digest, size = written[rel]
            b64 = base64.urlsafe_b64encode(bytes.fromhex(digest)).rstrip(b"=").decode()
            row = [row[0], f"sha256={b64}", str(size)]
        writer.writerow(row)
    return out.getvalue().encode()
