"""Lock files: the content hash conda-lock would compute, freshness, and build ids.

A lock is *fresh* when the content hash of the spec (with the site's channels,
platforms and compute-node virtual packages) equals the one recorded in it;
otherwise it is *stale*, and nothing builds from it.

Reading a lock and computing its content hash need no conda-lock: both are in
:mod:`hubstock.admin.lock.condalock`. Only writing a lock (``hubstock lock``) does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from ...errors import LockError
from ...site import Site
from ..kinds.base import BUILD_FORMAT
from .condalock import LockedDependency, Lockfile, read_lock_file
from .envspec import EnvSpec
from .lockcache import remember_fresh
from .lockhash import content_hashes

LockState = Literal["fresh", "stale", "missing"]

_DEFAULT_VIRTUAL: dict[str, dict[str, str | None]] = {
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
        if value is not None:
            out[name] = value
    if vp.cuda and not platform.startswith("osx"):
        out["__cuda"] = vp.cuda
    return out


@dataclass(frozen=True)
class LockSpec:
    """What a lock is made from, beyond the packages: channels and platforms."""

    channels: list[str]  # as written; conda-lock's LockMeta turns them into its Channel
    platforms: list[str]


def lock_spec_and_hashes(site: Site, spec: EnvSpec) -> tuple[LockSpec, dict[str, str]]:
    """The lock's channels and platforms, and conda-lock's content hash per platform for ``spec``."""
    platforms = list(site.settings.platforms)
    hashes = content_hashes(
        channels=spec.channels,
        specs={p: spec.platform_spec(p) for p in platforms},
        virtual_packages={p: virtual_packages(site, p) for p in platforms},
        category=spec.category,
    )
    return LockSpec(channels=list(spec.channels), platforms=platforms), hashes


def require_conda_lock() -> None:
    """Writing a lock needs conda-lock (the ``lock`` extra); say how to get it."""
    try:
        import conda_lock  # noqa: F401
    except ImportError:
        raise LockError(
            "writing a lock needs conda-lock, which is not installed here; install the lock extra "
            "with `pip install 'hubstock[lock]'` on the machine that locks."
        ) from None


def read_lock(spec: EnvSpec) -> Lockfile:
    """The parsed lock of ``spec`` (a :class:`LockError` naming what is missing or wrong)."""
    rel = f"envs/{spec.name}/conda-lock.yml"
    if not spec.lock_path.exists():
        raise LockError(
            f"{rel} is missing: env {spec.name!r} has "
            "never been locked; run `nox -s lock` (or `hubstock lock "
            f"{spec.name}`) and commit the lock."
        )
    return read_lock_file(spec.lock_path, rel)


@dataclass(frozen=True)
class LockStatus:
    state: LockState
    lock: Lockfile | None = None


def lock_status(site: Site, spec: EnvSpec, key: str | None = None) -> LockStatus:
    """Whether ``spec``'s lock is missing, stale or fresh. A fresh one is remembered
    (:mod:`.lockcache`) under ``key``: the digest of its inputs taken before ``spec`` was read."""
    if not spec.lock_path.exists():
        return LockStatus("missing")
    lock = read_lock(spec)
    _, hashes = lock_spec_and_hashes(site, spec)
    recorded = dict(lock.metadata.content_hash)
    fresh = recorded == hashes and sorted(lock.metadata.platforms) == sorted(hashes)
    if fresh and key is not None:
        remember_fresh(site, spec.name, key)
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
