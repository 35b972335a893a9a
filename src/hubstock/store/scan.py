"""Who may change what on the shared root, found by walking it (for ``hubstock doctor``).

A path is *writable by users* when it is not a symbolic link and others may write it, or its
group may and that group is not the root's shared group (a setgid root's group, which the hub
and the admins share: see :mod:`.perms`). A path is *foreign* when someone other than the
root's owner (the admin: :func:`.perms.admin_of`) or uid 0 owns it; the hub's own records
(``sessions/``, the audit log) are not counted. A folder nobody else may enter
(no search permission for group or other) is not walked into: users cannot reach what is
inside, and a hard link to it elsewhere is found where it is reachable.

Standard library only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .perms import admin_of, shared_group, writable_by_others
from .root import Root


@dataclass
class RootScan:
    """What :func:`scan_root` found: up to ``limit`` examples of each problem, and their counts."""

    owner: int
    writable: list[tuple[Path, int]] = field(default_factory=list)  # (path, mode)
    writable_count: int = 0
    foreign: list[tuple[Path, int]] = field(default_factory=list)  # (path, uid)
    foreign_count: int = 0
    unreadable: list[Path] = field(default_factory=list)  # folders the scan could not list
    scanned: int = 0


def user_writable(st: os.stat_result, shared_gid: int | None) -> bool:
    """Whether users may change a path with this ``lstat``: :func:`.perms.writable_by_others`,
    except group write for the root's shared group (the hub's and the admins', by design)."""
    if not writable_by_others(st):
        return False
    return bool(st.st_mode & 0o002) or st.st_gid != shared_gid


def _reachable(st: os.stat_result, shared_gid: int | None) -> bool:
    """Whether someone other than the owner (and the shared group) may enter this folder."""
    mode = stat.S_IMODE(st.st_mode)
    return bool(mode & 0o001) or bool(mode & 0o010 and st.st_gid != shared_gid)


def scan_root(path: Path, limit: int = 10) -> RootScan:
    """Walk the root at ``path`` (which must exist) without following symbolic links."""
    root = Root(path)
    top = os.lstat(path)
    shared_gid = shared_group(path)
    hubs_own = {str(root.sessions), str(root.audit_log)}
    scan = RootScan(owner=top.st_uid)
    allowed = {admin_of(path), 0}

    def visit(p: str, st: os.stat_result, foreign_ok: bool) -> None:
        scan.scanned += 1
        if user_writable(st, shared_gid):
            scan.writable_count += 1
            if len(scan.writable) < limit:
                scan.writable.append((Path(p), stat.S_IMODE(st.st_mode)))
        if not foreign_ok and st.st_uid not in allowed:
            scan.foreign_count += 1
            if len(scan.foreign) < limit:
                scan.foreign.append((Path(p), st.st_uid))

    visit(str(path), top, False)
    stack: list[tuple[str, bool]] = [(str(path), False)]
    while stack:
        d, foreign_ok = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            scan.unreadable.append(Path(d))
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            own = foreign_ok or e.path in hubs_own
            visit(e.path, st, own)
            if stat.S_ISDIR(st.st_mode) and (_reachable(st, shared_gid) or st.st_uid not in allowed):
                stack.append((e.path, own))
    return scan


def user_writable_paths(path: Path, limit: int = 10) -> list[Path]:
    """Up to ``limit`` paths under the root at ``path`` that users may change (see :func:`scan_root`)."""
    return [p for p, _mode in scan_root(path, limit).writable]
