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

from .fs import atomic_write
from .records import RecordError, SessionRecord
from .root import Root

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def record_path(root: Root, user: str, server: str) -> Path:
    return root.sessions / f"{_SAFE.sub('_', user)}.{_SAFE.sub('_', server) or 'default'}.json"


def register(root: Root, session: SessionRecord) -> Path:
    root.sessions.mkdir(parents=True, exist_ok=True)
    path = record_path(root, session.user, session.server)
    atomic_write(path, session.to_json())
    return path


def unregister(root: Root, user: str, server: str) -> None:
    record_path(root, user, server).unlink(missing_ok=True)


def live_sessions(root: Root, max_age_hours: float) -> list[SessionRecord]:
    """Sessions whose records are younger than ``max_age_hours``.

    Anything that is not a regular file is skipped without being opened (a FIFO
    would block the reader), and so is a record that cannot be read.
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
        try:
            out.append(SessionRecord.read(path))
        except RecordError:
            continue
    return out
