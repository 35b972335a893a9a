"""Two Linux primitives that let a build be replaced without a moment in which its path is missing.

A build's absolute path is written into its files (conda's prefix, a venv's scripts), so its
replacement must be installed *at that path*, while readers still use the old build there.
:func:`enter_private_bind` makes that possible for one process: in a mount namespace of its
own, the path shows a staging folder, so everything the process writes "at the path" lands in
the staging folder, and no other process sees a change. :func:`exchange` then swaps the two
folders in one step (``renameat2(RENAME_EXCHANGE)``): readers see the old build, then the new.

Standard library only (ctypes); Linux only, like the rest of the root.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (a killed command leaves no child
    working on)."""
    _libc().prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)


def enter_private_bind(source: Path, target: Path) -> None:
    """From now on, for this process (and its children) only, ``target`` shows ``source``.

    As root: a mount namespace of its own. Otherwise: a user namespace that maps the user to
    itself (files keep their owner) with a mount namespace in it. Raises :class:`OSError` when
    the system allows neither (unprivileged user namespaces switched off).
    """
    libc = _libc()
    if os.geteuid() == 0:
        _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        uid, gid = os.geteuid(), os.getegid()
        _check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    # nothing mounted here may reach the machine's own namespace
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    _check(
        libc.mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND, None),
        f"binding {source} on {target}",
    )


def exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one step. False when the filesystem cannot
    (``EINVAL``: some network and FUSE filesystems); then nothing was changed."""
    libc = _libc()
    try:
        renameat2 = libc.renameat2
    except AttributeError:  # a C library older than glibc 2.28
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, f"exchanging {a} and {b}: {os.strerror(err)}")
