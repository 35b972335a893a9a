"""The shared root's layout, its lock, and its audit log.

    $ROOT/envs/<env>/<build-id>/       immutable builds (complete when the marker exists)
    $ROOT/envs/<env>/current           symlink to the newest complete build of that env
    $ROOT/generations/<gen>/           published kernels + extension defaults
    $ROOT/current                      symlink to the published generation
    $ROOT/pkgs/                        conda package cache (same filesystem: hard links)
    $ROOT/cache/uv/                    uv's cache for the pip part
    $ROOT/sessions/                    running sessions, so gc keeps what they use
    $ROOT/audit.log                    one JSON line per build, publish, rollback, gc, spawn
    $ROOT/.hubstock.lock               held while anything changes the root

Nothing outside ``hubstock.store`` spells these names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fs import current_user, now_iso
from .records import AuditLine, RecordError

MARKER = ".hubstock-complete"
PROVENANCE = ".hubstock-build.json"
MANIFEST = "manifest.json"


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
        """Append one :class:`AuditLine` (O_APPEND: concurrent writers do not mix)."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = AuditLine(time=now_iso(), action=action, by=current_user(), **fields).to_line().encode()
        fd = os.open(self.audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

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
