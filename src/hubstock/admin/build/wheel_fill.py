"""Filling the wheel cache (``$ROOT/cache/wheels/``): uv installs the missing pip packages into a
staging prefix, every file is checked against the wheel's ``RECORD``, compiled, and moved into a
sealed, read-only entry. :mod:`.wheels` checks entries and links them into builds.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BuildError, CommandError, DiskFullError, IntegrityError
from ...site import Site
from ...store.fs import current_user, link_target, make_read_only, now_iso, remove_tree
from ...store.perms import ADMIN_DIR, make_dir, set_mode
from ...store.records import WheelSeal
from ...store.root import Root
from ..uv import run_uv, uv_env, uv_error_summary
from .bytecode import compile_files
from .seals import fingerprints, write_seal

if TYPE_CHECKING:
    from ..lock.condalock import LockedDependency


#: in a wheel cache entry: hubstock checked it and compiled it
WHEEL_SEAL = ".hubstock-sealed.json"
OWN_FILES = frozenset([WHEEL_SEAL])


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_id(name: str, version: str, sha256: str) -> str:
    """What names a pip package in the cache, whatever the interpreter."""
    return f"{normalize(name)}-{version}-{sha256[:16]}"


def entry_key(p: LockedDependency, python: str) -> str:
    return f"{wheel_id(p.name, p.version, p.hash.sha256)}-{python}"


# --- adding packages -----------------------------------------------------------------------------


class ChangedInUvCache(IntegrityError):
    """uv installed a file that does not match its wheel's ``RECORD``, or one that another account
    owns (a hard link of uv's cache, which a sealed entry cannot hold: its owner could change it);
    ``why`` says which, for the line that tells the admin what was fetched again."""

    def __init__(self, message: str, package: str, why: str = "was changed") -> None:
        super().__init__(message)
        self.package = package
        self.why = why


def populate(
    site: Site,
    root: Root,
    env: str,
    pip: list[LockedDependency],
    prefix: Path,
    python: str,
    say: Callable[[str], None] = lambda msg: None,
) -> None:
    """Install ``pip`` with uv into a staging prefix, check and compile it, and make an entry of
    each package; ``say`` tells each step, with its counts."""
    for leftover in root.wheels.glob(".*"):  # an interrupted build's staging
        if leftover.is_dir() and not leftover.is_symlink():
            remove_tree(leftover, root.trash)
    staging = root.wheels / f".staging-{secrets.token_hex(4)}"
    make_dir(staging, ADMIN_DIR)
    try:
        say(f"[{env}] installing {len(pip)} pip package(s) with uv")
        _uv_install(site, env, pip, staging, prefix)
        site_packages = f"lib/{python}/site-packages"
        dist_infos = {}
        for d in (staging / site_packages).glob("*.dist-info"):
            name, _, version = d.name[: -len(".dist-info")].partition("-")
            dist_infos[normalize(name)] = d
        files: list[_Staged] = []
        say(f"[{env}] checking {len(pip)} package(s) against their wheels' RECORD")
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
        say(f"[{env}] byte-compiling {len(sources)} file(s)")
        # only what was checked; named by its path below the staging folder: the same wheel gives
        # the same byte-code whatever the folder was called (a reproduced build's is the same)
        compile_files(env, prefix / "bin" / "python", sources, root.wheels, strip=staging)
        say(f"[{env}] sealing {len(files)} wheel cache entries")
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
    from ..mirror import mirrored

    def source(p: LockedDependency) -> str:  # a mirror's copy first (the hash is checked all the same)
        found = mirrored(site, p.url, p.hash.sha256 or "")
        return found.as_uri() if found else p.url

    reqs = "".join(f"{p.name} @ {source(p)} --hash=sha256:{p.hash.sha256}\n" for p in pip)
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


def record_rows(record: Path) -> list[list[str]]:
    try:
        text = record.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [row for row in csv.reader(io.StringIO(text)) if row]


def record_sha256(row: list[str]) -> str | None:
    """The hex sha256 a ``RECORD`` row gives its file (None: no hash, or not a readable one)."""
    if len(row) < 2 or not row[1].startswith("sha256="):
        return None
    b64 = row[1].split("=", 1)[1]
    try:
        return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    except ValueError:
        return None


def prefix_rel(site_packages: str, path: str) -> str | None:
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
    for row in record_rows(info / "RECORD"):
        rel = prefix_rel(site_packages, row[0])
        if rel is None:
            raise BuildError(
                f"pip package {p.name} {p.version} of env {env!r} installs {row[0]!r}, outside the "
                "environment; hubstock does not build it."
            )
        digest = record_sha256(row)
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
    base, me = os.fspath(staging), os.geteuid()
    for rel, want in rels.items():
        src = f"{base}/{rel}"
        try:
            st = os.lstat(src)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            staged.files[rel] = "link:" + link_target(src)
            continue
        if st is None or not stat.S_ISREG(st.st_mode):
            raise IntegrityError(
                f"pip package {p.name} {p.version}: {rel} is in its RECORD but uv did not install it; "
                "clear uv's cache (`uv cache clean`) and build again."
            )
        owner = st.st_uid
        if owner != me:
            raise ChangedInUvCache(
                f"pip package {p.name} {p.version}: {rel} in uv's cache is owned by uid {owner}, even "
                "as uv fetched it again; check who writes to uv's cache ($UV_CACHE_DIR, else "
                "$ROOT/cache/uv) and build again.",
                p.name,
                f"had a file owned by uid {owner} ({rel})",
            )
        with open(src, "rb") as f:
            data = f.read()
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
    src, dst = os.fspath(staging), os.fspath(tmp)
    caches: dict[str, list[str]] = {}  # folder -> the names in its __pycache__ (one listing each)
    for rel in staged.files:
        if rel.endswith(".py") and rel.startswith("lib/"):
            folder, _, name = rel.rpartition("/")
            if folder not in caches:
                try:
                    caches[folder] = os.listdir(f"{src}/{folder}/__pycache__")
                except OSError:
                    caches[folder] = []
            stem = name[:-3] + "."  # NAME.<tag>.pyc
            for pyc in caches[folder]:
                if pyc.startswith(stem) and pyc.endswith(".pyc") and len(pyc) > len(stem) + 4:
                    pyc_rel = f"{folder}/__pycache__/{pyc}"
                    with open(f"{src}/{pyc_rel}", "rb") as f:
                        files[pyc_rel] = hashlib.sha256(f.read()).hexdigest()
                    unrecorded.append(pyc_rel)
    made = {""}
    for rel in files:
        folder = rel.rpartition("/")[0]
        if folder not in made:
            os.makedirs(f"{dst}/{folder}", exist_ok=True)
            made.add(folder)
        os.rename(f"{src}/{rel}", f"{dst}/{rel}")
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
        stat=fingerprints(tmp, OWN_FILES),
        sealed=now_iso(),
        by=current_user(),
    )
    write_seal(tmp, seal, WHEEL_SEAL)
    os.rename(tmp, root.wheel_entry(key))
