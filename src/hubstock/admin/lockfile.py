"""Lock files: the content hash conda-lock would compute, freshness, and build ids.

A lock is *fresh* when the content hash of the spec (with the site's channels,
platforms and compute-node virtual packages) equals the one recorded in it;
otherwise it is *stale*, and nothing builds from it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml

from ..errors import LockError
from ..site import Site
from .envspec import EnvSpec

if TYPE_CHECKING:
    from conda_lock.lockfile.v2prelim.models import LockedDependency, Lockfile
    from conda_lock.models.lock_spec import LockSpecification

#: bump when the way a build is made changes, so the same lock gets a new build id
BUILD_FORMAT = 1
LockState = Literal["fresh", "stale", "missing"]

_DEFAULT_VIRTUAL = {
    "linux-64": {"__unix": "0", "__linux": None, "__glibc": None, "__archspec": "1 x86_64"},
    "linux-aarch64": {"__unix": "0", "__linux": None, "__glibc": None, "__archspec": "1 aarch64"},
    "linux-ppc64le": {"__unix": "0", "__linux": None, "__glibc": None, "__archspec": "1 ppc64le"},
    "osx-64": {"__unix": "0", "__archspec": "1 x86_64", "__osx": "11.0"},
    "osx-arm64": {"__unix": "0", "__archspec": "1 arm64", "__osx": "11.0"},
    "win-64": {"__win": "0", "__archspec": "1 x86_64"},
}


def virtual_packages(site: Site, platform: str) -> dict[str, str]:
    """The compute nodes' virtual packages for ``platform``: name -> 'version[ build]'."""
    vp = site.settings.virtual_packages
    out: dict[str, str] = {}
    for name, value in _DEFAULT_VIRTUAL[platform].items():
        if name == "__linux":
            value = vp.linux
        elif name == "__glibc":
            value = vp.glibc
        out[name] = value  # type: ignore[assignment]
    if vp.cuda and not platform.startswith("osx"):
        out["__cuda"] = vp.cuda
    return out


def lock_spec_and_hashes(site: Site, spec: EnvSpec) -> tuple[LockSpecification, dict[str, str]]:
    """conda-lock's own lock specification and content hash per platform for ``spec``."""
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.src_parser import make_lock_spec
    from conda_lock.virtual_package import virtual_package_repo_from_specification

    platforms = list(site.settings.platforms)
    with tempfile.TemporaryDirectory(prefix="hubstock-hash-") as tmp:
        mapping = Path(tmp, "pypi-mapping.json")  # local and empty: never fetched
        mapping.write_text("{}")
        vspec = Path(tmp, "virtual-packages.yml")
        vspec.write_text(
            yaml.safe_dump({"subdirs": {p: {"packages": virtual_packages(site, p)} for p in platforms}})
        )
        lock_spec = make_lock_spec(
            src_files=[spec.path],
            channel_overrides=spec.channels,
            platform_overrides=platforms,
            mapping_url=str(mapping),
        )
        vpr = virtual_package_repo_from_specification(vspec)
        hashes = compute_content_hashes(lock_spec, vpr)
    return lock_spec, dict(hashes)


def read_lock(spec: EnvSpec) -> Lockfile:
    """The parsed lock of ``spec`` (a :class:`LockError` if missing or unreadable)."""
    from conda_lock.lockfile import parse_conda_lock_file

    if not spec.lock_path.exists():
        raise LockError(
            f"envs/{spec.name}/conda-lock.yml is missing: env {spec.name!r} has "
            "never been locked; run `nox -s lock` (or `hubstock lock "
            f"{spec.name}`) and commit the lock."
        )
    try:
        return parse_conda_lock_file(spec.lock_path)
    except Exception as e:  # conda-lock raises pydantic/yaml errors of several kinds
        raise LockError(
            f"envs/{spec.name}/conda-lock.yml cannot be read ({type(e).__name__}); "
            f"regenerate it with `hubstock lock {spec.name} --update`."
        ) from None


@dataclass(frozen=True)
class LockStatus:
    state: LockState
    lock: Lockfile | None = None


def lock_status(site: Site, spec: EnvSpec) -> LockStatus:
    """Whether ``spec``'s lock is missing, stale or fresh."""
    if not spec.lock_path.exists():
        return LockStatus("missing")
    lock = read_lock(spec)
    _, hashes = lock_spec_and_hashes(site, spec)
    recorded = dict(lock.metadata.content_hash)
    fresh = recorded == hashes and sorted(lock.metadata.platforms) == sorted(hashes)
    return LockStatus("fresh" if fresh else "stale", lock)


def require_fresh_lock(site: Site, spec: EnvSpec) -> Lockfile:
    """The lock of ``spec``; refuses a missing or stale one, naming the fix."""
    st = lock_status(site, spec)
    if st.state == "missing":
        read_lock(spec)  # raises the 'missing' message
    if st.state == "stale":
        raise LockError(
            f"envs/{spec.name}/conda-lock.yml is stale: envs/{spec.name}/environment.yml or the "
            "site's channels, platforms or virtual packages changed since it was locked; run "
            f"`nox -s lock` (or `hubstock lock {spec.name}`) and commit the new lock."
        )
    assert st.lock is not None
    return st.lock


def packages_for(lock: Lockfile, platform: str) -> list[LockedDependency]:
    return [p for p in lock.package if p.platform == platform]


def build_id(lock: Lockfile, platform: str) -> str:
    """A build id derived only from the locked packages: same lock, same id."""
    pkgs = sorted(
        (p.manager, p.name, p.version, p.build or "", p.url, p.hash.sha256 or "")
        for p in packages_for(lock, platform)
    )
    if not pkgs:
        raise LockError(
            f"the lock has no packages for platform {platform}; add it to 'platforms' in "
            "hubstock.toml and lock again."
        )
    blob = json.dumps({"format": BUILD_FORMAT, "platform": platform, "packages": pkgs})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
