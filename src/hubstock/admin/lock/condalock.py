"""conda-lock's file format, without conda-lock.

Only ``hubstock lock`` needs conda-lock itself (to write a lock with conda-lock's own
writer). Everything that *reads* a lock (status, build, publish) uses this module:

- :func:`read_lock_file` reads ``conda-lock.yml`` (the v1 format conda-lock writes)
  into a small pydantic model with the attribute names of conda-lock's own
  (``package[].manager .name .version .build .url .hash.sha256``,
  ``metadata.content_hash``), and names what is wrong with a broken lock in one
  sentence.

Its content hash is computed by :mod:`.lockhash`, with conda's spec grammar from
:mod:`.condaspec`; ``tests/test_lockfile_model.py`` checks both against conda-lock's own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ...errors import LockError

#: PyYAML's C loader when it was built with libyaml (several times faster)
YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# --------------------------------------------------------------------------------------
# The lock file (conda-lock's v1 format)
# --------------------------------------------------------------------------------------


class _Model(BaseModel):
    # conda-lock may add optional metadata: read what we need, ignore the rest
    model_config = ConfigDict(extra="ignore")


class HashModel(_Model):
    md5: str | None = None
    sha256: str  # conda-lock allows none; hubstock verifies every archive with it


class DependencySource(_Model):
    type: str
    url: str


class LockedDependency(_Model):
    """One package of one platform, as conda-lock writes it."""

    name: str
    version: str
    manager: Literal["conda", "pip"]
    platform: str
    dependencies: dict[str, str] = {}
    url: str
    hash: HashModel
    category: str = "main"
    optional: bool = False
    source: DependencySource | None = None
    build: str | None = None


class LockChannel(_Model):
    url: str
    used_env_vars: list[str] = []


class LockMeta(_Model):
    content_hash: dict[str, str]
    channels: list[LockChannel]
    platforms: list[str]
    sources: list[str]

    @field_validator("channels", mode="before")
    @classmethod
    def _channel_strings(cls, v: Any) -> Any:
        # conda-lock also reads a channel given as a plain string
        if isinstance(v, list):
            return [{"url": c, "used_env_vars": []} if isinstance(c, str) else c for c in v]
        return v


class Lockfile(_Model):
    version: Literal[1]
    metadata: LockMeta
    package: list[LockedDependency]


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FIX = "lock again with `nox -s lock`"


def read_lock_file(path: Path, rel: str) -> Lockfile:
    """The lock at ``path`` (named ``rel`` in messages); a :class:`LockError` naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LockError(f"{rel} is not UTF-8 text; {_FIX}.") from None
    except OSError as e:
        raise LockError(f"{rel} cannot be read ({e.strerror or e}); check its permissions.") from None
    try:
        data = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LockError(f"{rel} is not valid YAML{where} ({_problem(e)}); {_FIX}.") from None
    return lock_from_data(data, rel)


def lock_from_data(data: Any, rel: str) -> Lockfile:
    """Validate parsed YAML as a conda-lock v1 file, naming the first thing wrong."""
    if not isinstance(data, dict) or not {"metadata", "package"} & set(data):
        raise LockError(f"{rel} is not a conda-lock file (no 'metadata' and 'package'); {_FIX}.")
    version = data.get("version")
    if version != 1:
        what = "has no 'version'" if version is None else f"is conda-lock format version {version!r}"
        raise LockError(f"{rel} {what}; hubstock reads version 1, as conda-lock writes it; {_FIX}.")
    try:
        lock = Lockfile.model_validate(data)
    except ValidationError as e:
        raise LockError(f"{rel}: {_describe(e.errors()[0], data)}; {_FIX}.") from None
    for p in lock.package:
        sha = p.hash.sha256
        if not _SHA256_RE.match(sha):
            raise LockError(f"{rel}: {_package(p)} has a malformed sha256 {sha[:80]!r}; {_FIX}.")
        if not p.url:
            raise LockError(f"{rel}: {_package(p)} has no url; {_FIX}.")
    meta = lock.metadata
    missing = [p for p in meta.platforms if p not in meta.content_hash]
    if missing:
        raise LockError(f"{rel}: metadata.content_hash has no hash for platform {missing[0]}; {_FIX}.")
    lock.package = _merge_categories(lock.package, rel)
    return lock


def _merge_categories(pkgs: list[LockedDependency], rel: str) -> list[LockedDependency]:
    """v1 lists a package once per category: keep one entry per (manager, name, platform)."""
    seen: dict[tuple[str, str, str], LockedDependency] = {}
    out = []
    for p in pkgs:
        key = (p.manager, p.name, p.platform)
        first = seen.get(key)
        if first is None:
            seen[key] = p
            out.append(p)
        elif (first.version, first.url, first.hash.sha256) != (p.version, p.url, p.hash.sha256):
            raise LockError(
                f"{rel}: {p.manager} package {p.name} ({p.platform}) is listed twice with different "
                f"archives ({first.version} and {p.version}); {_FIX}."
            )
    return out


def _package(p: LockedDependency) -> str:
    return f"package {p.name} {p.version} ({p.platform})"


def _describe(err: Mapping[str, Any], data: dict) -> str:
    """One pydantic error as 'package numpy 1.26 (linux-64) has no sha256'."""
    loc = [str(x) for x in err.get("loc", ())]
    missing = err.get("type") == "missing" or (err.get("input", "") is None and len(loc) > 1)
    if loc[:1] == ["package"] and len(loc) >= 2 and loc[1].isdigit():
        idx = int(loc[1])
        raw = data.get("package")
        entry = raw[idx] if isinstance(raw, list) and idx < len(raw) else None
        who = _raw_package(entry, idx)
        field = ".".join(loc[2:])
        if not field:
            return f"{who} is not a mapping of name, version, manager, platform, url and hash"
        if missing:
            return f"{who} has no {loc[-1]}"
        return f"{who} has an invalid {field} ({_short(err)})"
    if loc[:1] == ["package"]:
        return "'package' must be a list of packages"
    field = ".".join(loc) or "the file"
    if missing:
        return f"{field} is missing"
    return f"{field} is invalid ({_short(err)})"


def _raw_package(entry: Any, idx: int) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        ver = entry.get("version")
        plat = entry.get("platform")
        return f"package {entry['name']}" + (f" {ver}" if ver else "") + (f" ({plat})" if plat else "")
    return f"package #{idx + 1}"


def _short(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid")).rstrip(".")
    if "input" in err and not isinstance(err["input"], dict | list):
        msg += f", got {str(err['input'])[:60]!r}"
    return msg


def _problem(e: yaml.YAMLError) -> str:
    return getattr(e, "problem", None) or "malformed"
