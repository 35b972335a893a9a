"""The shared root's layout, and the file operations that keep it consistent.

$ROOT/envs/<env>/<build-id>/       immutable builds (complete when the marker exists)
$ROOT/envs/<env>/current           symlink to the newest complete build of that env
$ROOT/generations/<gen>/           published kernels + extension defaults
$ROOT/current                      symlink to the published generation
$ROOT/pkgs/                        conda package cache (same filesystem: hard links)
$ROOT/cache/uv/                    uv's cache for the pip part
$ROOT/sessions/                    running sessions, so gc keeps what they use
$ROOT/audit.log                    one JSON line per build, publish, rollback, gc, spawn
$ROOT/.hubstock.lock               held while anything changes the root
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MARKER = ".hubstock-complete"
PROVENANCE = ".hubstock-build.json"


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

    @property
    def uv_cache(self) -> Path:
        return self.path / "cache" / "uv"

    @property
    def generations(self) -> Path:
        return self.path / "generations"

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
    def trash(self) -> Path:
        return self.path / ".trash"

    def ensure(self) -> None:
        """Create the root's top level (world-readable, so servers can use it)."""
        for d in (self.path, self.envs, self.pkgs, self.generations):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)

    @contextlib.contextmanager
    def locked(self, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the root's lock: one writer at a time; a second one waits its turn."""
        self.ensure()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                if on_wait:
                    on_wait(f"waiting for {holder} to finish with {self.path}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"hubstock pid {os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock, as does the process dying

    def audit(self, action: str, **fields: Any) -> None:
        """Append one JSON line to the audit log (O_APPEND: concurrent writers do not mix)."""
        self.path.mkdir(parents=True, exist_ok=True)
        rec = {"time": now_iso(), "action": action, "by": current_user(), **fields}
        line = (json.dumps(rec, sort_keys=True) + "\n").encode()
        fd = os.open(self.audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``path`` so that readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` with one rename: readers never see it missing."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


def remove_tree(path: Path, trash: Path) -> None:
    """Remove ``path``: first renamed away (so it vanishes at once), then deleted."""
    if not path.exists() and not path.is_symlink():
        return
    trash.mkdir(parents=True, exist_ok=True)
    doomed = trash / f"{path.name}.{uuid.uuid4().hex[:8]}"
    os.rename(path, doomed)
    _rmtree_writable(doomed)


def empty_trash(trash: Path) -> None:
    """Delete what an earlier, interrupted removal left in the trash."""
    if trash.is_dir():
        for p in trash.iterdir():
            _rmtree_writable(p)


def _rmtree_writable(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    # a finished build is read-only: make its directories writable to empty them
    for dirpath, _dirs, _files in os.walk(path):
        mode = stat.S_IMODE(os.lstat(dirpath).st_mode)
        if not mode & stat.S_IWUSR:
            os.chmod(dirpath, mode | stat.S_IWUSR)
    shutil.rmtree(path)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
