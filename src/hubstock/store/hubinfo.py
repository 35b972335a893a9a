"""What the hub node runs, told to the machines that publish: the hub's versions on the root.

    $ROOT/sessions/hub-versions     (JSON, as the session records: the hub's and the admins')

Written when the hub loads its configuration (:func:`~hubstock.hub.config.apply_site`; the
doctor, which loads it the same way on the hub node, writes the same), only when the root
exists (is marked: ``store.rootmark``) and only if something changed. Read by ``hubstock publish``, which refuses a server build
whose JupyterHub is not the hub's major.minor: the check the doctor makes on the hub node, made
before the generation is published, as far as the publishing machine can tell.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
from pathlib import Path

from .fs import atomic_write, read_regular
from .perms import admin_of, make_dir, private_modes, set_mode
from .records import HubVersions, RecordError
from .root import Root
from .rootmark import is_root

HUB_VERSIONS_FILE = "hub-versions"  # not *.json: the session records are

_VERSION_LINE = re.compile(r"^Version:\s*(\S+)\s*$", re.M)


def hub_versions_path(root: Root) -> Path:
    return root.sessions / HUB_VERSIONS_FILE


def note_hub_versions(root: Root, record: HubVersions) -> bool:
    """Write ``record`` unless the root already says the same (apart from when); never makes the
    root. Whether it wrote."""
    if not is_root(root.path):  # an unmounted root's mount point is no place for it
        return False
    old = read_hub_versions(root)
    if old is not None and old.model_copy(update={"written": record.written}) == record:
        return False
    dmode, fmode, gid = private_modes(root.path)
    make_dir(root.sessions, dmode, gid, admin_of(root.path))
    path = hub_versions_path(root)
    atomic_write(path, record.to_json(), mode=fmode)
    set_mode(path, fmode, gid, admin_of(root.path))
    return True


def read_hub_versions(root: Root) -> HubVersions | None:
    """What the hub last said; None when it said nothing yet, or nothing readable."""
    data = read_regular(hub_versions_path(root))
    if data is None:
        return None
    with contextlib.suppress(RecordError):
        return HubVersions.from_text(data, str(hub_versions_path(root)))
    return None


def installed_version(prefix: Path, dist: str) -> str | None:
    """The version of ``dist`` in an environment's prefix: from its pip dist-info, else conda-meta."""
    pattern = f"{dist.replace('-', '_')}-*.dist-info"
    for info in sorted(prefix.glob(f"lib/python3*/site-packages/{pattern}")):
        if not info.name.lower().startswith(dist.replace("-", "_").lower() + "-"):
            continue
        with contextlib.suppress(OSError):
            if m := _VERSION_LINE.search((info / "METADATA").read_text(errors="replace")):
                return m.group(1)
    for meta in sorted(prefix.glob(f"conda-meta/{dist}-*.json")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(meta.read_text())
            if data.get("name") == dist and isinstance(data.get("version"), str):
                return str(data["version"])
    return None


def major_minor(version: str) -> str:
    """``"5.2.1"`` -> ``"5.2"``."""
    return ".".join(re.split(r"[.+-]", version)[:2])


def version_here(dist: str) -> str | None:
    """The version of ``dist`` installed beside this hubstock (on the hub node: the hub's)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
