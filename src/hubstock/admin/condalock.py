"""conda-lock's file format and content hash, without conda-lock.

Only ``hubstock lock`` needs conda-lock itself (to write a lock with conda-lock's own
writer). Everything that *reads* a lock (status, build, publish) uses this module:

- :func:`read_lock_file` reads ``conda-lock.yml`` (the v1 format conda-lock writes)
  into a small pydantic model with the attribute names of conda-lock's own
  (``package[].manager .name .version .build .url .hash.sha256``,
  ``metadata.content_hash``), and names what is wrong with a broken lock in one
  sentence.
- :func:`content_hashes` computes the content hash conda-lock records in
  ``metadata.content_hash``, byte for byte as conda-lock 4 computes it
  (``conda_lock.content_hash.compute_content_hashes`` of the lock specification
  ``conda_lock.src_parser.make_lock_spec`` makes from an environment.yml, with the
  virtual packages of ``virtual_package_repo_from_specification``). The pieces of
  conda-lock that feed it are ported here: conda's MatchSpec parsing (name,
  version, build, channel), the PEP 508 to conda conversion of ``pip:``
  requirements, the platform markers conda-lock evaluates, channel URL
  normalisation, and the fake repodata of the virtual packages.
  ``tests/test_lockfile_model.py`` checks the result against conda-lock's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse, urlsplit, urlunparse

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import LockError

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


# --------------------------------------------------------------------------------------
# The content hash
# --------------------------------------------------------------------------------------

#: conda-lock's fake repodata timestamp for virtual packages (2020-01-01)
_VIRTUAL_TIMESTAMP = 1577854800000


@dataclass(frozen=True)
class PlatformSpec:
    """What an environment.yml asks for on one platform (selectors already applied)."""

    conda: tuple[str, ...]
    pip: tuple[str, ...] = ()
    #: a ``pip:`` list is present (conda-lock then also asks conda for pip itself)
    pip_section: bool = False


def content_hashes(
    *,
    channels: Iterable[str],
    specs: Mapping[str, PlatformSpec],
    virtual_packages: Mapping[str, Mapping[str, str]],
    category: str = "main",
) -> dict[str, str]:
    """conda-lock's content hash per platform.

    ``channels`` are the channels the lock uses (``nodefaults`` already dropped),
    ``specs`` maps each platform to what the spec asks there, and
    ``virtual_packages`` maps each platform to ``{name: "version[ build]"}``, the
    content of conda-lock's ``--virtual-package-spec`` file.
    """
    chans = [_channel_json(c) for c in channels]
    out = {}
    for platform, spec in specs.items():
        deps = spec_dependencies(spec, platform, category)
        content: dict[str, Any] = {
            "channels": chans,
            "specs": [deps[k] for k in sorted(deps)],
            "virtual_package_hash": {
                "noarch": _subdir_repodata("noarch", {}),
                platform: _subdir_repodata(platform, virtual_packages.get(platform, {})),
            },
        }
        blob = json.dumps(content, sort_keys=True)
        out[platform] = hashlib.sha256(blob.encode("utf-8")).hexdigest()
    return out


def spec_dependencies(
    spec: PlatformSpec, platform: str, category: str = "main"
) -> dict[tuple[str, str], dict]:
    """conda-lock's serialised dependencies of one platform, keyed by (manager, name).

    As conda-lock's environment.yml parser: conda specs first, then the pip
    requirements whose platform markers hold, then ``pip`` itself for conda; a later
    entry with the same manager and name replaces an earlier one.
    """
    deps: dict[tuple[str, str], dict] = {}
    for s in spec.conda:
        name, version, build, channel = parse_conda_spec(s)
        deps[("conda", name)] = _dep(name, "conda", category, version=version, build=build, channel=channel)
    if spec.pip_section:
        for req in spec.pip:
            dep = pip_dependency(req, category)
            if evaluate_marker(dep.get("markers"), platform):
                deps[("pip", dep["name"])] = dep
        deps[("conda", "pip")] = _dep("pip", "conda", "main", version="*")
    return deps


def _dep(
    name: str,
    manager: str,
    category: str,
    *,
    version: str,
    build: str | None = None,
    channel: str | None = None,
    extras: list[str] | None = None,
    markers: str | None = None,
) -> dict:
    # conda-lock's VersionedDependency.model_dump(), with a null 'markers' removed
    d = {
        "name": name,
        "manager": manager,
        "category": category,
        "extras": sorted(extras or []),
        "version": version,
        "build": build,
        "conda_channel": channel,
        "hash": None,
    }
    if markers is not None:
        d["markers"] = markers
    return d


def _subdir_repodata(subdir: str, packages: Mapping[str, str]) -> dict:
    """The fake repodata.json conda-lock writes for one subdir's virtual packages."""
    entries = {}
    for name, spec in packages.items():
        version, _, build_string = spec.partition(" ")
        # conda-lock >=3.0.3 reinserts a build number to keep the hashes of conda-lock 2
        build = f"{build_string}_0" if build_string else "0"
        entries[f"{name}-{version}-{build}.tar.bz2"] = {
            "name": name,
            "version": version,
            "build_string": build_string,
            "build_number": 0,
            "noarch": "",
            "depends": [],
            "timestamp": _VIRTUAL_TIMESTAMP,
            "package_type": "virtual_system",
            "build": build,
            "subdir": subdir,
        }
    return {"info": {"subdir": subdir}, "packages": entries}


# ---- channels (conda_lock.models.channel.Channel.from_string) -------------------------

_TOKEN_RE = re.compile(r"(.*)(/t/\$?\{?[a-zA-Z0-9-_]*\}?)(/.*)")


def channel_url(value: str) -> tuple[str, tuple[str, ...]]:
    """A channel as conda-lock stores it: credentials in the URL become ``${ENV_VAR}``."""
    if "://" not in value:
        return value, ()
    res = urlparse(value)
    replaced = res
    user_var = password_var = token_var = None

    def netloc(user: str | None, password: str | None) -> str:
        host = f"{res.hostname}:{res.port}" if res.port else f"{res.hostname}"
        if not user:
            return host
        return f"{user}:{password}@{host}" if password else f"{user}@{host}"

    if res.username:
        user_var = _env_var_for(res.username, ["USERNAME", "USER"])
        if user_var:
            replaced = replaced._replace(netloc=netloc(f"${{{user_var}}}", replaced.password))
    if res.password:
        password_var = _env_var_for(res.password, ["PASSWORD", "PASS", "TOKEN", "KEY"])
        if password_var:
            replaced = replaced._replace(netloc=netloc(replaced.username, f"${{{password_var}}}"))
    m = _TOKEN_RE.search(res.path)
    token = m.groups()[1][3:] if m else None
    if token:
        token_var = _env_var_for(token, ["TOKEN", "CRED", "PASSWORD", "PASS", "KEY"])
        if token_var:
            replaced = replaced._replace(path=_TOKEN_RE.sub(rf"\1/t/${{{token_var}}}\3", replaced.path))
    used = tuple(sorted({v for v in (user_var, password_var, token_var) if v}))
    return urlunparse(replaced), used


def _env_var_for(value: str, suffixes: list[str]) -> str | None:
    if value.startswith("$"):
        return value.lstrip("$").strip("{}")
    for suffix in [*suffixes, ""]:
        candidates = {v: k for k, v in os.environ.items() if k.upper().endswith(suffix)}
        if key := candidates.get(value):
            return key
        if key := candidates.get(unquote(value)):
            return key
    return None


def _channel_json(value: str) -> str:
    # pydantic's model_dump_json() of conda-lock's Channel: compact, fields in order
    url, used = channel_url(value)
    return json.dumps({"url": url, "used_env_vars": list(used)}, separators=(",", ":"), ensure_ascii=False)


# ---- conda match specs (conda's MatchSpec, as conda-lock's vendored conda parses them) ----

_KNOWN_SUBDIRS = frozenset(
    {
        "noarch",
        "emscripten-wasm32",
        "wasi-wasm32",
        "freebsd-64",
        "linux-32",
        "linux-64",
        "linux-aarch64",
        "linux-armv6l",
        "linux-armv7l",
        "linux-ppc64",
        "linux-ppc64le",
        "linux-riscv64",
        "linux-s390x",
        "osx-64",
        "osx-arm64",
        "win-32",
        "win-64",
        "win-arm64",
        "zos-z",
    }
)
_MATCHSPEC_FIELDS = frozenset(
    {
        "channel",
        "subdir",
        "name",
        "version",
        "build",
        "build_number",
        "track_features",
        "features",
        "url",
        "md5",
        "sha256",
        "license",
        "license_family",
        "fn",
    }
)
_BRACKET_RE = re.compile(r'([a-zA-Z0-9_-]+?)=(["\']?)([^\'"]*?)(\2)(?:[, ]|$)')
_VERSION_BUILD_RE = re.compile(r"((?:.+?)[^><!,|]?)(?:(?<![=!|,<>~])(?:[ =])([^-=,|<>~]+?))?$")
_VERSION_RELATION_RE = re.compile(r"^(=|==|!=|<=|>=|<|>|~=)(?![=<>!~])(\S+)$")
_REGEX_SPLIT_RE = re.compile(r".*[()|,^$]")
_VSPEC_TOKENS = r"\s*\^[^$]*[$]|\s*[()|,]|[^()|,]+"
_VERSION_CHECK_RE = re.compile(r"^[\*\.\+!_0-9a-z]+$")
_VERSION_SPLIT_RE = re.compile("([0-9]+|[*]+|[^0-9*]+)")
_OPERATORS = frozenset({"==", "!=", "<=", ">=", "<", ">", "=", "~="})


def parse_conda_spec(spec: str) -> tuple[str, str, str | None, str | None]:
    """``(name, version, build, channel)`` of a conda match spec, as conda reads it.

    ``version`` is conda's normalised version spec ('' when none); a spec conda
    rejects raises :class:`ValueError` with the reason.
    """
    s = spec
    if s.endswith("@"):
        raise ValueError("a feature spec names no package")
    if "#" in s:
        s = s[: s.index("#")]
    s = s.split(" if ", 1)[0]
    if s.endswith((".conda", ".tar.bz2")):
        raise ValueError("a package file is not a package spec")
    brackets: dict[str, str] = {}
    m = re.match(r".*(?:(\[.*\]))", s)
    if m:
        text = m.group(1)
        s = s.replace(text, "")
        for b in _BRACKET_RE.finditer(text[1:-1]):
            key, _, value, _ = b.groups()
            if not key or not value:
                raise ValueError("key-value mismatch in brackets")
            brackets[key] = value
    m = re.match(r".*(?:(\(.*\)))", s)
    if m:
        s = s.replace(m.group(1), "")
    parts = s.rsplit(":", 2)
    channel_str = parts[0] if len(parts) == 3 else None
    s = parts[-1]
    channel = _channel_name(channel_str) if channel_str else None
    if "channel" in brackets:
        channel = _channel_name(brackets.pop("channel")) or channel
    m = re.match(r"([^ =<>!~]+)?([><!=~ ].+)?", s)
    name, rest = m.groups() if m else (None, None)
    if name is None:
        raise ValueError("no package name found")
    rest = rest and rest.strip()
    version: str | None = None
    build: str | None = None
    if rest:
        if "[" in rest:
            raise ValueError("multiple brackets sections not allowed")
        version, build = _version_plus_build(rest)
        if version in ("==", "="):
            pass
        elif version and version[0] == "=":
            test = version[1:]
            if version[:2] == "==" and build is None:
                version = version[2:]
            elif not any(c in test for c in "=,|"):
                version = test + "*" if build is None and test[-1:] != "*" else test
    unknown = sorted(set(brackets) - _MATCHSPEC_FIELDS)
    if unknown:
        raise ValueError(f"cannot match on field(s) {', '.join(unknown)}")
    version = brackets.get("version", version)
    build = brackets.get("build", build)
    lname = name.lower()
    return (
        "*" if "*" in lname else lname,
        _version_spec(version) if version is not None else "",
        build,
        channel,
    )


def _version_plus_build(text: str) -> tuple[str, str | None]:
    m = _VERSION_BUILD_RE.search(text)
    if not m:
        return text.replace(" ", ""), None
    version, build = m.groups()
    return (version or "").replace(" ", ""), (build.strip() if build else build)


def _version_spec(spec: str | tuple) -> str:
    """conda's VersionSpec(spec).spec: validated, with 'x*' written 'x.*'."""
    if isinstance(spec, str) and _REGEX_SPLIT_RE.match(spec):
        spec = _treeify(spec)
    if isinstance(spec, tuple):
        return _untreeify((spec[0], *(_version_spec(s) for s in spec[1:])))
    s = spec.strip()
    if not s:
        raise ValueError("empty version spec")
    if s[0] == "^" or s[-1] == "$":
        if s[0] != "^" or s[-1] != "$":
            raise ValueError(f"regex spec {s!r} must start with '^' and end with '$'")
        _compile(s)
    elif s[0] in "=<>!~":
        m = _VERSION_RELATION_RE.match(s)
        if m is None:
            raise ValueError(f"invalid operator in {s!r}")
        op, vo = m.groups()
        if vo[-2:] == ".*":
            if op == "~=":
                raise ValueError(f"invalid operator with '.*' in {s!r}")
            vo = vo[:-2]
        if op not in _OPERATORS:
            raise ValueError(f"invalid operator {op!r}")
        _check_version(vo)
    elif s == "*":
        pass
    elif "*" in s.rstrip("*"):
        _compile("^(?:" + s.replace(".", r"\.").replace("+", r"\+").replace("*", r".*") + ")$")
    elif s[-1] == "*":
        if s[-2:] != ".*":
            s = s[:-1] + ".*"
        _check_version(s.rstrip("*").rstrip("."))
    elif "@" not in s:
        _check_version(s)
    return s


def _compile(rx: str) -> None:
    try:
        re.compile(rx)
    except re.error as e:
        raise ValueError(f"invalid regular expression ({e})") from None


def _check_version(vstr: str) -> None:
    """conda's VersionOrder validity checks."""
    v = vstr.strip().lower()
    if not v:
        raise ValueError("empty version string")
    if not _VERSION_CHECK_RE.match(v):
        if "-" in v and "_" not in v and _VERSION_CHECK_RE.match(v.replace("-", "_")):
            v = v.replace("-", "_")
        else:
            raise ValueError(f"invalid character(s) in version {vstr!r}")
    parts = v.split("!")
    if len(parts) > 2:
        raise ValueError(f"duplicated epoch separator '!' in {vstr!r}")
    if len(parts) == 2 and not parts[0].isdigit():
        raise ValueError(f"epoch must be an integer in {vstr!r}")
    rest = parts[-1].split("+")
    if len(rest) > 2:
        raise ValueError(f"duplicated local version separator '+' in {vstr!r}")
    if rest[0] == "":
        raise ValueError(f"missing version before local version separator '+' in {vstr!r}")
    main = rest[0][:-1] if rest[0][-1] == "_" else rest[0]
    comps = main.replace("_", ".").split(".")
    if len(rest) == 2:
        comps += rest[1].replace("_", ".").split(".")
    if any(not _VERSION_SPLIT_RE.findall(c) for c in comps):
        raise ValueError(f"empty version component in {vstr!r}")


def _treeify(spec: str) -> str | tuple:
    tokens = re.findall(_VSPEC_TOKENS, f"({spec})")
    output: list = []
    stack: list[str] = []

    def apply_ops(cstop: str) -> None:
        while stack and stack[-1] not in cstop:
            if len(output) < 2:
                raise ValueError(f"cannot join single expression in {spec!r}")
            c = stack.pop()
            r = output.pop()
            r = r[1:] if r[0] == c else (r,)
            left = output.pop()
            left = left[1:] if left[0] == c else (left,)
            output.append((c, *left, *r))

    for item in tokens:
        item = item.strip()
        if item == "|":
            apply_ops("(")
            stack.append("|")
        elif item == ",":
            apply_ops("|(")
            stack.append(",")
        elif item == "(":
            stack.append("(")
        elif item == ")":
            apply_ops("(")
            if not stack or stack[-1] != "(":
                raise ValueError(f"unbalanced parentheses in {spec!r}")
            stack.pop()
        else:
            output.append(item)
    if stack or not output:
        raise ValueError(f"cannot read version spec {spec!r}")
    return output[0]


def _untreeify(spec: str | tuple, _inand: bool = False, depth: int = 0) -> str:
    if isinstance(spec, tuple):
        if spec[0] == "|":
            res = "|".join(_untreeify(x, depth=depth + 1) for x in spec[1:])
            if _inand or depth > 0:
                res = f"({res})"
        else:
            res = ",".join(_untreeify(x, _inand=True, depth=depth + 1) for x in spec[1:])
            if depth > 0:
                res = f"({res})"
        return res
    return spec


def _channel_name(value: str) -> str | None:
    """conda's canonical name of the channel in ``channel::name``."""
    value = value.strip()
    if not value:
        return None
    if "://" in value or value.startswith(("/", "./", "../", "~")):
        u = urlsplit(value if "://" in value else "file://" + value)
        parts = [p for p in u.path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "t":
            parts = parts[2:]  # an anaconda.org token
        if parts and parts[-1] in _KNOWN_SUBDIRS:
            parts.pop()
        if u.scheme == "file" or not u.hostname:
            name = parts[-1] if parts else ""
        else:
            if u.hostname != "conda.anaconda.org" and parts and parts[0] == "conda":
                parts = parts[1:]
            name = "/".join(parts)
    else:
        parts = value.rstrip("/").split("/")
        if len(parts) > 1 and parts[-1] in _KNOWN_SUBDIRS:
            parts.pop()
        name = "/".join(parts)
    if name in ("pkgs/main", "pkgs/r"):
        return "defaults"
    return name or None


# ---- pip requirements (conda_lock.src_parser.pyproject_toml.parse_python_requirement) ----


def pip_dependency(requirement: str, category: str = "main") -> dict:
    """conda-lock's serialised form of one ``pip:`` requirement (a PEP 508 string)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    markers = None
    if ";" in requirement:
        requirement, markers = (s.strip() for s in requirement.rsplit(";", 1))
    req = Requirement(requirement)
    if req.url:
        raise ValueError(f"{requirement!r} is a direct reference, not a requirement on an index")
    # encode_poetry_version of a PEP 440 specifier set: clauses without spaces, '===' as '=='
    version = ",".join(c.replace(" ", "") for c in str(req.specifier).split(","))
    version = version.replace("===", "==")
    if version:
        version = ",".join(sorted(version.split(",")))
    return _dep(
        canonicalize_name(req.name),
        "pip",
        category,
        version=version or "*",
        extras=list(req.extras),
        markers=markers,
    )


def _marker_env(platform: str) -> dict[str, str]:
    # the only names conda-lock knows before the Python version is solved
    system = platform.split("-")[0]
    return {
        "linux": {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"},
        "osx": {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix"},
        "win": {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt"},
    }[system]


def evaluate_marker(marker: str | None, platform: str) -> bool:
    """Whether a requirement's marker holds on ``platform``, as conda-lock decides.

    Only ``sys_platform``, ``platform_system`` and ``os_name`` are known when the
    spec is read; a clause on any other name counts as true.
    """
    if not marker:
        return True
    from packaging.markers import Marker

    env = _marker_env(platform)
    return _eval_markers(Marker(marker)._markers, env)


def _eval_markers(markers: list, env: dict[str, str]) -> bool:
    groups: list[list[bool]] = [[]]
    for item in markers:
        if isinstance(item, list):
            groups[-1].append(_eval_markers(item, env))
        elif isinstance(item, tuple):
            groups[-1].append(_eval_clause(item, env))
        elif item == "or":
            groups.append([])
    return any(all(g) for g in groups)


def _eval_clause(clause: tuple, env: dict[str, str]) -> bool:
    from packaging.markers import Marker

    lhs, op, rhs = clause
    names = [x.value for x in (lhs, rhs) if type(x).__name__ == "Variable"]
    if not names or any(n not in env for n in names):
        return True
    text = " ".join(x.serialize() for x in clause)
    full = {"python_version": "3", "python_full_version": "3.0.0", "extra": "", **env}
    return Marker(text).evaluate(full)
