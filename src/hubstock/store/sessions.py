"""Session records: which generation and builds a running server uses.

The pre-spawn hook writes one :class:`~hubstock.store.records.SessionRecord` per
server when it starts, and the post-stop hook removes it; ``hubstock gc`` never
removes what a live record names. A record older than ``[gc] session_max_age_hours``
is considered left over (a hub that died without stopping its servers) and
protects nothing.

    $ROOT/sessions/<user>.<server>.json
"""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

from .fs import atomic_write, read_regular
from .perms import admin_of, make_dir, private_modes, set_mode
from .records import RecordError, SessionRecord
from .root import Root

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def record_path(root: Root, user: str, server: str) -> Path:
    return root.sessions / f"{_SAFE.sub('_', user)}.{_SAFE.sub('_', server) or 'default'}.json"


def register(root: Root, session: SessionRecord) -> Path:
    """Write ``session``'s record, readable by the hub's account and the admins only (see
    :mod:`.perms`: 0600 in a 0700 folder, or 0660 in a 2770 folder of the root's shared group;
    written by root, both belong to the root's owner, the admin)."""
    dmode, fmode, gid = private_modes(root.path)
    uid = admin_of(root.path)
    make_dir(root.sessions, dmode, gid, uid)
    path = record_path(root, session.user, session.server)
    atomic_write(path, session.to_json(), mode=fmode)
    set_mode(path, fmode, gid, uid)
    return path


def read_session(root: Root, user: str, server: str) -> SessionRecord | None:
    """The server's record, if there is a readable one (a regular file, not followed through a link)."""
    path = record_path(root, user, server)
    data = read_regular(path)
    if data is None:
        return None
    try:
        return SessionRecord.from_text(data, str(path))
    except RecordError:
        return None


def unregister(root: Root, user: str, server: str) -> None:
    record_path(root, user, server).unlink(missing_ok=True)


def live_sessions(root: Root, max_age_hours: float) -> list[SessionRecord]:
    """Sessions whose records are younger than ``max_age_hours``.

    Anything that is not a regular file is skipped without blocking: it is checked with
    ``lstat`` first, and opened non-blocking without following links, so a FIFO or a link
    put there in between is skipped too. A record that cannot be read is skipped as well.
    """
    if not root.sessions.is_dir():
        return []
    out = []
    cutoff = time.time() - max_age_hours * 3600
    for path in sorted(root.sessions.glob("*.json")):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_mtime < cutoff:
            continue
        data = read_regular(path)
        if data is None:
            continue
        try:
            out.append(SessionRecord.from_text(data, str(path)))
        except RecordError:
            continue
    return out
