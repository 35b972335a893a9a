"""OpenPBS itself: an installed one (HUBSTOCK_OPENPBS_PREFIX), or the source tarball
(HUBSTOCK_OPENPBS_SOURCE) built once, relocated and kept in a cache outside the checkout."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from rigs.slurm_rig import RigError, _run, _tail  # shared process helpers

from .config import _PBS_ENV_PREFIXES, _SBIN_PATH
from .packages import BUILD_DEBIAN_PACKAGES, _which, ensure_debian_packages

#: the source tarball of OpenPBS (a file, or a folder holding one openpbs-*.tar.gz)
SOURCE_ENV = "HUBSTOCK_OPENPBS_SOURCE"
#: an installed OpenPBS to use instead of a build (its PBS_EXEC: bin/qsub, sbin/pbs_server, ...)
PREFIX_ENV = "HUBSTOCK_OPENPBS_PREFIX"
#: the tests' cache; OpenPBS builds go to <cache>/openpbs/<sha256>
CACHE_ENV = "HUBSTOCK_TEST_CACHE"
_BUILD_MARKER = ".hubstock-openpbs-build.json"
_BUILD_RECIPE = 2  # bump when the build changes: a cached build of another recipe is rebuilt
_CONFIGURE_ARGS = ("--disable-security", "--with-python=/usr")


class OpenPBSMissing(RigError):
    """Neither an installed OpenPBS nor its source tarball was named."""


def source_tarball(environ: Mapping[str, str] | None = None) -> Path | None:
    """The OpenPBS source tarball named by HUBSTOCK_OPENPBS_SOURCE (a file, or a folder with
    exactly one openpbs-*.tar.gz), or None when the variable is unset or empty."""
    environ = os.environ if environ is None else environ
    value = environ.get(SOURCE_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        hits = sorted(path.glob("openpbs-*.tar.gz"))
        if len(hits) != 1:
            raise RigError(f"{SOURCE_ENV}={value}: expected one openpbs-*.tar.gz there, found {len(hits)}")
        path = hits[0]
    if not path.is_file():
        raise RigError(f"{SOURCE_ENV}={value}: no such file (the OpenPBS source tarball)")
    return path.resolve()


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Where OpenPBS builds are kept: $HUBSTOCK_TEST_CACHE/openpbs, or ~/.cache/hubstock-tests/openpbs."""
    environ = os.environ if environ is None else environ
    base = environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "hubstock-tests")
    return Path(base).expanduser().resolve() / "openpbs"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_info(prefix: Path) -> dict | None:
    """The record a complete build of this recipe wrote last (None for an incomplete, older or
    foreign folder)."""
    try:
        info = json.loads((Path(prefix) / _BUILD_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("recipe") == _BUILD_RECIPE else None


def _relocate(built: Path, prefix: Path) -> int:
    """Make the RUNPATH of every ELF file under *built* (to be renamed to *prefix*) relative
    ($ORIGIN/../lib), so that the install works from any path: the rig bind-mounts it where job
    users can reach it when the cache is under a mode-700 home.  Set-uid programs keep the
    absolute path (the loader ignores $ORIGIN for them; they run as root and can read it)."""
    patchelf = _which("patchelf")
    if not patchelf:
        raise RigError("building OpenPBS needs patchelf: apt-get install patchelf")
    n = 0
    for path in sorted(built.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        if path.stat().st_mode & 0o4000:
            continue
        cp = _run([patchelf, "--print-rpath", str(path)], check=False)
        entries = [e for e in cp.stdout.strip().split(":") if e] if cp.returncode == 0 else []
        if not any(e == str(prefix) or e.startswith(f"{prefix}/") for e in entries):
            continue
        final_dir = prefix / path.parent.relative_to(built)
        new = [
            "$ORIGIN/" + os.path.relpath(e, final_dir)
            if (e == str(prefix) or e.startswith(f"{prefix}/"))
            else e
            for e in entries
        ]
        _run([patchelf, "--set-rpath", ":".join(new), str(path)])
        n += 1
    return n


def build_openpbs(
    source: Path, cache: Path | None = None, *, jobs: int | None = None, log=None
) -> tuple[Path, float | None]:
    """Build OpenPBS from *source* into ``<cache>/<sha256>`` unless that build exists.

    Returns (prefix, seconds the build took, or None when it was reused).  The build runs in a
    temporary folder beside the cache entry (configure, make, ``make install DESTDIR=``) and
    becomes the entry with one rename, after its completion record is written: an interrupted
    build never counts, and a concurrent one waits on a lock.  Installs the build's Debian
    packages first when root.
    """
    source = Path(source).resolve()
    cache = Path(cache) if cache is not None else cache_root()
    sha = _sha256(source)
    prefix = cache / sha
    if build_info(prefix):
        return prefix, None
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{sha}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if build_info(prefix):
            return prefix, None
        ensure_debian_packages(BUILD_DEBIAN_PACKAGES, "building OpenPBS")
        for stale in cache.glob(f".build-{sha[:12]}-*"):  # interrupted builds (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if prefix.exists():  # no completion record: not a build of ours, or a broken one
            shutil.rmtree(prefix)
        t0 = time.monotonic()
        tmp = cache / f".build-{sha[:12]}-{os.getpid()}"
        src, stage = tmp / "src", tmp / "stage"
        src.mkdir(parents=True)
        build_log = tmp / "build.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PBS_ENV_PREFIXES)}
        env["PATH"] = _SBIN_PATH
        env["LC_ALL"] = "C"
        jobs = jobs or os.cpu_count() or 1

        def step(name: str, cmd: list[str], cwd: Path, timeout: float) -> None:
            if log:
                log(f"openpbs build: {name}")
            with open(build_log, "ab") as out:
                out.write(f"\n### {' '.join(cmd)}\n".encode())
                out.flush()
                try:
                    rc = subprocess.run(
                        cmd,
                        cwd=cwd,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=timeout,
                        check=False,
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            if rc != 0:
                kept = cache / f"build-failed-{sha[:12]}.log"
                shutil.copyfile(build_log, kept)
                raise RigError(
                    f"building OpenPBS from {source.name} failed at {name} ({rc}); full log: {kept}\n"
                    f"{_tail(build_log, 30)}"
                )

        try:
            step("unpack", ["tar", "-xzf", str(source), "-C", str(src), "--strip-components=1"], src, 300)
            step("autogen", ["./autogen.sh"], src, 600)
            step(
                "configure",
                [
                    "./configure",
                    f"--prefix={prefix}",
                    *_CONFIGURE_ARGS,
                    # compiled-in defaults, never used: the rig always names its own in pbs.conf
                    # (PBS_CONF_FILE, PBS_HOME, PBS_TMPDIR); a client without PBS_CONF_FILE fails
                    # instead of reading the machine's /etc/pbs.conf
                    f"--with-pbs-conf-file={prefix}/etc/pbs.conf",
                    f"--with-pbs-server-home={prefix}/var/spool",
                    f"--with-tmpdir={prefix}/var/tmp",
                ],
                src,
                900,
            )
            step("make", ["make", f"-j{jobs}"], src, 3600)
            # DESTDIR: nothing lands in /etc (profile.d, the systemd unit) or outside the stage
            step("make install", ["make", "install", f"DESTDIR={stage}"], src, 900)
            built = stage / prefix.relative_to(prefix.anchor)
            for name in ("pbs_iff", "pbs_rcp"):  # non-root clients authenticate through pbs_iff
                (built / "sbin" / name).chmod(0o4755)
            if log:
                log("openpbs build: relative RUNPATHs")
            relocated = _relocate(built, prefix)
            version = _built_version(built)
            seconds = time.monotonic() - t0
            (built / _BUILD_MARKER).write_text(
                json.dumps(
                    {
                        "recipe": _BUILD_RECIPE,
                        "source": source.name,
                        "sha256": sha,
                        "version": version,
                        "configure": [*_CONFIGURE_ARGS],
                        "relocated_elf_files": relocated,
                        "seconds": round(seconds, 1),
                        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                    indent=1,
                )
            )
            built.chmod(0o755)
            os.rename(built, prefix)  # the commit point
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if log:
            log(f"openpbs build: done in {seconds:.0f} s: {prefix}")
        return prefix, seconds


def _built_version(prefix: Path) -> str:
    """The PBS version of an install (from pbs_postinstall, which needs no pbs.conf)."""
    text = (prefix / "libexec" / "pbs_postinstall").read_text(errors="replace")
    m = re.search(r"^PBS_VERSION='([^']+)'", text, re.M)
    if not m:
        raise RigError(f"no PBS_VERSION in {prefix}/libexec/pbs_postinstall")
    return m.group(1)


def locate_openpbs(*, log=None) -> tuple[Path, float | None]:
    """(PBS_EXEC of the OpenPBS to run, seconds spent building it or None).

    HUBSTOCK_OPENPBS_PREFIX names an installed OpenPBS; otherwise HUBSTOCK_OPENPBS_SOURCE's
    tarball is built once into the cache (see build_openpbs).  OpenPBSMissing if neither is set.
    """
    prefix = os.environ.get(PREFIX_ENV, "").strip()
    if prefix:
        p = Path(prefix).expanduser().resolve()
        for part in ("bin/qsub", "sbin/pbs_server", "sbin/pbs_mom", "sbin/pbs_comm", "sbin/pbs_sched"):
            if not (p / part).exists():
                raise RigError(f"{PREFIX_ENV}={prefix}: no {part} there (expected an OpenPBS PBS_EXEC)")
        return p, None
    source = source_tarball()
    if source is None:
        raise OpenPBSMissing(
            f"no OpenPBS: set {SOURCE_ENV} to its source tarball (openpbs-*.tar.gz; .ci/run sets it) "
            f"or {PREFIX_ENV} to an installed OpenPBS"
        )
    return build_openpbs(source, log=log)
