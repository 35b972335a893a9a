"""File operations that keep the shared root consistent: atomic writes and renames, removal.

Standard library only. Readers of the root never see a half-written file or a
missing link: files are written to a temporary name and renamed, links are
replaced with one rename, and trees are renamed away before they are deleted.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Container
from datetime import UTC, datetime
from pathlib import Path

from ..errors import DiskFullError, is_disk_full


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
    """Write ``path`` so that readers see the old content or the new, never a part.

    Its mode is ``mode`` whatever the umask. A full filesystem is a :class:`DiskFullError`
    (one sentence: which filesystem, the space left, the size of the file), and the old
    content stays.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with open(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_disk_full(e):
            raise DiskFullError.at(path, f"writing {path}", len(raw)) from None
        raise
    fsync_dir(path.parent)


def read_regular(path: Path, limit: int = 1 << 24) -> bytes | None:
    """The content of ``path`` if it is a regular file, else None, without ever blocking:
    a FIFO, a device or a symlink someone put there is skipped, not opened for reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while (chunk := os.read(fd, 1 << 16)) and limit > 0:
            chunks.append(chunk)
            limit -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` with one rename: readers never see it missing."""
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_disk_full(e):
            raise DiskFullError.at(link.parent, f"pointing {link} at {target}", len(target)) from None
        raise
    fsync_dir(link.parent)


def remove_tree(path: Path, trash: Path) -> None:
    """Remove ``path``: first renamed away (so it vanishes at once), then deleted."""
    doomed = move_to_trash(path, trash)
    if doomed is not None:
        delete_tree(doomed)


def move_to_trash(path: Path, trash: Path) -> Path | None:
    """Rename ``path`` into ``trash`` (the admin's alone): gone at once for readers, and still
    there to be renamed back. Returns where it went (None if it did not exist)."""
    if not path.exists() and not path.is_symlink():
        return None
    if not trash.is_dir():
        trash.mkdir(parents=True, exist_ok=True)
        os.chmod(trash, 0o700)
    doomed = trash / f"{path.name}.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, doomed)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # a folder mounted on its own filesystem: out of the way beside it instead
        doomed = path.with_name(f".{path.name}.removing-{uuid.uuid4().hex[:8]}")
        os.rename(path, doomed)
    return doomed


def delete_tree(path: Path) -> None:
    """Delete ``path`` (a file, a link or a tree, read-only or not)."""
    _rmtree_writable(path)


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


def make_read_only(
    top: Path,
    seen: Callable[[str, os.stat_result], None] | None = None,
    already: Container[str] = frozenset(),
) -> None:
    """The one rule for what hubstock publishes (builds and generations): nobody may write,
    everybody may read; directories and executables stay searchable and runnable.

    Symlinks are left alone (their mode means nothing). Files hard-linked from the
    package cache share their mode with it, and that is intended: the cache must not
    be writable by users either. ``seen`` gets every path below ``top`` with its ``lstat``
    (as it was before), so a caller that needs the whole tree walks it once; ``already``
    names files (paths as ``top/...``) the caller knows are read-only (hard links of files it
    checked in a read-only cache): they are not looked at, nor given to ``seen``.
    """
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if path in already:
                continue
            st = os.lstat(path)
            _read_only(path, st)
            if seen is not None:
                seen(path, st)
    _read_only(os.fspath(top))


def _read_only(p: str, st: os.stat_result | None = None) -> None:
    st = st or os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    want = (mode & ~0o7222) | 0o444
    if stat.S_ISDIR(st.st_mode) or mode & 0o100:
        want |= 0o111
    if want != mode:
        os.chmod(p, want)


#: how often a reader asks again for a link that a network filesystem answered badly
LINK_TRIES = 8


def read_link(path: str | os.PathLike[str]) -> str | None:
    """What the symbolic link ``path`` points at; None when there is no such link.

    For the links that are swapped by rename while others read them (``current``). On a network
    filesystem a reader on another client can get ESTALE, or even an empty string, for a link
    being swapped (GlusterFS over FUSE, measured: up to a few percent of reads); it asks again,
    with a short pause growing from 1 ms, and gets the old link or the new one. Local disks
    answer at once."""
    for attempt in range(LINK_TRIES):
        try:
            target = os.readlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno != errno.ESTALE or attempt == LINK_TRIES - 1:
                if e.errno == errno.EINVAL:  # not a link
                    return None
                raise
            target = ""
        if target:
            return target
        time.sleep(0.001 * 2**attempt)
    raise OSError(errno.ESTALE, "the filesystem keeps answering an empty link", os.fspath(path))


def link_target(path: str | os.PathLike[str]) -> str:
    """What the symbolic link ``path`` points at, as written (for integrity checks)."""
    return os.readlink(path)
