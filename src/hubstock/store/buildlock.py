"""The copy of its lock that every build keeps, so users can make the same environment elsewhere.

    $ROOT/envs/<env>/<build-id>/.hubstock-lock.yml    the env's lock, as built, whatever its format

The file keeps one name whatever the env's kind; what it holds, and the name users know
it by (:data:`LOCK_NAMES`), depend on the kind the build's provenance records: a conda
env's ``conda-lock.yml``, a venv's ``pylock.toml`` (PEP 751), a module env's
``modules.lock.json``.

``hubstock build`` writes it before the completion marker (:func:`write_lock_copy`).
Readers (the hub's "Stock environments" page) get it only through :func:`read_lock_copy`,
which takes an env and a build id (names from a generation's manifest, never a path
from a user) and refuses anything that is not a regular file inside that build under
the root: a name with ``/`` or ``..``, a symlink, a build directory that resolves
elsewhere.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .fs import atomic_write
from .root import Root

LOCK_COPY = ".hubstock-lock.yml"
#: the name of the lock an env of each kind keeps in the site (and users download)
LOCK_NAMES = {"conda": "conda-lock.yml", "venv": "pylock.toml", "module": "modules.lock.json"}
#: what an env name or a build id may look like (no separators, no leading dot)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: a lock larger than this is not served (a real one is well under a few MB)
MAX_LOCK_BYTES = 64 << 20


def write_lock_copy(prefix: Path, data: bytes) -> None:
    """Keep ``data`` (the env's lock, see :data:`LOCK_NAMES`) in the build at ``prefix``; world-readable."""
    atomic_write(prefix / LOCK_COPY, data, mode=0o644)


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def lock_copy_path(root: Root, env: str, build_id: str) -> Path | None:
    """The lock copy of build ``env/build_id``, or None when it is missing or not to be trusted.

    Only a regular file (not a symlink) directly in a build directory whose real path is
    that build under the root's real path counts.
    """
    if not (_NAME_RE.match(env) and _NAME_RE.match(build_id)):
        return None
    real_root = os.path.realpath(root.path)
    build = root.build(env, build_id)
    if os.path.islink(build) or os.path.realpath(build) != os.path.join(real_root, "envs", env, build_id):
        return None
    path = build / LOCK_COPY
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    real = os.path.realpath(path)
    if not _inside(real, real_root) or real != os.path.join(real_root, "envs", env, build_id, LOCK_COPY):
        return None
    return Path(real)


def read_lock_copy(root: Root, env: str, build_id: str) -> bytes | None:
    """The bytes of the build's lock copy (see :func:`lock_copy_path`), or None.

    The file is opened without following symlinks and checked again once open, so a
    swap between the check and the read gives nothing rather than another file.
    """
    path = lock_copy_path(root, env, build_id)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_LOCK_BYTES:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
