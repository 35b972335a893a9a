"""A private, real single-node OpenPBS (PBS Pro) for tests and demos, in its own network namespace.

``OpenPBSRig(workdir).start()`` runs pbs_comm, pbs_server (with its PostgreSQL datastore),
pbs_sched and pbs_mom as root, without systemd, with everything under *workdir*: its own
``pbs.conf`` (given to every client through ``PBS_CONF_FILE``), PBS_HOME, datastore, logs and
temporary files.  Nothing is written to ``/etc``, ``/var/spool`` or ``/var/tmp``.

**The whole rig lives in a private network namespace** that it creates (``unshare --net``),
with one address, 198.18.0.1/32, on that namespace's ``lo``: TPP (pbs_comm's transport)
ignores every 127.x address, and the machine's external address is never used, so no packet
leaves the namespace.  A private mount namespace goes with it, in which ``/etc/hosts`` names
the rig's host by that address (the daemons resolve it on every connection: without it, DNS
stalls) and the OpenPBS build is bind-mounted where job users can reach it.  A small holder
process keeps both namespaces alive; it is the daemons' parent and their *child subreaper*, so
it reaps every orphan at once (pbs_mom counts a killed job's zombies as live processes).

Everything that talks to the rig runs in that namespace too: ``rig.run(argv)``,
``rig.popen(argv)`` or, for code that builds its own command lines, ``rig.ns_argv(argv)``
(``nsenter --net --mount --target <holder>``).  A hub, its proxy and a test client started with
``rig.popen`` reach the PBS server, and each other, there.

``stop()`` deletes the jobs, stops the daemons and the datastore by PID, then ends every
process left in the namespace and the holder: the namespace disappears with its last process.

OpenPBS itself: ``locate_openpbs()`` returns an installed PBS (``HUBSTOCK_OPENPBS_PREFIX``)
or builds the source tarball named by ``HUBSTOCK_OPENPBS_SOURCE`` once into a cache outside
the checkout (``$HUBSTOCK_TEST_CACHE/openpbs/<sha256 of the tarball>``, by default under
``~/.cache/hubstock-tests``) and reuses it.  Run as root, the rig installs the Debian packages
it needs (``BUILD_DEBIAN_PACKAGES``, ``RUN_DEBIAN_PACKAGES``).  Standard library only.

Command line (a demo, or a rig kept up by hand)::

    python rigs/openpbs_rig.py build        # build (or find) OpenPBS, print its prefix
    python rigs/openpbs_rig.py up DIR       # start, print how to reach it, leave it running
    python rigs/openpbs_rig.py down DIR     # stop the rig recorded in DIR/run/rig.json
    python rigs/openpbs_rig.py run DIR      # start, wait for Ctrl-C, stop
    python rigs/openpbs_rig.py exec DIR -- qstat -fx   # a command inside a running rig
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):  # python rigs/openpbs_rig.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rigs.slurm_rig import (  # noqa: E402 - shared process and user helpers
    RigError,
    _alive,
    _check_traversable,
    _environ,
    _proc_stat,
    _run,
    _tail,
    _terminate,
    create_user,
    remove_user,
)

__all__ = [
    "ADDRESS",
    "BUILD_DEBIAN_PACKAGES",
    "CACHE_ENV",
    "DEBIAN_PACKAGES",
    "PREFIX_ENV",
    "RUN_DEBIAN_PACKAGES",
    "SOURCE_ENV",
    "OpenPBSMissing",
    "OpenPBSRig",
    "Queue",
    "RigError",
    "build_openpbs",
    "create_user",
    "ensure_debian_packages",
    "locate_openpbs",
    "parse_qstat_f",
    "remove_user",
    "require_binaries",
    "source_tarball",
]

#: the source tarball of OpenPBS (a file, or a folder holding one openpbs-*.tar.gz)
SOURCE_ENV = "HUBSTOCK_OPENPBS_SOURCE"
#: an installed OpenPBS to use instead of a build (its PBS_EXEC: bin/qsub, sbin/pbs_server, ...)
PREFIX_ENV = "HUBSTOCK_OPENPBS_PREFIX"
#: the tests' cache; OpenPBS builds go to <cache>/openpbs/<sha256>
CACHE_ENV = "HUBSTOCK_TEST_CACHE"
#: the rig's address, on the namespace's lo (198.18.0.0/15: reserved for benchmarking, never routed)
ADDRESS = "198.18.0.1"

#: Debian packages needed to build OpenPBS from source
BUILD_DEBIAN_PACKAGES = (
    "gcc",
    "g++",
    "make",
    "libtool",
    "autoconf",
    "automake",
    "pkg-config",
    "libhwloc-dev",
    "libx11-dev",
    "libxt-dev",
    "libedit-dev",
    "libncurses-dev",
    "libical-dev",
    "libexpat1-dev",
    "libcjson-dev",
    "libssl-dev",
    "zlib1g-dev",
    "libpq-dev",
    "tcl-dev",
    "tk-dev",
    "python3-dev",
    "swig",
    "patchelf",
)
#: Debian packages needed to run the rig (the datastore, the namespace tools); the libraries the
#: build links come with BUILD_DEBIAN_PACKAGES
RUN_DEBIAN_PACKAGES = ("postgresql", "iproute2", "util-linux", "mount")
DEBIAN_PACKAGES = BUILD_DEBIAN_PACKAGES + RUN_DEBIAN_PACKAGES

# binary -> Debian package that ships it (the host side of the rig)
_BINARIES = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "runuser": "util-linux",
    "mount": "mount",
    "ip": "iproute2",
    "pg_config": "libpq-dev",
    "psql": "postgresql",
}
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables read by PBS commands; a user's or an outer job's must not leak into the rig's
_PBS_ENV_PREFIXES = ("PBS_", "SLURM_", "PGHOST", "PGPORT", "PGUSER", "PGDATA")
# Set in the environment of every process the rig starts inside its namespace
_MARKER = "HUBSTOCK_OPENPBS_RIG"
_DATA_USER = "hspbsdata"  # runs the datastore (PostgreSQL refuses root); a system user, kept
_BUILD_MARKER = ".hubstock-openpbs-build.json"
_BUILD_RECIPE = 2  # bump when the build changes: a cached build of another recipe is rebuilt
_CONFIGURE_ARGS = ("--disable-security", "--with-python=/usr")
# PBS's own port numbers: the rig's namespace is private, so they cannot clash with anything
DEFAULT_PORTS = {"batch": 15001, "mom": 15002, "manager": 15003, "data": 15007, "comm": 17001}


class OpenPBSMissing(RigError):
    """Neither an installed OpenPBS nor its source tarball was named."""


@dataclasses.dataclass(frozen=True)
class Queue:
    """An execution queue and its limits (the fields of the site's ``[[spawner.queues]]``)."""

    name: str
    max_cpus: int
    max_memory: str  # "2G", "512M", "16gb"
    max_walltime: str  # "01:00:00"

    @classmethod
    def of(cls, q: object) -> Queue:
        """A Queue from anything with name, max_cpus, max_memory and max_walltime (a site's
        QueueSettings, for example)."""
        return q if isinstance(q, Queue) else cls(q.name, q.max_cpus, q.max_memory, q.max_walltime)  # type: ignore[attr-defined]


DEFAULT_QUEUES = (
    Queue("debug", max_cpus=2, max_memory="2G", max_walltime="01:00:00"),
    Queue("batch", max_cpus=4, max_memory="16G", max_walltime="08:00:00"),
)


def pbs_size(value: str) -> str:
    """A memory size as PBS writes it: '2G' -> '2gb', '512M' -> '512mb', '16gb' -> '16gb'."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)(i?b)?\s*", value, re.I)
    if not m:
        raise ValueError(f"not a memory size: {value!r} (e.g. '2G' or '512mb')")
    return f"{m.group(1)}{m.group(2).lower()}b"


# ---------------------------------------------------------------------------- packages


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH)


def missing_debian_packages(names: Iterable[str]) -> list[str]:
    """The packages dpkg does not report as installed (all of them if dpkg is absent)."""
    out = []
    for name in names:
        cp = (
            subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
            )
            if shutil.which("dpkg-query")
            else None
        )
        if cp is None or "install ok installed" not in cp.stdout:
            out.append(name)
    return out


def ensure_debian_packages(names: Iterable[str], what: str) -> None:
    """Install the missing Debian packages when root (apt-get); RigError naming them otherwise."""
    names = list(names)
    if not shutil.which("dpkg-query"):
        return  # not Debian: require_binaries() and the build say what is missing
    missing = missing_debian_packages(names)
    if not missing:
        return
    if os.geteuid() != 0:
        raise RigError(
            f"{what} needs the Debian packages {' '.join(missing)}: "
            f"apt-get install --no-install-recommends {' '.join(missing)} (or run as root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env, timeout=600)
    _run(
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=300",
            *missing,
        ],
        env=env,
        timeout=1800,
    )


def require_binaries() -> None:
    """RigError naming the Debian packages to install if a binary the rig runs is missing."""
    missing = {b: pkg for b, pkg in _BINARIES.items() if _which(b) is None}
    if missing:
        raise RigError(
            f"the OpenPBS rig needs {', '.join(sorted(missing))} (missing); install the Debian "
            f"packages with: apt-get install --no-install-recommends {' '.join(RUN_DEBIAN_PACKAGES)}"
        )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RigError("the OpenPBS rig must run as root (namespaces, pbs_server, pbs_mom, job users)")


# ---------------------------------------------------------------------------- the build


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


# ---------------------------------------------------------------------------- qstat -f


def parse_qstat_f(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f``/``-fx``/``-Qf``/``-Bf`` output -> {id: {attribute: value}}; continuation lines
    (a tab, then the rest of a long value) are joined to their attribute."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last = None
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^(?:Job Id|Queue|Server|Reservation Id|Resv ID):\s*(\S+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            last = None
            continue
        if current is None:
            continue
        if line.startswith("\t") and last is not None:
            current[last] += line.strip()
            continue
        key, sep, value = line.strip().partition(" = ")
        if sep:
            current[key] = value
            last = key
    return out


# ---------------------------------------------------------------------------- the holder

# Runs as root inside the new namespaces (unshare --net --mount), started by the rig with two
# pipes.  It is the child subreaper of everything it starts: it reaps every orphan as soon as
# it dies.  Requests, one JSON line each on stdin: {"id", "argv", "env", "cwd", "out", "timeout"};
# each runs in its own session with output appended to "out"; the reply, one JSON line on stdout:
# {"id", "rc"} (rc null on timeout, after SIGKILL).  When the rig's end of the pipe closes the
# holder keeps reaping until it is killed.
_HOLDER = r"""
import ctypes, json, os, select, signal, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("holder: prctl(PR_SET_CHILD_SUBREAPER) failed")
rfd, wfd = os.pipe()
os.set_blocking(rfd, False)
os.set_blocking(wfd, False)
signal.signal(signal.SIGCHLD, lambda *a: None)
signal.set_wakeup_fd(wfd)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
pending = {}  # pid -> (id, deadline)

def reply(msg):
    try:
        os.write(1, (json.dumps(msg) + "\n").encode())
    except OSError:
        pass

def launch(req):
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGCHLD, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(s, signal.SIG_DFL)
            os.chdir(req.get("cwd") or "/")
            fd = os.open(req.get("out") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            nul = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nul, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 2:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            os.execvpe(req["argv"][0], req["argv"], req["env"])
        except BaseException as e:
            try:
                os.write(2, ("holder: cannot run %r: %s\n" % (req["argv"], e)).encode())
            finally:
                os._exit(127)
    t = req.get("timeout")
    pending[pid] = (req["id"], time.monotonic() + t if t else None)

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in pending:
            reply({"id": pending.pop(pid)[0], "rc": os.waitstatus_to_exitcode(status)})

reply({"ready": os.getpid()})
buf, eof = b"", False
while True:
    now = time.monotonic()
    for pid, (rid, deadline) in list(pending.items()):
        if deadline is not None and now > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            pending[pid] = (rid, None)
            reply({"id": rid, "rc": None})
    waits = [d - now for _, d in pending.values() if d is not None]
    timeout = max(0.01, min([5.0, *waits]))
    try:
        ready, _, _ = select.select([rfd] if eof else [rfd, 0], [], [], timeout)
    except InterruptedError:
        ready = []
    if rfd in ready:
        try:
            while os.read(rfd, 512):
                pass
        except BlockingIOError:
            pass
    reap()
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            eof = True
            os.close(0)
            os.open(os.devnull, os.O_RDONLY)
            continue
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                launch(json.loads(line))
"""


class _Holder:
    """The rig's end of the holder's pipes (only in the process that started the rig)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._n = 0
        self._buf = b""

    def _read_msg(self, deadline: float) -> dict:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RigError("the namespace holder did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RigError(f"the namespace holder exited ({self.proc.poll()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout: float) -> int:
        return int(self._read_msg(time.monotonic() + timeout)["ready"])

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        out: Path,
        cwd: Path | str = "/",
        timeout: float = 60,
    ) -> int | None:
        """Run argv inside the namespaces, as a child of the holder; its exit code (None: timed out)."""
        assert self.proc.stdin is not None
        self._n += 1
        req = {
            "id": self._n,
            "argv": list(argv),
            "env": dict(env),
            "cwd": str(cwd),
            "out": str(out),
            "timeout": timeout,
        }
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise RigError(f"the namespace holder is gone ({self.proc.poll()})") from exc
        deadline = time.monotonic() + timeout + 10
        while True:
            msg = self._read_msg(deadline)
            if msg.get("id") == self._n:
                return msg["rc"]

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f:
                    f.close()


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _default_host() -> str:
    name = socket.gethostname().split(".")[0]
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,62}", name) or name.startswith("localhost"):
        name = "pbshost"
    return name


# ---------------------------------------------------------------------------- the rig


class OpenPBSRig:
    """A private single-node OpenPBS in its own network namespace, everything under workdir."""

    DAEMONS = ("pbs_comm", "pbs_mom", "pbs_sched", "pbs_server")  # start order; stopped in reverse

    def __init__(
        self,
        workdir: Path,
        *,
        prefix: Path | None = None,
        queues: Iterable[object] = DEFAULT_QUEUES,
        address: str = ADDRESS,
        host: str | None = None,
        data_user: str = _DATA_USER,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.queues = tuple(Queue.of(q) for q in queues)
        if not self.queues:
            raise ValueError("at least one queue is needed")
        self.address = address
        self.host = host or _default_host()
        self.data_user = data_user
        self.ports = {**DEFAULT_PORTS, **(ports or {})}
        w = self.workdir
        self.conf = w / "pbs.conf"
        self.home = w / "home"  # PBS_HOME
        self.datastore = self.home / "datastore"
        self.etc, self.log_dir, self.run_dir, self.tmp_dir = w / "etc", w / "log", w / "run", w / "tmp"
        self.hosts_file = self.etc / "hosts"
        self.state_file = self.run_dir / "rig.json"
        self.init_marker = self.run_dir / "initialised"
        self.lock_files = {
            "pbs_comm": self.home / "server_priv" / "comm.lock",
            "pbs_mom": self.home / "mom_priv" / "mom.lock",
            "pbs_sched": self.home / "sched_priv" / "sched.lock",
            "pbs_server": self.home / "server_priv" / "server.lock",
        }
        self.prefix = Path(prefix).resolve() if prefix else None
        self.exec_dir: Path | None = None  # PBS_EXEC as seen inside the namespace
        self.holder: tuple[int, int] | None = None  # (pid, starttime)
        self.netns: str | None = None  # "net:[inode]" of the private namespace
        self.procs: dict[str, tuple[int, int]] = {}  # daemon -> (pid, starttime)
        self.timings: dict[str, float] = {}
        self.start_kind: str | None = None  # "cold" (first start of this workdir) or "warm"
        self.last_stop: dict[str, list[int]] = {}
        self._holder: _Holder | None = None
        self._load_state()

    # -- public API --------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Variables any PBS client command needs (inside the namespace)."""
        assert self.exec_dir is not None, "the rig has not been started"
        return {"PBS_CONF_FILE": str(self.conf), "PATH": f"{self.exec_dir}/bin:{_SBIN_PATH}"}

    def command_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """*base* (default os.environ) without PBS/Slurm variables, with PBS's bin first on PATH
        and PBS_CONF_FILE set."""
        base = os.environ if base is None else base
        env = {k: v for k, v in base.items() if not k.startswith(_PBS_ENV_PREFIXES)}
        path = env.get("PATH", "")
        env.update(self.env)
        env["PATH"] = f"{self.exec_dir}/bin" + (os.pathsep + path if path else "") + os.pathsep + _SBIN_PATH
        return env

    @property
    def pids(self) -> dict[str, int]:
        return {name: pid for name, (pid, _) in self.procs.items()}

    @property
    def server_name(self) -> str:
        """The PBS server's name: the suffix of job ids (``12.<server_name>``)."""
        return self.host

    def running(self) -> bool:
        return any(_alive(p, s) for p, s in self.procs.values()) or bool(self.holder and _alive(*self.holder))

    def ns_argv(
        self, argv: Sequence[str], *, user: str | None = None, cwd: str | Path | None = None
    ) -> list[str]:
        """The command line that runs *argv* inside the rig's namespaces (as *user* with runuser).

        For code that starts its own processes: ``subprocess.Popen(rig.ns_argv([...]),
        env=rig.command_env(), cwd=...)``.  The working directory is *cwd*, else the user's home
        for a user, else the one the command is started in (``--wd=.``: nsenter opens it before
        it enters the mount namespace, which would otherwise leave it in /)."""
        pid = self._ns_pid()
        if cwd is None:
            cwd = pwd.getpwnam(user).pw_dir if user else "."
        prefix = [_which("nsenter") or "nsenter", "-t", str(pid), "-n", "-m", f"--wd={cwd}", "--"]
        if user is not None:
            prefix += [_which("runuser") or "runuser", "-u", user, "--"]
        return [*prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace with the rig's environment, as root or as *user*."""
        return _run(
            self.ns_argv(argv, user=user, cwd=cwd),
            env=self.command_env(env),
            timeout=timeout,
            check=check,
            input=input,
        )

    def popen(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs,
    ) -> subprocess.Popen:
        """Start a long-running command inside the namespace (a hub, a proxy, a browser), with
        the rig's environment added to *env*.  Stop it before the rig: stop() ends whatever
        is still in the namespace."""
        return subprocess.Popen(
            self.ns_argv(argv, user=user, cwd=cwd), env=self.command_env(env), cwd=cwd, **kwargs
        )

    def start(self, timeout: float = 120) -> OpenPBSRig:
        """Start the namespace and the four daemons; initialise PBS_HOME and the datastore the
        first time (a cold start); create the queues; wait for a free node."""
        _require_root()
        if self.running():
            raise RigError(f"a rig is already running in {self.workdir} (pids {self.pids})")
        ensure_debian_packages(RUN_DEBIAN_PACKAGES, "the OpenPBS rig")
        require_binaries()
        if self.prefix is None:
            self.prefix, built = locate_openpbs()
            if built is not None:
                self.timings["build"] = built
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.timings = {k: v for k, v in self.timings.items() if k == "build"}
        try:
            cold = not self.init_marker.exists()
            self.start_kind = "cold" if cold else "warm"
            self._prepare(cold)
            self._start_holder(deadline)
            self.timings["namespace"] = time.monotonic() - t0
            if cold:
                self._initialise(deadline)
                self.timings["initialise"] = time.monotonic() - t0 - self.timings["namespace"]
            t1 = time.monotonic()
            for name in self.DAEMONS:
                args = ["-t", "create"] if (cold and name == "pbs_server") else []
                self._start_daemon(name, args, deadline)
            self._wait_server(deadline)
            self.timings["daemons"] = time.monotonic() - t1
            self._configure(fresh=cold)
            if cold:
                self.init_marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
            self._wait_free(deadline)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        self._save_state()
        return self

    def stop(self, timeout: float = 20) -> None:
        """Delete the jobs, stop pbs_server (qterm; it stops the datastore), pbs_sched,
        pbs_mom, pbs_comm by PID, then the datastore if still up, then every process left in
        the namespace, then the holder.  Idempotent; touches nothing outside the namespace but
        client processes carrying this rig's PBS_CONF_FILE."""
        if not self.procs and not self.holder:
            self._load_state()
        if not self.holder and not self.procs:
            self._close_holder()
            return
        ns_pid = self._ns_pid(required=False)
        server = self.procs.get("pbs_server")
        if ns_pid and server and _alive(*server):
            with contextlib.suppress(RigError):
                self.delete_jobs(wait=False, force=True)
            with contextlib.suppress(RigError):
                self.run(["qterm", "-t", "quick"], timeout=timeout, check=False)
            deadline = time.monotonic() + timeout
            while _alive(*server) and time.monotonic() < deadline:
                time.sleep(0.05)
        killed: list[int] = []
        for name in reversed(self.DAEMONS):
            if name in self.procs:
                killed += _terminate([self.procs[name]], timeout=timeout)
        # the datastore: pbs_server stops it on qterm; if not (a killed server), pg_ctl, then TERM
        pg = self._pid_from(self.datastore / "postmaster.pid")
        if pg and ns_pid and self._in_ns(pg[0]):
            with contextlib.suppress(RigError):
                self.run(
                    [_pg_bin("pg_ctl"), "-D", str(self.datastore), "-w", "-m", "fast", "stop"],
                    user=self.data_user,
                    cwd="/",
                    timeout=timeout,
                    check=False,
                )
        leftovers = self._ns_processes()
        holder = self.holder
        leftovers = [p for p in leftovers if not holder or p != holder]
        killed += _terminate(leftovers, timeout=timeout)
        if holder:
            killed += _terminate([holder], timeout=timeout)
        self._close_holder()
        clients = self._client_processes()
        killed += _terminate(clients, timeout=timeout)
        self.last_stop = {
            "leftovers": sorted(p for p, _ in leftovers),
            "clients": sorted(p for p, _ in clients),
            "killed": sorted(killed),
        }
        left = [p for p, _ in self._ns_processes()] if self.netns else []
        if holder and _alive(*holder):
            left.append(holder[0])
        if left:
            raise RigError(f"processes of the OpenPBS rig survived SIGKILL: {left}")
        self.procs.clear()
        self.holder = None
        self.netns = None
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    # -- jobs and nodes ------------------------------------------------------------

    def qstat(self, job_id: str | None = None, *, history: bool = True) -> dict[str, dict[str, str]]:
        """``qstat -f[x] [ID]`` parsed: {job id: {attribute: value}} (finished jobs too with history)."""
        argv = ["qstat", "-fx" if history else "-f"] + ([job_id] if job_id else [])
        cp = self.run(argv, timeout=20, check=False)
        if cp.returncode != 0 and not cp.stdout.strip():
            if re.search(r"Unknown Job Id|Job has finished", cp.stderr):
                return {}
            raise RigError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}")
        return parse_qstat_f(cp.stdout)

    def job_state(self, job_id: str) -> str | None:
        """The job's job_state letter (Q, R, E, F, H, S, ...), or None if PBS does not know it."""
        return self.qstat(job_id).get(job_id, {}).get("job_state")

    def jobs(self, *, active_only: bool = False) -> dict[str, str]:
        """job id -> job_state for every job (finished ones too, unless active_only)."""
        states = {j: a.get("job_state", "?") for j, a in self.qstat().items()}
        if active_only:
            states = {j: s for j, s in states.items() if s not in ("F", "X", "M")}
        return states

    def delete_jobs(
        self, *, user: str | None = None, wait: bool = True, force: bool = False, timeout: float = 60
    ) -> None:
        """qdel every unfinished job (of *user*); wait until none is left unless wait=False."""
        active = self.jobs(active_only=True)
        if user is not None:
            owners = {j: a.get("Job_Owner", "").split("@")[0] for j, a in self.qstat().items()}
            active = {j: s for j, s in active.items() if owners.get(j) == user}
        if not active:
            return
        self.run(["qdel", *(["-W", "force"] if force else []), *active], timeout=30, check=False)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while set(active) & set(self.jobs(active_only=True)):
            if time.monotonic() > deadline:
                raise RigError(f"jobs survived qdel for {timeout} s: {self.jobs()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        """The node's state as pbsnodes reports it: 'free', 'job-busy', 'down', ..."""
        cp = self.run(["pbsnodes", "-v", self.host], timeout=10, check=False)
        m = re.search(r"^\s*state = (.+)$", cp.stdout, re.M)
        return m.group(1).strip() if m else f"unknown ({(cp.stderr or cp.stdout).strip()})"

    def wait_free(self, timeout: float = 30) -> None:
        self._wait_free(time.monotonic() + timeout)

    def stray_processes(self) -> list[int]:
        """PIDs still in the rig's namespace or carrying its PBS_CONF_FILE (not this process).
        Empty after stop()."""
        return sorted({p for p, _ in self._ns_processes()} | {p for p, _ in self._client_processes()})

    def logs_tail(self, n: int = 25) -> str:
        day = time.strftime("%Y%m%d")
        paths = [self.home / f"{d}_logs" / day for d in ("server", "sched", "mom", "comm")]
        paths += sorted(self.log_dir.glob("*.log"))
        return "\n".join(_tail(p, n) for p in paths if p.exists())

    def __enter__(self) -> OpenPBSRig:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"OpenPBSRig({str(self.workdir)!r}, host={self.host!r}, address={self.address}, pids={self.pids})"
        )

    # -- internals: set-up -----------------------------------------------------------

    def _daemon_env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.exec_dir}/bin:{self.exec_dir}/sbin:{_SBIN_PATH}",
            "PBS_CONF_FILE": str(self.conf),
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            _MARKER: str(self.workdir),
        }
        if os.environ.get("TZ"):
            env["TZ"] = os.environ["TZ"]
        return env

    def _prepare(self, cold: bool) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        w.chmod(0o755)
        _check_traversable(w)
        if cold:  # a half-done initialisation (no marker) is redone from scratch
            shutil.rmtree(self.home, ignore_errors=True)
        for d in (self.etc, self.log_dir, self.run_dir):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        self.tmp_dir.mkdir(exist_ok=True)
        self.tmp_dir.chmod(0o1777)
        assert self.prefix is not None
        # The build may live in a cache under a mode-700 home: job users reach it through a
        # read-only bind mount inside the namespace.  An installed PBS is used where it is.
        if _world_searchable(self.prefix):
            self.exec_dir = self.prefix
        else:
            self.exec_dir = w / "exec"
            self.exec_dir.mkdir(exist_ok=True)
            self.exec_dir.chmod(0o755)
        self._ensure_data_user()
        self.conf.write_text(self._conf_text())
        self.conf.chmod(0o644)
        self.hosts_file.write_text(self._hosts_text())
        self.hosts_file.chmod(0o644)
        for f in self.lock_files.values():  # stale locks of an earlier (killed) rig
            with contextlib.suppress(FileNotFoundError):
                f.unlink()

    def _conf_text(self) -> str:
        p, a = self.ports, self.address
        return f"""\
PBS_EXEC={self.exec_dir}
PBS_HOME={self.home}
PBS_SERVER={self.host}
PBS_SERVER_HOST_NAME={a}
PBS_MOM_NODE_NAME={self.host}
PBS_LEAF_NAME={a}
PBS_COMM_NAME={a}:{p["comm"]}
PBS_LEAF_ROUTERS={a}:{p["comm"]}
PBS_START_SERVER=1
PBS_START_SCHED=1
PBS_START_COMM=1
PBS_START_MOM=1
PBS_CORE_LIMIT=unlimited
PBS_TMPDIR={self.tmp_dir}
PBS_BATCH_SERVICE_PORT={p["batch"]}
PBS_MOM_SERVICE_PORT={p["mom"]}
PBS_MANAGER_SERVICE_PORT={p["manager"]}
PBS_DATA_SERVICE_PORT={p["data"]}
"""

    def _hosts_text(self) -> str:
        """The machine's /etc/hosts without the rig's host name, plus that name on the rig's
        address (the daemons resolve it, and its reverse, on every connection)."""
        keep = []
        with contextlib.suppress(OSError):
            for line in Path("/etc/hosts").read_text().splitlines():
                fields = line.split("#", 1)[0].split()
                if self.host in fields[1:]:
                    continue
                keep.append(line)
        return (
            f"# written by rigs/openpbs_rig.py, mounted on /etc/hosts in the rig's namespace\n"
            f"{self.address}\t{self.host}\n" + "\n".join(keep) + "\n"
        )

    def _ensure_data_user(self) -> None:
        try:
            pwd.getpwnam(self.data_user)
        except KeyError:
            # PostgreSQL runs as it; pbs_dataservice checks `su - USER -c cd`: a shell and a home
            _run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/",
                    "--shell",
                    "/bin/sh",
                    "--comment",
                    "hubstock OpenPBS datastore",
                    self.data_user,
                ]
            )

    def _start_holder(self, deadline: float) -> None:
        log = open(self.log_dir / "holder.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(
                [
                    _which("unshare") or "unshare",
                    "--net",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-I",
                    "-c",
                    _HOLDER,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._daemon_env(),
                cwd="/",
                start_new_session=True,
            )
        finally:
            log.close()
        self._holder = _Holder(proc)
        try:
            pid = self._holder.wait_ready(max(5.0, deadline - time.monotonic()))
        except RigError as exc:
            raise RigError(f"{exc}\n{_tail(self.log_dir / 'holder.log')}") from None
        st = _proc_stat(pid)
        if pid != proc.pid or st is None:
            raise RigError(f"the namespace holder is not the process started ({pid} != {proc.pid})")
        self.holder = (pid, st[2])
        self.netns = _netns(pid)
        if self.netns is None or self.netns == _netns(os.getpid()):
            raise RigError("the namespace holder did not get a network namespace of its own")
        self._save_state()
        assert self.exec_dir is not None
        steps = [
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{self.address}/32", "dev", "lo"],
            ["mount", "--bind", str(self.hosts_file), "/etc/hosts"],
        ]
        if self.exec_dir != self.prefix:
            steps.append(["mount", "--bind", "-o", "ro", str(self.prefix), str(self.exec_dir)])
        for argv in steps:
            self._ns_exec("namespace", argv, timeout=20)

    def _ns_exec(
        self,
        what: str,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        cwd: Path | str = "/",
        check: bool = True,
    ) -> int | None:
        """Run argv as root inside the namespaces, as a child of the holder (daemons, postgres)."""
        if self._holder is None:
            raise RigError("the rig's namespace holder is not ours (started by another process)")
        out = self.log_dir / f"{what}.log"
        with open(out, "ab") as f:
            f.write(f"\n### {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        rc = self._holder.run(argv, env or self._daemon_env(), out, cwd=cwd, timeout=timeout)
        if check and rc != 0:
            state = "timed out" if rc is None else f"exited {rc}"
            raise RigError(
                f"{' '.join(argv)} {state} in the rig's namespace\n{_tail(out)}\n{self.logs_tail()}"
            )
        return rc

    def _initialise(self, deadline: float) -> None:
        """PBS_HOME (pbs_postinstall), pbs_mom's config, and the datastore (by hand: the stock
        pbs_habitat wants /var/run/postgresql and deletes the datastore when that fails)."""
        assert self.exec_dir is not None
        version = _built_version(self.prefix)
        env = {**self._daemon_env(), "PBS_DATA_SERVICE_USER": self.data_user}
        self._ns_exec(
            "initialise",
            [
                f"{self.exec_dir}/libexec/pbs_postinstall",
                "server",
                version,
                str(self.exec_dir),
                str(self.home),
                self.data_user,
                "sameconf",
            ],
            env=env,
        )
        with open(self.home / "mom_priv" / "config", "a") as f:
            # $usecp: the job's output is copied, not sent with pbs_rcp (rsh), or the job sits in E;
            # poll the job's processes every 1-2 s, not 10-120 s (a qdel'ed job ends sooner)
            f.write("$usecp *:/ /\n$min_check_poll 1\n$max_check_poll 2\n")
        self._initialise_datastore()

    def _initialise_datastore(self) -> None:
        d, port, user = self.datastore, self.ports["data"], self.data_user
        d.mkdir(mode=0o700)
        pw = pwd.getpwnam(user)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        as_user = [_which("runuser") or "runuser", "-u", user, "--"]
        ds = "datastore"
        self._ns_exec(
            ds,
            [*as_user, _pg_bin("initdb"), "-D", str(d), "-U", user, "-E", "SQL_ASCII", "--locale=C"],
            cwd=d,
            timeout=120,
        )
        with open(d / "postgresql.conf", "a") as f:
            # what pbs_db_utility sets, with the socket and lock inside PBS_HOME (Debian's
            # /var/run/postgresql belongs to postgres: the data user cannot write there)
            f.write(
                "# --- hubstock OpenPBS rig ---\n"
                f"port = {port}\nlisten_addresses = '*'\nunix_socket_directories = '{d}'\n"
                "standard_conforming_strings = on\nlogging_collector = on\n"
                "log_filename = 'pbs_dataservice_log.%a'\nlog_truncate_on_rotation = on\n"
                "log_rotation_age = 1440\nlog_line_prefix = '%t'\n"
            )
        pg_env = {**self._daemon_env(), "PGHOST": str(d), "PGPORT": str(port)}
        self._ns_exec(
            ds,
            [
                *as_user,
                _pg_bin("pg_ctl"),
                "-D",
                str(d),
                "-w",
                "-t",
                "60",
                "-l",
                str(d / "pg_init.log"),
                "start",
            ],
            env=pg_env,
            cwd=d,
            timeout=90,
        )
        try:
            self._ns_exec(ds, [*as_user, _pg_bin("createdb"), "pbs_datastore"], env=pg_env, cwd=d)
            # its leading "drop schema pbs" fails on a new database: expected (psql goes on)
            self._ns_exec(
                ds,
                [
                    *as_user,
                    _pg_bin("psql"),
                    "-q",
                    "-d",
                    "pbs_datastore",
                    "-f",
                    f"{self.exec_dir}/libexec/pbs_db_schema.sql",
                ],
                env=pg_env,
                cwd=d,
            )
            # a random password for the data user, in server_priv/db_password
            self._ns_exec(ds, [f"{self.exec_dir}/sbin/pbs_ds_password", "-r"], env=pg_env, cwd=d)
        finally:
            self._ns_exec(
                ds,
                [*as_user, _pg_bin("pg_ctl"), "-D", str(d), "-w", "-m", "fast", "stop"],
                env=pg_env,
                cwd=d,
                timeout=60,
                check=False,
            )
        hba = d / "pg_hba.conf"
        kept = [
            line for line in hba.read_text().splitlines() if not line.strip() or line.lstrip().startswith("#")
        ]
        kept += [  # password only from now on, as pbs_db_utility leaves it
            "local   all   all                  md5",
            "host    all   all   0.0.0.0/0      md5",
            "host    all   all   ::1/128        md5",
        ]
        hba.write_text("\n".join(kept) + "\n")

    def _start_daemon(self, name: str, args: Sequence[str], deadline: float) -> None:
        t0 = time.monotonic()
        assert self.exec_dir is not None
        self._ns_exec(
            name, [f"{self.exec_dir}/sbin/{name}", *args], timeout=max(10.0, deadline - time.monotonic())
        )
        while True:
            found = self._pid_from(self.lock_files[name])
            if found and self._in_ns(found[0]):
                self.procs[name] = found
                self._save_state()
                break
            if time.monotonic() > deadline:
                raise RigError(f"{name} wrote no live PID to {self.lock_files[name]}\n{self.logs_tail()}")
            time.sleep(0.05)
        self.timings[name] = time.monotonic() - t0

    def _wait_server(self, deadline: float) -> None:
        while True:
            cp = self.run(["qstat", "-B"], timeout=10, check=False)
            if cp.returncode == 0:
                return
            self._check_daemons()
            if time.monotonic() > deadline:
                raise RigError(f"pbs_server does not answer: {cp.stderr.strip()}\n{self.logs_tail()}")
            time.sleep(0.2)

    def _configure(self, *, fresh: bool) -> None:
        """Queues as asked (others removed when empty), scheduling, job history, the node."""
        existing = set(parse_qstat_f(self.run(["qstat", "-Qf"], timeout=20).stdout))
        lines = []
        for q in self.queues:
            if q.name not in existing:
                lines.append(f"create queue {q.name} queue_type = execution")
            lines += [
                f"set queue {q.name} enabled = True",
                f"set queue {q.name} started = True",
                f"set queue {q.name} resources_max.ncpus = {q.max_cpus}",
                f"set queue {q.name} resources_max.mem = {pbs_size(q.max_memory)}",
                f"set queue {q.name} resources_max.walltime = {q.max_walltime}",
            ]
        lines += [
            f"set server default_queue = {self.queues[0].name}",
            "set server scheduling = True",
            "set server job_history_enable = True",  # qstat -x: finished jobs stay, as F
            "set server flatuid = True",
            "set server scheduler_iteration = 10",
        ]
        wanted = {q.name for q in self.queues}
        lines += [f"delete queue {name}" for name in sorted(existing - wanted)]  # e.g. -t create's workq
        nodes = self.run(["pbsnodes", "-av"], timeout=20, check=False).stdout
        if not re.search(rf"^{re.escape(self.host)}$", nodes, re.M):
            lines.append(f"create node {self.host} Mom={self.address},Port={self.ports['mom']}")
        cp = self.run(["qmgr"], input="\n".join(lines) + "\n", timeout=30, check=False)
        if cp.returncode != 0:
            raise RigError(
                f"qmgr failed ({cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}\n"
                + "\n".join(lines)
            )

    def _wait_free(self, deadline: float) -> None:
        while True:
            state = self.node_state()
            if state == "free":
                return
            self._check_daemons()
            if time.monotonic() > deadline:
                raise RigError(f"node {self.host} not free (state: {state!r})\n{self.logs_tail()}")
            time.sleep(0.2)

    def _check_daemons(self) -> None:
        for name, (pid, start) in self.procs.items():
            if not _alive(pid, start):
                raise RigError(f"{name} ({pid}) died during start-up\n{self.logs_tail()}")

    # -- internals: processes ------------------------------------------------------------

    @staticmethod
    def _pid_from(path: Path) -> tuple[int, int] | None:
        """(pid, starttime) of the live process whose PID starts *path* (a lock or PID file)."""
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        m = re.match(r"\D*(\d+)", text)
        if not m:
            return None
        pid = int(m.group(1))
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return None
        return pid, st[2]

    def _in_ns(self, pid: int) -> bool:
        return self.netns is not None and _netns(pid) == self.netns

    def _ns_pid(self, *, required: bool = True) -> int | None:
        """A live process inside the rig's namespace to enter: the holder, else any other."""
        if self.holder and _alive(*self.holder) and self._in_ns(self.holder[0]):
            return self.holder[0]
        for pid, _ in self._ns_processes():
            return pid
        if required:
            raise RigError(f"the OpenPBS rig in {self.workdir} is not running")
        return None

    def _ns_processes(self) -> list[tuple[int, int]]:
        """(pid, starttime) of every live process in the rig's network namespace, but this one."""
        if not self.netns:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and _netns(int(entry)) == self.netns:
                st = _proc_stat(int(entry))
                if st and st[0] not in ("Z", "X"):
                    out.append((int(entry), st[2]))
        return out

    def _client_processes(self) -> list[tuple[int, int]]:
        """Processes outside the namespace that carry this rig's PBS_CONF_FILE or marker (this
        process and its ancestors excepted)."""
        mine = {os.getpid()}
        p = os.getpid()
        while p > 1 and (st := _proc_stat(p)):
            p = st[1]
            mine.add(p)
        conf, workdir = str(self.conf), str(self.workdir)
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            env = _environ(int(entry))
            if env.get("PBS_CONF_FILE") == conf or env.get(_MARKER) == workdir:
                st = _proc_stat(int(entry))
                if st and st[0] not in ("Z", "X"):
                    out.append((int(entry), st[2]))
        return out

    def _close_holder(self) -> None:
        if self._holder is not None:
            self._holder.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._holder.proc.wait(5)
            self._holder = None

    def _save_state(self) -> None:
        data = {
            "holder": self.holder,
            "netns": self.netns,
            "procs": self.procs,
            "prefix": str(self.prefix) if self.prefix else None,
            "exec_dir": str(self.exec_dir) if self.exec_dir else None,
            "host": self.host,
            "address": self.address,
            "timings": self.timings,
            "start_kind": self.start_kind,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    def _load_state(self) -> None:
        """Adopt what an earlier OpenPBSRig on this workdir recorded (``down``, ``exec``)."""
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self.holder = tuple(data["holder"]) if data.get("holder") else None  # type: ignore[assignment]
        self.netns = data.get("netns")
        self.procs = {k: (int(v[0]), int(v[1])) for k, v in data.get("procs", {}).items()}
        if data.get("prefix") and self.prefix is None:
            self.prefix = Path(data["prefix"])
        if data.get("exec_dir"):
            self.exec_dir = Path(data["exec_dir"])
        self.host = data.get("host") or self.host
        self.address = data.get("address") or self.address
        self.timings = data.get("timings") or {}
        self.start_kind = data.get("start_kind")


def _world_searchable(path: Path) -> bool:
    try:
        _check_traversable(Path(path))
    except (RigError, OSError):
        return False
    return True


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl, ...) of the installed PostgreSQL."""
    cp = _run([_which("pg_config") or "pg_config", "--bindir"], timeout=10, check=False)
    for d in [cp.stdout.strip(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        if d and (Path(d) / name).exists():
            return str(Path(d) / name)
    found = _which(name)
    if found:
        return found
    raise RigError(f"no PostgreSQL {name}: apt-get install postgresql")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="A private single-node OpenPBS in its own network namespace.")
    ap.add_argument("action", choices=("build", "up", "down", "run", "exec"))
    ap.add_argument("workdir", type=Path, nargs="?")
    ap.add_argument("command", nargs="*", help="exec: the command to run inside the rig's namespace")
    ap.add_argument("--queues", default="", help="name:cpus:mem:walltime,... (default: debug and batch)")
    args = ap.parse_args(argv)
    if args.action == "build":
        prefix, seconds = locate_openpbs(log=lambda m: print(m, file=sys.stderr))
        print(prefix)
        how = "cached" if seconds is None else f"built in {seconds:.0f} s"
        print(f"# {how}: {build_info(prefix)}", file=sys.stderr)
        return 0
    if args.workdir is None:
        ap.error("a workdir is needed")
    queues = DEFAULT_QUEUES
    if args.queues:
        queues = tuple(
            Queue(n, int(c), m, w) for n, c, m, w in (q.split(":", 3) for q in args.queues.split(","))
        )
    rig = OpenPBSRig(args.workdir, queues=queues)
    if args.action == "down":
        rig.stop()
        print(f"stopped the rig in {args.workdir}")
        return 0
    if args.action == "exec":
        cp = subprocess.run(rig.ns_argv(args.command or ["bash"]), env=rig.command_env(), check=False)
        return cp.returncode
    rig.start()
    print(f"# OpenPBS rig up ({rig.start_kind} start) in {rig.timings['start']:.1f} s, pids {rig.pids}")
    print(
        f"# server {rig.server_name} on {rig.address} in the namespace of pid {rig.holder[0] if rig.holder else '?'}"
    )
    print(f"# run commands there: python {Path(__file__).name} exec {args.workdir} -- qstat -B")
    print(f"export PBS_CONF_FILE={rig.conf}")
    if args.action == "run":
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            rig.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
