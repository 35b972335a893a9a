"""Locks seen fresh, so ``hubstock status`` need not read them again.

Whether a lock is fresh is a function of the env's ``environment.yml`` and ``conda-lock.yml``
(byte for byte), the site's channels, platforms and virtual packages, and the code that
reads them. Once :func:`~.lockfile.lock_status` has found a lock fresh, the digest of all of
that is remembered in the user's cache (``$XDG_CACHE_HOME/hubstock/fresh-locks.json``, or
``~/.cache/...``; private to the user). ``status`` then answers "fresh" for the very same
inputs without parsing the spec or the lock (which costs more than the rest of ``status``
together on a large lock); anything that differs, in a byte or a setting, is read in full.
Only ``status`` takes the shortcut: ``build`` always reads the lock it builds from.

Standard library only (it runs before anything heavier is imported); a cache that cannot be
read or written is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from ... import __version__
from ...site import Site

FORMAT = 1
#: how many fresh locks are remembered (the oldest are forgotten)
KEEP = 256
#: the modules whose code decides freshness: a change to any of them (a development install)
#: makes every remembered verdict void
_DECIDERS = (
    "envspec.py",
    "requirements.py",
    "condalock.py",
    "condaspec.py",
    "lockhash.py",
    "lockfile.py",
    "lockcache.py",
)


def _cache_file() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    return Path(base) / "hubstock" / "fresh-locks.json"


def digest(site: Site, env: str) -> str | None:
    """What the lock's freshness depends on, as one sha256 (None if a file cannot be read)."""
    here = Path(__file__).parent
    try:
        spec = (site.envs_dir / env / "environment.yml").read_bytes()
        lock = (site.envs_dir / env / "conda-lock.yml").read_bytes()
        code = [(n, (st := os.stat(here / n)).st_mtime_ns, st.st_size) for n in _DECIDERS]
    except OSError:
        return None
    s = site.settings
    doc = [
        FORMAT,
        __version__,
        code,
        str(site.envs_dir),
        env,
        list(s.channels),
        list(s.platforms),
        s.virtual_packages.model_dump(mode="json"),
        hashlib.sha256(spec).hexdigest(),
        hashlib.sha256(lock).hexdigest(),
    ]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("fresh"), list):
        return []
    return [k for k in data["fresh"] if isinstance(k, str)]


def known_fresh(site: Site, env: str) -> bool:
    """Whether this very spec and lock, with these settings, were found fresh before."""
    path = _cache_file()
    key = digest(site, env)
    return path is not None and key is not None and key in _read(path)


def remember_fresh(site: Site, env: str, key: str | None) -> None:
    """Remember that the inputs with digest ``key`` (taken before they were read) make a fresh lock,
    if they are still the same now."""
    path = _cache_file()
    if path is None or key is None or digest(site, env) != key:
        return
    keys = _read(path)
    if key in keys:
        return
    keys = [*keys, key][-KEEP:]
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fresh-locks.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "fresh": keys}, f)
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
