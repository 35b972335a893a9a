"""The records that cross wings through the shared root, each a versioned pydantic model.

One owner: only this module spells their keys, and only ``store`` reads and writes
their files. Every record carries ``schema`` (an int). A record written by an older
hubstock without it is read as schema 1; a record of a *newer* schema than this
hubstock knows is refused with :class:`RecordError`, never misread.

- :class:`BuildProvenance`   ``$ROOT/envs/<env>/<build-id>/.hubstock-build.json``
- :class:`GenerationManifest` ``$ROOT/generations/<gen>/manifest.json``
- :class:`SessionRecord`     ``$ROOT/sessions/<user>.<server>.json``
- :class:`GcIntent`          ``$ROOT/generations/.gc-intent.json`` (while a gc runs)
- :class:`AuditLine`         one line of ``$ROOT/audit.log``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from ..errors import HubstockError


class RecordError(HubstockError):
    """A record on the root is unreadable, malformed, or of a newer schema than this hubstock knows."""


class Record(BaseModel):
    """A versioned record: ``schema`` says which shape it has."""

    # built at first use, not at import: a command pays only for the records it reads
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)

    #: the schema this hubstock writes, and the newest it reads
    SCHEMA: ClassVar[int] = 1
    #: what the record is, for messages ("build provenance")
    WHAT: ClassVar[str] = "record"

    schema_version: int = Field(default=1, alias="schema", ge=1)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=1, sort_keys=True) + "\n"

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True) + "\n"

    @classmethod
    def from_data(cls, data: Any, source: str) -> Self:
        """The record in ``data`` (parsed JSON) read from ``source`` (a path, for messages)."""
        if not isinstance(data, dict):
            raise RecordError(f"{source}: is not a {cls.WHAT} (not a JSON object); remove or restore it.")
        schema = data.get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise RecordError(f"{source}: its schema {schema!r} is not a number; remove or restore it.")
        if schema > cls.SCHEMA:
            raise RecordError(
                f"{source}: this {cls.WHAT} has schema {schema}, newer than this hubstock understands "
                f"({cls.SCHEMA}); upgrade hubstock on this machine to the version that wrote it."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise RecordError(
                f"{source}: this {cls.WHAT} is malformed at {where!r} ({err['msg']}); remove or restore it."
            ) from None

    @classmethod
    def from_text(cls, text: str | bytes, source: str) -> Self:
        try:
            data = json.loads(text)
        except ValueError:
            raise RecordError(f"{source}: is not valid JSON; remove or restore it.") from None
        return cls.from_data(data, source)

    @classmethod
    def read(cls, path: Path) -> Self:
        """Read ``path``: a :class:`RecordError` when it is unreadable, malformed or too new."""
        try:
            text = path.read_bytes()
        except OSError as e:
            raise RecordError(f"{path}: cannot be read ({e.strerror}).") from None
        return cls.from_text(text, str(path))

    @classmethod
    def read_optional(cls, path: Path) -> Self | None:
        """The record in ``path``, or None when the file does not exist (a :class:`RecordError`
        when it cannot be read: in a folder closed to this account, say)."""
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RecordError(f"{path}: cannot be read ({e.strerror}).") from None
        return cls.from_text(text, str(path))


# ---------------------------------------------------------------------------------------------------------
# builds


class LockedPackage(BaseModel):
    """One package a build installed, as its lock named it."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    manager: str  # "conda" or "pip"
    name: str
    version: str
    build: str | None = None
    url: str
    sha256: str


class ModuleRef(BaseModel):
    """An Lmod module as it resolved when locking or building: its modulefile and that file's sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str  # as the env or kernel asks for it ("R/4.2")
    full_name: str  # what Lmod loaded ("R/4.2")
    path: str  # the modulefile
    sha256: str


class Interpreter(BaseModel):
    """The site interpreter a venv build runs on: its identity is part of the build id."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    path: str  # the resolved executable
    version: str  # the full version, "3.11.2"
    sha256: str  # of the executable
    module: str | None = None  # the Lmod module that provides it, if any


class _Restrictable(BaseModel):
    """A record with ``groups`` (the Unix groups it is restricted to), written only when it has
    some: a record of everybody's is byte for byte what an older hubstock wrote and reads."""

    @model_serializer(mode="wrap")
    def _drop_empty_groups(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not data.get("groups"):
            data.pop("groups", None)
        return data


class BuildProvenance(_Restrictable, Record):
    """Where a build came from: written by ``hubstock build`` before its completion marker.

    Schema 2 adds the env's kind, the interpreter of a venv build and the modules of a
    module env (or of a venv's interpreter). Schema 3 is a build closed to ``groups``
    (``store.access``); it is written only for such a build."""

    SCHEMA: ClassVar[int] = 3
    #: the schema of a restricted build's record: an older hubstock refuses it rather than misread it
    RESTRICTED_SCHEMA: ClassVar[int] = 3
    WHAT: ClassVar[str] = "build provenance"

    schema_version: int = Field(default=2, alias="schema", ge=1)
    build_id: str
    env: str
    kind: Literal["conda", "venv", "module"] = "conda"
    platform: str
    lock_content_hash: dict[str, str] = Field(default_factory=dict)
    lock_platform_hash: str | None = None
    packages: list[LockedPackage] = Field(default_factory=list)
    interpreter: Interpreter | None = None
    modules: list[ModuleRef] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)  # its top folder is theirs alone
    created: str
    builder: str


# ---------------------------------------------------------------------------------------------------------
# users' own environments (hubstock.personal)


class PersonalBase(BaseModel):
    """The stock kernel a personal environment layers on, as it was published when it was asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    kernel: str
    display_name: str
    env: str
    build: str
    prefix: str
    generation: str
    #: the stock kernel's kernel.json, as published (argv, env...)
    spec: dict[str, Any]
    check: str = ""
    #: the published kernel's folder (its logos and resources are copied beside the personal kernel)
    kernel_dir: str = ""


class PersonalSpec(Record):
    """What a user asked for: written by ``hubstock mine create`` before the build job is submitted."""

    SCHEMA: ClassVar[int] = 1
    WHAT: ClassVar[str] = "personal environment"

    name: str
    user: str
    base: PersonalBase
    requirements: list[str]
    created: str


class PersonalState(Record):
    """Where a personal environment's build stands; written by the CLI and by the build job."""

    SCHEMA: ClassVar[int] = 1
    WHAT: ClassVar[str] = "personal build state"

    state: Literal["submitted", "running", "ready", "failed"]
    step: str = ""  # what the job is doing ("locking", "installing 3 packages"...)
    job_id: str | None = None
    build: str | None = None  # the build the kernel uses (ready), or being made
    message: str = ""  # a failure's one sentence
    updated: str


class PersonalBuild(Record):
    """A personal build's provenance, beside its files; written before its completion marker."""

    SCHEMA: ClassVar[int] = 1
    WHAT: ClassVar[str] = "personal build provenance"

    build_id: str
    name: str
    user: str
    base_env: str
    base_build: str
    base_prefix: str
    packages: list[LockedPackage]  # what the build installed itself (the stock's not repeated)
    files: dict[str, str] = Field(default_factory=dict)  # relative path -> sha256 (symlinks: '-> target')
    size: int = 0  # bytes of its own files
    created: str
    builder: str


# ---------------------------------------------------------------------------------------------------------
# generations


class ManifestBuild(BaseModel):
    """A complete build that a generation uses."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    env: str
    build: str
    prefix: str
    lock_hash: str = ""
    created: str | None = None


class KernelEntry(_Restrictable, BaseModel):
    """A kernel a generation publishes; ``groups``: the Unix groups it is for (everybody's when
    empty), published under ``restricted/<name>/`` closed to them (``store.generations``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str
    display_name: str
    language: str | None = None
    env: str
    build: str
    lock_hash: str = ""
    pinned_of: str | None = None  # for '<name>-<build8>': the stock kernel it was
    groups: list[str] = Field(default_factory=list)


class GenerationManifest(Record):
    """What a published generation holds: written last into the staged generation. Schema 2 has
    kernels for some groups only (``KernelEntry.groups``); it is written only for such a generation."""

    SCHEMA: ClassVar[int] = 2
    RESTRICTED_SCHEMA: ClassVar[int] = 2
    WHAT: ClassVar[str] = "generation manifest"

    generation: str
    digest: str
    created: str
    by: str
    default_kernel: str
    server: ManifestBuild | None = None
    builds: dict[str, ManifestBuild] = Field(default_factory=dict)
    kernels: list[KernelEntry] = Field(default_factory=list)

    def build_keys(self) -> set[str]:
        """``<env>/<build-id>`` of every build the generation uses."""
        keys = {f"{k.env}/{k.build}" for k in self.kernels}
        keys |= {f"{b.env}/{b.build}" for b in self.builds.values()}
        if self.server:
            keys.add(f"{self.server.env}/{self.server.build}")
        return keys


# ---------------------------------------------------------------------------------------------------------
# sessions and the audit log


class SessionRecord(Record):
    """A running server: which generation and builds it uses (so gc keeps them)."""

    WHAT: ClassVar[str] = "session record"

    user: str
    server: str = ""
    generation: str
    builds: list[str] = Field(default_factory=list)  # '<env>/<build-id>'
    job_id: str | None = None
    started: str | None = None


class GcIntent(Record):
    """The generations a running ``hubstock gc`` is about to remove (``store.generations``): a
    pre-spawn hook that pinned one of them pins the current generation instead."""

    WHAT: ClassVar[str] = "gc intent"

    generations: list[str] = Field(default_factory=list)
    since: str
    by: str


class HubVersions(Record):
    """What the hub node runs, as the hub said when it last started (``store.hubinfo``): so that
    ``hubstock publish``, on another machine, can refuse a server build the hub cannot talk to."""

    WHAT: ClassVar[str] = "record of the hub's versions"

    versions: dict[str, str]  # distribution -> version, as installed beside the hub
    host: str
    written: str


class RootMarker(Record):
    """What makes a directory a hubstock root (``store.rootmark``): written once by
    ``hubstock init-root``, read by every command before it touches the root, so that an
    unmounted shared filesystem, a typo or another site's root is refused, never filled."""

    WHAT: ClassVar[str] = "root marker"

    id: str  # a random id, the same on every node that mounts this root
    path: str  # where the root was made (and where its kernelspecs say its builds are)
    created: str
    by: str  # user@host that made it


class PendingCancel(BaseModel):
    """One job the hub wants gone and could not cancel yet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    cmd: str  # the cancel command, as the spawner formatted it
    gone: str = ""  # what the scheduler says of a job that no longer exists (a regex)
    since: str  # when the hub first wanted it gone
    why: str = ""  # "stopped during an outage", "submitted before the hub restarted"...


class PendingCancels(Record):
    """The hub's jobs still to cancel (:class:`~hubstock.hub.reaper.Reaper`), kept in its
    ``state_dir`` so that a restart of the hub forgets none of them."""

    WHAT: ClassVar[str] = "list of jobs to cancel"

    jobs: list[PendingCancel] = Field(default_factory=list)


class AuditLine(Record):
    """One line of the audit log: what happened, when, by whom; the rest depends on the action."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, defer_build=True)
    WHAT: ClassVar[str] = "audit line"

    time: str
    action: str
    by: str

    @property
    def fields(self) -> dict[str, Any]:
        """The action's own fields (``generation``, ``job_id``...)."""
        return dict(self.model_extra or {})


# ---------------------------------------------------------------------------------------------------------
# integrity: the package cache and the builds


class CacheSeal(Record):
    """An extracted package in the cache that hubstock checked against its verified archive.

    Written into the package's folder after every file matched; an extracted package
    without a seal, or that no longer matches it, is never linked into a build.
    """

    WHAT: ClassVar[str] = "package cache seal"

    package: str  # '<name>-<version>-<build>'
    archive_sha256: str
    #: sha256 of every file under info/ (paths.json included: what the package declares)
    info: dict[str, str] = Field(default_factory=dict)
    #: the target of every symbolic link the package declares
    links: dict[str, str] = Field(default_factory=dict)
    #: ``"<inode>:<size>:<mtime_ns>"`` of every file and folder below the package's own folder,
    #: taken when it was sealed: what the check before each install compares (empty: a full re-hash)
    stat: dict[str, str] = Field(default_factory=dict)
    sealed: str
    by: str


class WheelSeal(Record):
    """An installed wheel in the wheel cache (``$ROOT/cache/wheels/<entry>/``) that hubstock checked
    file by file against its ``RECORD`` and byte-compiled; builds hard-link its files.

    The entry holds the files of one pip package as they lie in a prefix (``lib/pythonX.Y/...``,
    ``bin/``, ``share/``...), plus their byte-code. ``scripts`` hold the prefix they were installed
    for (``prefix``: their ``#!`` line), rewritten for each build that links them.
    """

    WHAT: ClassVar[str] = "wheel cache seal"

    package: str  # the entry's folder name
    name: str
    version: str
    url: str
    artifact_sha256: str  # the locked wheel's (or sdist's) sha256
    python: str  # 'python3.11': the lib/ folder of the prefixes it fits
    prefix: str  # the prefix its scripts name
    #: sha256 of every regular file (byte-code included); ``link:<target>`` for a symbolic link
    files: dict[str, str] = Field(default_factory=dict)
    #: files holding ``prefix`` (console scripts): rewritten, not linked
    scripts: list[str] = Field(default_factory=list)
    #: files the package's ``RECORD`` gives no hash for (itself, the byte-code made for it): a
    #: build records theirs
    unrecorded: list[str] = Field(default_factory=list)
    #: ``"<inode>:<size>:<mtime_ns>"`` of every file and folder, taken when it was sealed
    stat: dict[str, str] = Field(default_factory=dict)
    sealed: str
    by: str


class BuildFiles(Record):
    """The sha256 of every file of a build that no package declares (its byte-code, files
    written at install time), recorded when the build was made, for ``hubstock verify``."""

    WHAT: ClassVar[str] = "build file list"

    build_id: str
    files: dict[str, str] = Field(default_factory=dict)


class BuildRecord(Record):
    """What reproduces a build once it is gone, kept beside it on the root (gc leaves it): the lock
    it was made from, and what every file of it was, written when the build completed. ``files``:
    ``rel -> sha256`` of a regular file, ``link:<target>`` for a symbolic link (the build's own
    records, provenance, file list and marker, left out)."""

    WHAT: ClassVar[str] = "build record"

    build_id: str
    env: str
    kind: str
    platform: str
    lock_name: str
    lock: str
    files: dict[str, str] = Field(default_factory=dict)
    created: str


class ExportManifest(Record):
    """What ``hubstock export`` put in an archive: the generation it carries, where it came from,
    and the sha256 of every other member (``hubstock import`` refuses an archive whose members
    differ from it). The archive also holds this record's own sha256 beside it."""

    WHAT: ClassVar[str] = "export manifest"

    generation: str
    created: str
    by: str
    hubstock: str
    source_root: str
    files: dict[str, str] = Field(default_factory=dict)


class MirrorManifest(Record):
    """What ``hubstock mirror`` wrote into a folder: for the generations it holds, every package
    file (``conda/<subdir>/<file>``, ``simple/<project>/<file>``) with its sha256 and the URL its
    lock names. A build finds a package here by that sha256 (``mirrors`` in hubstock.toml)."""

    WHAT: ClassVar[str] = "mirror manifest"

    generations: list[str] = Field(default_factory=list)
    updated: str
    files: dict[str, str] = Field(default_factory=dict)
    urls: dict[str, str] = Field(default_factory=dict)


class BuildDamage(Record):
    """What the last ``hubstock verify`` found wrong with a build: it no longer counts as
    complete for ``status``, and the next ``build`` of its env replaces it."""

    WHAT: ClassVar[str] = "build damage record"

    env: str
    build_id: str
    checked: str
    problems: list[str] = Field(default_factory=list)  # first few: '<flags> <path>'
    count: int = 0
