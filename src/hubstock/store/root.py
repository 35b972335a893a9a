"""The shared root's layout, its lock, and its audit log.

    $ROOT/envs/<env>/<build-id>/       immutable builds (complete when the marker exists)
    $ROOT/envs/<env>/current           symlink to the newest complete build of that env
    $ROOT/generations/<gen>/           published kernels + extension defaults
    $ROOT/current                      symlink to the published generation
    $ROOT/pkgs/                        conda package cache (same filesystem: hard links)
    $ROOT/cache/uv/                    uv's cache for the pip part
    $ROOT/cache/wheels/                the pip packages, installed, checked and byte-compiled (hard links)
    $ROOT/sessions/                    running sessions, so gc keeps what they use
    $ROOT/audit.log                    one JSON line per build, publish, rollback, gc, spawn
    $ROOT/.hubstock.lock               held while anything changes the root (mode 0600)
    $ROOT/.hubstock.holder             who holds it (written once it is held)
    $ROOT/.hubstock-id.json            the root's marker: a root is made once (:mod:`.rootmark`)

Nothing outside ``hubstock.store`` spells these names. Who may read and write each of
them is :mod:`.perms`' business.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DiskFullError, RootBusy, is_disk_full
from .fs import atomic_write, current_user, now_iso
from .perms import ADMIN_DIR, LOCK_FILE, PUBLIC_DIR, PUBLIC_FILE, admin_of, make_dir, private_modes, set_mode
from .records import AuditLine, RecordError

MARKER = ".hubstock-complete"
PROVENANCE = ".hubstock-build.json"
MANIFEST = "manifest.json"
#: in a build: the sha256 of the files no package declares
BUILD_FILES = ".hubstock-files.json"
#: in an extracted package of the cache: hubstock checked it against its archive
CACHE_SEAL = ".hubstock-sealed.json"


@dataclass(frozen=True)
class Root:
    """Paths under the shared root; creating nothing until asked."""

    path: Path

    @property
    def envs(self) -> Path:
        return self.path / "envs"

    def env(self, name: str) -> Path:
        return self.envs / name

    def build(self, env: str, build_id: str) -> Path:
        return self.envs / env / build_id

    def env_current(self, env: str) -> Path:
        return self.envs / env / "current"

    @property
    def pkgs(self) -> Path:
        return self.path / "pkgs"

    @property
    def downloads(self) -> Path:
        return self.pkgs / "downloads"

    def pkg_entry(self, dist: str) -> Path:
        """The extracted package ``<name>-<version>-<build>`` in the cache."""
        return self.pkgs / dist

    def pkg_lock(self, dist: str) -> Path:
        """The installer's own lock and revision file of a cached package."""
        return self.pkgs / f"{dist}.lock"

    def pkg_seal(self, dist: str) -> Path:
        return self.pkg_entry(dist) / CACHE_SEAL

    @property
    def pkgs_lock(self) -> Path:
        """The installer's lock of the whole cache."""
        return self.pkgs / ".cache.lock"

    @property
    def cache(self) -> Path:
        return self.path / "cache"

    @property
    def uv_cache(self) -> Path:
        return self.cache / "uv"

    @property
    def wheels(self) -> Path:
        """The wheel cache: each pip package installed once, checked, byte-compiled and sealed."""
        return self.cache / "wheels"

    def wheel_entry(self, key: str) -> Path:
        return self.wheels / key

    @property
    def generations(self) -> Path:
        return self.path / "generations"

    def generation(self, gen: str) -> Path:
        return self.generations / gen

    @property
    def current(self) -> Path:
        return self.path / "current"

    @property
    def sessions(self) -> Path:
        return self.path / "sessions"

    @property
    def audit_log(self) -> Path:
        return self.path / "audit.log"

    @property
    def lock_file(self) -> Path:
        return self.path / ".hubstock.lock"

    @property
    def holder_file(self) -> Path:
        return self.path / ".hubstock.holder"

    @property
    def trash(self) -> Path:
        return self.path / ".trash"

    def ensure(self) -> None:
        """Create the root's top level and its marker (:mod:`.rootmark`: commands make a root only
        through ``hubstock init-root``, and check the marker first) with its modes, whatever the umask: the root, ``envs/`` and
        ``generations/`` readable by all (servers use them), the caches and the trash the admin's alone.
        A setgid root (the group the hub and the admins share, see :mod:`.perms`) stays setgid."""
        try:
            setgid = os.stat(self.path).st_mode & stat.S_ISGID
        except OSError:
            setgid = 0
        make_dir(self.path, PUBLIC_DIR | setgid)
        for d in (self.envs, self.generations):
            make_dir(d, PUBLIC_DIR)
        for d in (self.pkgs, self.cache, self.trash):
            make_dir(d, ADMIN_DIR)
        from .rootmark import is_root, write_marker  # the marker's module reads this one

        if not is_root(self.path):
            write_marker(self.path)

    @contextlib.contextmanager
    def locked(self, on_wait: Callable[[str], None] | None = None, *, create: bool = True) -> Iterator[None]:
        """Hold the root's lock: one writer at a time; a second one waits its turn.

        The lock file is the admin's alone (0600): ``flock`` needs nothing but an open file, so
        a file others could open would let any user stall every build. With ``create=False``
        (a dry run) nothing is created: a root that has no lock file yet is read as it is.
        """
        if create:
            self.ensure()
        elif not self.lock_file.exists():
            yield
            return
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.lock_file, flags, LOCK_FILE)
        try:
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != LOCK_FILE:
                os.fchmod(fd, LOCK_FILE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = self._holder(st)
                wait = LOCK_WAIT.get()
                if on_wait:
                    limit = f"at most {wait:g} s" if wait is not None else "Ctrl-C gives up"
                    on_wait(f"waiting for {holder} to finish with {self.path} ({limit})")
                with _reminding(on_wait, f"still waiting for {holder} to finish with {self.path}"):
                    if wait is None:
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    elif not _flock_within(fd, wait):
                        raise RootBusy(
                            f"{holder} still holds the root {self.path} after {wait:g} s; run the command "
                            "again once it is done, or wait longer (--wait SECONDS, or no --wait to wait "
                            "as long as it takes)."
                        ) from None
            me = self._me()
            if create:  # a note only: a full disk must not stop gc, which frees space
                with contextlib.suppress(OSError, DiskFullError):
                    atomic_write(self.holder_file, me + "\n", mode=PUBLIC_FILE)
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    if self.holder_file.read_text().strip() == me:
                        self.holder_file.unlink()
        finally:
            os.close(fd)  # closing releases the lock, as does the process dying

    @staticmethod
    def _me() -> str:
        return f"hubstock pid {os.getpid()} on {socket.gethostname()} (user {current_user()})"

    def held_since(self) -> int | None:
        """When this process took the root's lock, by the root filesystem's own clock (the ctime of
        the holder file it wrote then, in ns): None unless this process holds it now. A cache
        file whose ctime moved after that was linked or unlinked by this very holder."""
        try:
            if self.holder_file.read_text().strip() != self._me():
                return None
            return os.lstat(self.holder_file).st_ctime_ns
        except OSError:
            return None

    def _holder(self, st: os.stat_result) -> str:
        """Who holds the lock now: the kernel's lock table names the process; the holder file,
        written only once the lock is held, says more about it when it names that process."""
        pid = _flock_holder(st)
        try:
            text = self.holder_file.read_text().strip()
        except OSError:
            text = ""
        named = _pid_in(text)
        if pid is not None:
            return text if named == pid else f"process {pid}"
        if text and named and f" on {socket.gethostname()} " in text and not _alive(named):
            return "another process"  # left by a hubstock that died holding the lock
        return text or "another process"

    def audit(self, action: str, **fields: Any) -> None:
        """Append one :class:`AuditLine` (O_APPEND: concurrent writers do not mix).

        The log is readable by its owner only (0600; written by root, the root's owner: the
        admin), or by the root's shared group too (0660) where the root is setgid (see :mod:`.perms`).
        """
        if not self.path.is_dir():
            make_dir(self.path, PUBLIC_DIR)
        _dmode, fmode, gid = private_modes(self.path)
        line = AuditLine(time=now_iso(), action=action, by=current_user(), **fields).to_line().encode()
        try:
            fd = os.open(
                self.audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, fmode
            )
            try:
                set_mode(self.audit_log, fmode, gid, admin_of(self.path))
                if os.write(fd, line) < len(line):  # the disk filled up mid-line: end the torn line
                    with contextlib.suppress(OSError):
                        os.write(fd, b"\n")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.audit_log))
            finally:
                os.close(fd)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFullError.at(self.audit_log, "writing the audit log", len(line)) from None
            raise

    def audit_lines(self) -> list[AuditLine]:
        """Every readable line of the audit log, oldest first (damaged lines are skipped)."""
        try:
            text = self.audit_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            with contextlib.suppress(RecordError):
                out.append(AuditLine.from_text(line, f"{self.audit_log}:{n}"))
        return out


def _flock_holder(st: os.stat_result) -> int | None:
    """The pid holding a ``flock`` on the file ``st`` describes, from ``/proc/locks`` (Linux)."""
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":  # '->' marks a waiter, not the holder
            continue
        try:
            major, minor, ino = parts[5].split(":")
            same = (int(major, 16), int(minor, 16), int(ino)) == (
                os.major(st.st_dev),
                os.minor(st.st_dev),
                st.st_ino,
            )
            if same:
                return int(parts[4])
        except ValueError:
            continue
    return None


def _pid_in(text: str) -> int | None:
    parts = text.split()
    if len(parts) >= 3 and parts[:2] == ["hubstock", "pid"] and parts[2].isdigit():
        return int(parts[2])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: filesystems that hold no files of their own: a root there is a mistake
PSEUDO_FILESYSTEMS = frozenset(
    [
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "securityfs",
        "debugfs",
        "tracefs",
        "bpf",
        "pstore",
        "configfs",
        "fusectl",
        "mqueue",
        "efivarfs",
        "binfmt_misc",
        "autofs",
        "rpc_pipefs",
        "nsfs",
        "selinuxfs",
    ]
)


def root_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a shared root (None when it can): it is a file, it lies below a
    file, or it is on a pseudo-filesystem such as /proc. A path that does not exist yet is fine."""
    if os.path.lexists(path) and not path.is_dir():
        return "is a file, not a directory"
    probe = path.parent
    while not os.path.lexists(probe):
        probe = probe.parent
    if not probe.is_dir():
        return f"is below {probe}, which is a file, not a directory"
    real = os.path.realpath(path if os.path.lexists(path) else probe)
    fstype = _fstype(real)
    if fstype in PSEUDO_FILESYSTEMS:
        return f"is on the {fstype} pseudo-filesystem, which holds no files of its own"
    return None


def _fstype(path: str) -> str | None:
    """The type of the filesystem mounted at the longest mount point holding ``path``."""
    best, fstype = "", None
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return next((t for top, t in (("/proc", "proc"), ("/sys", "sysfs")) if _under(path, top)), None)
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        if _under(path, mount) and len(mount) >= len(best):
            best, fstype = mount, right.split()[0]
    return fstype


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


#: seconds between two "still waiting" lines while a command waits for the root's lock
REMIND_EVERY = 30.0

#: how long a command waits for the root's lock before it gives up (None: as long as it takes);
#: the CLI's ``--wait`` sets it for the command it runs
LOCK_WAIT: ContextVar[float | None] = ContextVar("hubstock_lock_wait", default=None)


def _flock_within(fd: int, seconds: float) -> bool:
    """Take the lock on ``fd`` if it comes free within ``seconds`` (asking every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


@contextlib.contextmanager
def _reminding(say: Callable[[str], None] | None, what: str) -> Iterator[None]:
    """While the body blocks, ``say`` "``what`` (N s)" every :data:`REMIND_EVERY` seconds."""
    if say is None:
        yield
        return
    done = threading.Event()
    t0 = time.monotonic()

    def remind() -> None:
        while not done.wait(REMIND_EVERY):
            say(f"{what} ({time.monotonic() - t0:.0f} s)")

    reminder = threading.Thread(target=remind, name="hubstock-lock-wait", daemon=True)
    reminder.start()
    try:
        yield
    finally:
        done.set()
