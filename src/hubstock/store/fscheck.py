"""What hubstock needs of the filesystem that holds the root, and the check that it has it.

hubstock needs, on every node that writes the root:
  - ``flock`` that excludes across clients (the root's lock: two builders on two nodes),
  - hard links within the root (the package cache, the wheel cache: builds share files),
  - symbolic links, replaced atomically by ``rename`` (``current``; readers retry a network
    filesystem's stale answers, :func:`~.fs.read_link`),
  - ``O_EXCL`` creation and ``fsync`` (records, markers).
Local disks, GPFS, GlusterFS, NFS v4 (and v3 with the lock manager) and Lustre mounted with
``flock`` have them. These do not: NFS mounted ``nolock`` or ``local_lock=flock|all`` (each node
locks alone), Lustre mounted ``localflock`` (the same) or without ``flock`` (flock fails), and
sshfs (locks stay on each client; hard links are not what they seem). A root there is refused by
the commands that write it (:func:`filesystem_problem`, from the mount table), and
``hubstock init-root`` also tries the operations themselves (:func:`probe`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo: where, what, and its options (mount and superblock)."""

    point: str
    fstype: str
    options: frozenset[str]

    def option(self, name: str) -> str | None:
        """The value of ``name=value`` (or ``""`` for a bare ``name``), None without it."""
        for opt in self.options:
            key, _, value = opt.partition("=")
            if key == name:
                return value
        return None


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 2:
            continue
        opts = set(fields[5].split(","))
        if len(tail) >= 3:
            opts |= set(tail[2].split(","))  # the superblock's options (NFS and Lustre put theirs there)
        mounts.append(Mount(fields[4].replace("\\040", " "), tail[0], frozenset(opts)))
    return mounts


def mount_of(path: Path, mountinfo: str | None = None) -> Mount | None:
    """The mount that holds ``path`` (the longest mount point above its real path)."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as f:
                mountinfo = f.read()
        except OSError:
            return None
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in parse_mountinfo(mountinfo):
        top = m.point.rstrip("/") or "/"
        if (top == "/" or real == top or real.startswith(top + "/")) and (
            best is None or len(top) >= len(best.point.rstrip("/") or "/")
        ):
            best = m
    return best


def semantics_problem(mount: Mount) -> str | None:
    """Why a root on ``mount`` would not work, from its type and options (None when it would)."""
    fstype = mount.fstype
    if fstype in ("nfs", "nfs4"):
        if mount.option("nolock") is not None:
            return (
                f"is on NFS mounted with nolock ({mount.point}), so each node locks alone and two builders "
                "could write it at once; mount it with locks (NFS v4, or v3 with lock)"
            )
        local = mount.option("local_lock")
        if local in ("flock", "all"):
            return (
                f"is on NFS mounted with local_lock={local} ({mount.point}), so flock locks stay on each node; "
                "mount it with local_lock=none"
            )
    if fstype == "lustre":
        if mount.option("localflock") is not None:
            return (
                f"is on Lustre mounted with localflock ({mount.point}), so flock locks stay on each node; "
                "mount it with -o flock"
            )
        if mount.option("flock") is None:
            return f"is on Lustre mounted without flock ({mount.point}), where flock fails; mount it with -o flock"
    if fstype in ("fuse.sshfs", "sshfs"):
        return (
            f"is on sshfs ({mount.point}), whose locks stay on each client and whose hard links are not "
            "real ones; put the root on the cluster's shared filesystem (NFS, GPFS, Lustre, GlusterFS...)"
        )
    return None


def filesystem_problem(path: Path) -> str | None:
    """Why the filesystem holding ``path`` cannot hold a root, from the mount table (cheap: one
    read of /proc/self/mountinfo); None when it can, or cannot be told."""
    mount = mount_of(path)
    return semantics_problem(mount) if mount is not None else None


def probe(path: Path) -> str | None:
    """Try what a root needs, in a scratch folder inside ``path`` (removed after): hard links,
    a symbolic link replaced by rename, O_EXCL, fsync and flock. Why it failed, or None."""
    scratch = path / f".hubstock-probe-{secrets.token_hex(4)}"
    step = "making a folder"
    try:
        scratch.mkdir()
        step = "creating a file with O_EXCL"
        fd = os.open(scratch / "a", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            step = "writing and fsyncing a file"
            os.write(fd, b"hubstock\n")
            os.fsync(fd)
            step = "taking a flock lock"
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        step = "making a hard link"
        os.link(scratch / "a", scratch / "b")
        if (
            os.stat(scratch / "a").st_nlink != 2
            or os.stat(scratch / "a").st_ino != os.stat(scratch / "b").st_ino
        ):
            return "does not keep hard links (a linked file is not the same file); builds share files by hard links"
        step = "replacing a symbolic link by rename"
        os.symlink("a", scratch / "cur")
        os.symlink("b", scratch / "next")
        os.rename(scratch / "next", scratch / "cur")
        if os.readlink(scratch / "cur") != "b":
            return "does not replace a symbolic link by rename; `current` is switched that way"
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        if e.errno in (errno.EROFS,):
            return "is read-only here"
        return f"failed {step} ({why}); hubstock needs it on the root's filesystem"
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    return None
