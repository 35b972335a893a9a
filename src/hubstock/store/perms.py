"""Who may read and write what on the shared root, whatever the umask of whoever writes it.

hubstock sets the mode of everything it writes; the umask never decides:

- builds and generations: read-only for everyone, once finished (:func:`~.fs.make_read_only`);
  while a build or a generation is being made, its folder is private to the admin;
- the root's top level (``envs/``, ``generations/``): writable by the admin, readable by all;
- the package cache (``pkgs/``), uv's cache (``cache/``), the trash and the lock: the admin's
  alone (0700, the lock file 0600). Builds hard-link their files from the caches, and a hard link
  needs no access to the folder it came from; nobody else may open, let alone lock or change,
  anything in them;
- session records and the audit log: the hub's account and the admins only. By default they are
  private to their owner (``sessions/`` 0700, records and ``audit.log`` 0600). Where the hub and
  the admin are different accounts, give both a group and mark the root with it
  (``chgrp hubstock $ROOT && chmod 2755 $ROOT``): ``sessions/`` then becomes 2770 and the
  records and the audit log 0660, owned by that group.

Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

#: the root's top level, ``envs/<env>/``, ``generations/``: the admin writes, everybody reads
PUBLIC_DIR = 0o755
#: caches, staging, the trash: the admin's alone
ADMIN_DIR = 0o700
#: the root's lock file: nobody else may even open it (``flock`` needs only an open file)
LOCK_FILE = 0o600
#: a small file of hubstock's state that others may read (the lock holder's pid)
PUBLIC_FILE = 0o644


def shared_group(root: Path) -> int | None:
    """The group the hub and the admins share: the root's group, if the root is setgid."""
    try:
        st = os.stat(root)
    except OSError:
        return None
    return st.st_gid if st.st_mode & stat.S_ISGID else None


def private_modes(root: Path) -> tuple[int, int, int | None]:
    """``(dir mode, file mode, group)`` for the session records and the audit log."""
    gid = shared_group(root)
    if gid is None:
        return 0o700, 0o600, None
    return 0o2770, 0o660, gid


def admin_of(root: Path) -> int | None:
    """The admin's uid: the owner of the root. What root (the hub, usually) writes for the
    admin to read, the session records and the audit log, is given to that account."""
    try:
        return os.stat(root).st_uid
    except OSError:
        return None


def set_mode(path: Path | str, mode: int, gid: int | None = None, uid: int | None = None) -> None:
    """Give ``path`` exactly ``mode`` (and group ``gid``; and, when running as root, owner
    ``uid``) if this process may; never follows a symlink. Another account's file is left
    alone (only its owner or root may change it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or (st.st_uid != os.geteuid() and os.geteuid() != 0):
        return
    if os.geteuid() == 0 and uid is not None and st.st_uid != uid:
        os.chown(path, uid, -1, follow_symlinks=False)
    if gid is not None and st.st_gid != gid:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, gid, follow_symlinks=False)
    if stat.S_IMODE(os.lstat(path).st_mode) != mode:  # chown may have cleared set-id bits
        os.chmod(path, mode)


def make_dir(path: Path, mode: int, gid: int | None = None, uid: int | None = None) -> None:
    """Create ``path`` and set its mode (and group, owner: :func:`set_mode`), whatever the
    umask; missing parents are created readable by all (:data:`PUBLIC_DIR`)."""
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
        if d != path:
            set_mode(d, PUBLIC_DIR)
    set_mode(path, mode, gid, uid)


def admin_only(top: Path) -> None:
    """Take group and other write permission from everything under ``top`` (a cache that tools
    fill with their own modes, such as uv's lock files, 0666); ``top`` itself becomes 0700."""
    if not top.is_dir() or top.is_symlink():
        return
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            no_write_for_others(os.path.join(dirpath, name))
    set_mode(top, ADMIN_DIR)


def close_cache(top: Path) -> None:
    """Make ``top`` the admin's alone (0700) and take group and other write from its direct
    entries, without walking the tree as :func:`admin_only` does (a site's uv cache holds hundreds
    of thousands of files): for a cache whose tool makes nothing writable by others, or says
    where it does (see :func:`hubstock.admin.uv.run_uv`)."""
    if not top.is_dir() or top.is_symlink():
        return
    for name in os.listdir(top):
        no_write_for_others(os.path.join(top, name))
    set_mode(top, ADMIN_DIR)


def no_write_for_others(p: str) -> None:
    """Take group and other write (and setuid/setgid from a file) from ``p``; links are left alone."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 or (mode & 0o6000 and not stat.S_ISDIR(st.st_mode)):
        with contextlib.suppress(PermissionError):
            os.chmod(p, mode & ~0o6022)


def writable_by_others(st: os.stat_result) -> bool:
    """Whether a path with this ``lstat`` may be changed by group or other (symlinks never)."""
    return not stat.S_ISLNK(st.st_mode) and bool(stat.S_IMODE(st.st_mode) & 0o022)
