"""``disk.*``: room on the filesystems the hub and the builds write to (the hub's ``state_dir``: its
database, its secrets; the root: builds, generations, session records, the audit log).

A filesystem that is full, or out of inodes, stops the hub in ways that look like something
else (a login that fails, a spawn whose session record cannot be written). The check reads
``statvfs`` only: nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .model import Check, fail, ok, warn

#: below either share of the space (or of the inodes) free: FAIL, then warn
FAIL_SHARE, WARN_SHARE = 0.01, 0.05
#: and below this many bytes free, whatever the share: FAIL
FAIL_BYTES = 64 << 20


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def space_check(
    name: str, path: Path, what: str, statvfs: Callable[[str], os.statvfs_result] = os.statvfs
) -> Check:
    """``name``: the free space and inodes of the filesystem that holds ``path`` (its nearest
    existing folder); ``what`` says what needs the room, for the message."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = statvfs(str(where))
    except OSError as e:
        return warn(
            name, f"cannot read the free space of {where}: {e.strerror}", f"check that {where} is mounted."
        )
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    share = free / size if size else 1.0
    inodes = st.f_favail / st.f_files if st.f_files else 1.0  # 0 inodes in all: none counted (btrfs...)
    said = f"{where}: {_size(free)} free of {_size(size)} ({share:.1%})"
    if st.f_files:
        said += f", {st.f_favail:,} of {st.f_files:,} inodes free ({inodes:.1%})"
    fix = f"free space on that filesystem (`df -h {where}`, `df -i {where}`); {what} needs it."
    if inodes < FAIL_SHARE:
        return fail(name, f"{said}: the filesystem is out of inodes", fix)
    if free < FAIL_BYTES or share < FAIL_SHARE:
        return fail(name, f"{said}: the filesystem is full (under {_size(FAIL_BYTES)} or 1% free)", fix)
    if share < WARN_SHARE or inodes < WARN_SHARE:
        return warn(name, f"{said}: nearly full", fix)
    return ok(name, said)


def check_space(state: Path, root: Path) -> list[Check]:
    """``disk.state_dir`` and ``disk.root``."""
    return [
        space_check("disk.state_dir", state, "the hub (its database, the jobs it still has to cancel)"),
        space_check("disk.root", root, "every build, publish and spawn (session records, the audit log)"),
    ]
