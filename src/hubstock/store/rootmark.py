"""What makes a directory a hubstock root, and the check every command makes before it.

    $ROOT/.hubstock-id.json     the root's marker (:class:`~.records.RootMarker`), mode 0644

On a cluster the root is a shared filesystem, and the commonest way it goes wrong is that it is
not there: not mounted on this node (an empty mount point), a typo in ``--root``, another
site's root, or a read-only mount where the admin meant to write. So no command makes a root
on its own: ``hubstock init-root`` writes the marker once (:func:`init_root`), and every other
command reads it first (:func:`check_root`) and stops with one sentence when it is missing,
names another place, or the root cannot be written. The check costs one small read.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from ..errors import RootError
from .fs import atomic_write, current_user, now_iso
from .fscheck import filesystem_problem, probe
from .perms import PUBLIC_FILE
from .records import RecordError, RootMarker
from .root import Root, root_problem

ROOT_MARKER = ".hubstock-id.json"

#: what a root made by a hubstock older than the marker holds (it is adopted by ``init-root``)
_OLD_ROOT_SIGNS = ("envs", "generations")


def marker_path(path: Path) -> Path:
    return path / ROOT_MARKER


def read_marker(path: Path) -> RootMarker | None:
    """The marker of the root at ``path``; None when there is none (a :class:`RootError` when it
    is unreadable or malformed)."""
    try:
        return RootMarker.read_optional(marker_path(path))
    except RecordError as e:
        raise RootError(f"{e} (the marker of the hubstock root {path})") from None


def _same_place(path: Path, recorded: str) -> bool:
    return os.path.abspath(path) == os.path.abspath(recorded) or os.path.realpath(path) == os.path.realpath(
        recorded
    )


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_root(path: Path, *, write: bool = False) -> RootMarker:
    """The marker of the root at ``path``, or a :class:`RootError` that says in one sentence why
    ``path`` is no root to use: absent, empty (a shared filesystem not mounted), not a root,
    another root (its marker names another place), or, with ``write``, mounted read-only or not
    writable by this user. Reads one file; changes nothing."""
    init = f"`hubstock --root {path} init-root`"
    problem = root_problem(path)
    if problem:
        raise RootError(f"the root {path} {problem}; point --root (or 'root' in hubstock.toml) at the root.")
    if not path.is_dir():
        raise RootError(
            f"there is no hubstock root at {path}: if it lives on a shared filesystem, mount it on this "
            f"machine; to start a new root there, run {init}."
        )
    marker = read_marker(path)
    if marker is None:
        try:
            names = set(os.listdir(path))
        except OSError as e:
            raise RootError(
                f"the root {path} cannot be read ({e.strerror}); check its mount and modes."
            ) from None
        if not names:
            raise RootError(
                f"{path} is empty, not a hubstock root: is the shared filesystem mounted there? To start "
                f"a new root in it, run {init}."
            )
        if all(n in names for n in _OLD_ROOT_SIGNS):
            raise RootError(
                f"{path} holds a root made before hubstock marked its roots; run {init} once to mark "
                "it (nothing else changes)."
            )
        raise RootError(
            f"{path} is not a hubstock root (it has no {ROOT_MARKER}); point --root at the root, or "
            f"run {init} to make one there."
        )
    if not _same_place(path, marker.path):
        raise RootError(
            f"{path} holds the hubstock root made at {marker.path} (its {ROOT_MARKER}), not one made here: "
            f"point --root at the right root, or if this root was moved here on purpose, run "
            f"`hubstock --root {path} init-root --moved`."
        )
    if write:
        if _read_only(path):
            raise RootError(
                f"the root {path} is mounted read-only here; build, publish, rollback, gc and verify "
                "--repair change it: run them where it is mounted read-write (the admin machine)."
            )
        fs_problem = filesystem_problem(path)
        if fs_problem:
            raise RootError(f"the root {path} {fs_problem}.")
        if not os.access(path, os.W_OK):
            raise RootError(
                f"{current_user()} cannot write the root {path}; run this as its admin "
                f"({_owner(path)}), who owns it."
            )
    return marker


def _existing_parent(path: Path) -> Path:
    while not path.is_dir():
        path = path.parent
    return path


def _owner(path: Path) -> str:
    import pwd

    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def init_root(path: Path, *, moved: bool = False) -> tuple[RootMarker, bool]:
    """Make ``path`` a hubstock root (its top level and its marker) and say whether anything
    was made: a root already marked for this place is left as it is. A root marked for another
    place is adopted only when ``moved`` (it was copied or moved here on purpose)."""
    problem = root_problem(path)
    if problem:
        raise RootError(f"cannot make a root at {path}: it {problem}.")
    marker = read_marker(path) if path.is_dir() else None
    if marker is not None:
        if _same_place(path, marker.path):
            return marker, False
        if not moved:
            raise RootError(
                f"{path} holds the hubstock root made at {marker.path}; if it was moved here on purpose, "
                "run init-root again with --moved, else point --root at the right place."
            )
    where = path if path.is_dir() else _existing_parent(path)
    if _read_only(where):
        raise RootError(f"cannot make a root at {path}: it is mounted read-only here.")
    fs_problem = filesystem_problem(where)
    if fs_problem:
        raise RootError(f"cannot make a root at {path}: it {fs_problem}.")
    fs_problem = probe(where)
    if fs_problem:
        raise RootError(f"cannot make a root at {path}: its filesystem {fs_problem}.")
    root = Root(path)
    root.ensure()  # the top level, and the marker of a new root
    if marker is None:
        made = read_marker(path)
        assert made is not None
        return made, True
    with root.locked():
        new = write_marker(path, marker)
        root.audit("init-root", id=new.id, moved_from=marker.path)
    return new, True


def write_marker(path: Path, old: RootMarker | None = None) -> RootMarker:
    """Mark ``path`` as a root made here (keeping ``old``'s id and birth, for a root moved here)."""
    new = RootMarker(
        id=old.id if old else secrets.token_hex(8),
        path=str(Path(os.path.abspath(path))),
        created=old.created if old else now_iso(),
        by=old.by if old else f"{current_user()}@{socket.gethostname()}",
    )
    atomic_write(marker_path(path), new.to_json(), mode=PUBLIC_FILE)
    return new


def is_root(path: Path) -> bool:
    """Whether ``path`` is a marked root (for readers that must not make one, such as the hub)."""
    return marker_path(path).is_file()
