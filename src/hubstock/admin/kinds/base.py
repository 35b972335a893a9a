"""The one interface every kind of environment implements (conda, venv, module).

An environment of the site is a folder ``envs/<env>/``. Its kind says how it is locked and
installed; everything after that is the same for every kind (:mod:`..build.build`): the build
id comes from the lock (and, for a venv, the interpreter's identity), the build is made in a
folder of its own, made read-only, its files listed, its provenance written, and the completion
marker goes last. A new kind is one module beside this one and a line in :data:`.KINDS`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ...progress import Progress
from ...site import Site
from ...store.records import Interpreter, LockedPackage, ModuleRef
from ...store.root import Root

LockState = Literal["fresh", "stale", "missing"]

#: bump when the way a build is made changes, so the same lock gets a new build id
BUILD_FORMAT = 1


@dataclass(frozen=True)
class Env:
    """One environment of the site, as its files say; ``spec`` is the kind's own reading."""

    name: str
    kind: str
    dir: Path
    lock_name: str  # the lock's file name in ``dir``
    spec: Any
    #: the Lmod modules a kernel of this env loads before it starts (a module env's modules, a venv's
    #: interpreter module)
    modules: tuple[str, ...] = ()
    #: left out (with a line saying why) where this machine lacks its interpreter or modules
    optional: bool = False
    #: the Unix groups its builds are closed to (``env.toml``'s ``groups``; everybody's when empty)
    groups: tuple[str, ...] = ()

    @property
    def lock_path(self) -> Path:
        return self.dir / self.lock_name

    @property
    def lock_rel(self) -> str:
        return f"envs/{self.name}/{self.lock_name}"


@dataclass
class BuildPlan:
    """What a fresh lock builds into: its id, its packages and what the provenance records."""

    build_id: str
    platform: str
    packages: list[LockedPackage]
    lock_bytes: bytes  # the lock as it was read: kept in the build for users to download
    lock_content_hash: dict[str, str] = field(default_factory=dict)
    lock_platform_hash: str | None = None
    interpreter: Interpreter | None = None
    modules: list[ModuleRef] = field(default_factory=list)
    state: Any = None  # the kind's own (its parsed lock...)


@dataclass
class Installed:
    """What an install put into a build, for its file list (:func:`..build.verify.build_file_list`):
    files no package declares (``rel -> sha256``), the python sources compiled, the files the
    packages declare, the sha256 the packages' own records give files (``rel -> sha256``, conda's
    ``conda-meta``), and the files already read-only (hard links of the caches' checked files,
    ``prefix/rel -> sha256``)."""

    known: dict[str, str] = field(default_factory=dict)
    compiled: set[str] = field(default_factory=set)
    declared: set[str] = field(default_factory=set)
    hashes: dict[str, str] = field(default_factory=dict)
    linked: dict[str, str] = field(default_factory=dict)


def module_refs(site: Site, loaded: list[Any]) -> list[ModuleRef]:
    """Lmod's resolved modules as records; a modulefile of the site repository's own tree is
    named relative to it (``modules/R/debian.lua``), so a lock is the same in every clone."""
    out = []
    for m in loaded:
        path = Path(m.path)
        if path.is_relative_to(site.dir):
            path = path.relative_to(site.dir)
        out.append(ModuleRef(name=m.name, full_name=m.full_name, path=path.as_posix(), sha256=m.sha256))
    return out


def build_id_of(plan_parts: dict[str, Any]) -> str:
    """A build id from what defines a build: same parts, same id."""
    blob = json.dumps({"format": BUILD_FORMAT, **plan_parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def restricted_build_id(build_id: str, groups: tuple[str, ...]) -> str:
    """The id of the build ``build_id`` closed to ``groups`` (itself when there are none): who may
    read a build is part of what it is, so closing or opening an env makes a new build."""
    if not groups:
        return build_id
    return build_id_of({"build": build_id, "groups": sorted(groups)})


class Kind(ABC):
    """A kind of environment: how it is read, locked, identified and installed."""

    name: ClassVar[str]
    lock_name: ClassVar[str]
    #: whether its builds hold a python (byte-compiled, pip packages): not a module env's
    has_prefix_python: ClassVar[bool] = True

    @abstractmethod
    def load(self, site: Site, name: str) -> Env:
        """Read and check ``envs/<name>/``: a :class:`~hubstock.errors.SpecError` naming the file."""

    @abstractmethod
    def lock_state(self, site: Site, env: Env) -> LockState:
        """Whether the lock is missing, stale (its spec changed since) or fresh."""

    @abstractmethod
    def lock(self, site: Site, env: Env, progress: Progress) -> None:
        """Write the env's lock (atomically)."""

    @abstractmethod
    def plan(self, site: Site, env: Env, platform: str) -> BuildPlan:
        """The build of the env's fresh lock on ``platform``; refuses a missing or stale lock."""

    @abstractmethod
    def plan_lock(self, site: Site, env: Env, platform: str, lock_bytes: bytes) -> BuildPlan:
        """The build of the lock ``lock_bytes`` (a kept one: whether it is still the env's lock is
        not asked), as :meth:`plan` makes it of a fresh lock."""

    @abstractmethod
    def install(
        self, site: Site, root: Root, env: Env, plan: BuildPlan, prefix: Path, progress: Progress
    ) -> Installed:
        """Install the plan into the empty ``prefix`` (the admin's alone until it is made read-only)."""
