"""Session records: which generation and builds a running server uses.

The pre-spawn hook writes one record per server when it starts, and the
post-stop hook removes it; ``hubstock gc`` never removes what a live record
names. A record older than ``[gc] session_max_age_hours`` is considered left
over (a hub that died without stopping its servers) and protects nothing.

    $ROOT/sessions/<user>.<server>.json
    {"user": "alice", "server": "", "generation": "0003",
     "builds": ["server/3eff17743d23e45c", "python/..."],
     "job_id": "1234", "started": "2026-11-25T21:00:00+00:00"}
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .root import Root, atomic_write, read_json

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Session:
    user: str
    server: str
    generation: str
    builds: list[str] = field(default_factory=list)  # '<env>/<build-id>'
    job_id: str | None = None
    started: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "server": self.server,
            "generation": self.generation,
            "builds": self.builds,
            "job_id": self.job_id,
            "started": self.started,
        }


def record_path(root: Root, user: str, server: str) -> Path:
    return root.sessions / f"{_SAFE.sub('_', user)}.{_SAFE.sub('_', server) or 'default'}.json"


def register(root: Root, session: Session) -> Path:
    root.sessions.mkdir(parents=True, exist_ok=True)
    path = record_path(root, session.user, session.server)
    atomic_write(path, json.dumps(session.to_json(), sort_keys=True) + "\n")
    return path


def unregister(root: Root, user: str, server: str) -> None:
    record_path(root, user, server).unlink(missing_ok=True)


def live_sessions(root: Root, max_age_hours: float) -> list[Session]:
    """Sessions whose records are younger than ``max_age_hours``."""
    if not root.sessions.is_dir():
        return []
    out = []
    cutoff = time.time() - max_age_hours * 3600
    for path in sorted(root.sessions.glob("*.json")):
        try:
            if path.stat().st_mtime < cutoff:
                continue
        except FileNotFoundError:
            continue
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("generation"), str):
            continue
        out.append(
            Session(
                user=str(data.get("user", "")),
                server=str(data.get("server", "")),
                generation=data["generation"],
                builds=[str(b) for b in (data.get("builds") or []) if isinstance(b, str)],
                job_id=data.get("job_id"),
                started=data.get("started"),
            )
        )
    return out
