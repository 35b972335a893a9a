"""conda-lock's content hash, computed without conda-lock.

:func:`content_hashes` computes the content hash conda-lock records in
``metadata.content_hash``, byte for byte as conda-lock 4 computes it
(``conda_lock.content_hash.compute_content_hashes`` of the lock specification
``conda_lock.src_parser.make_lock_spec`` makes from an environment.yml, with the
virtual packages of ``virtual_package_repo_from_specification``). The pieces of
conda-lock that feed it are ported here: the PEP 508 to conda conversion of ``pip:``
requirements, the platform markers conda-lock evaluates, channel URL normalisation,
and the fake repodata of the virtual packages; conda's MatchSpec parsing is in
:mod:`.condaspec`. ``tests/test_lockfile_model.py`` checks the result against
conda-lock's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse, urlunparse

from .condaspec import parse_conda_spec

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


# ---- pip requirements (conda_lock.src_parser.pyproject_toml.parse_python_requirement) ----


_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_CLAUSE = (
    r"(?:(?:==|!=|<=|>=|<|>)\s*[0-9]+(?:\.[0-9]+)*"
    r"|~=\s*[0-9]+(?:\.[0-9]+)+"
    r"|(?:==|!=)\s*[0-9]+(?:\.[0-9]+)*\.\*)"
)
_PLAIN_REQUIREMENT = re.compile(
    rf"\s*(?P<name>{_NAME})(?:\s*\[\s*(?P<extras>{_NAME}(?:\s*,\s*{_NAME})*)\s*\])?"
    rf"(?P<clauses>\s*{_CLAUSE}(?:\s*,\s*{_CLAUSE})*)?\s*",
    re.ASCII,
)


def plain_requirement(requirement: str) -> tuple[str, list[str], list[str]] | None:
    """``(name, extras, clauses)`` of a PEP 508 requirement of the common plain form (a name,
    extras, version clauses with plain release numbers; no markers, no URL), clauses without
    spaces; None for any other (valid or not), which the full parser then reads. Spares
    ``status`` and ``build`` importing that parser for the usual specs."""
    m = _PLAIN_REQUIREMENT.fullmatch(requirement)
    if m is None:
        return None
    extras = [e.strip() for e in m["extras"].split(",")] if m["extras"] else []
    clauses = [c.replace(" ", "").replace("\t", "") for c in m["clauses"].split(",")] if m["clauses"] else []
    return m["name"], extras, [c.strip() for c in clauses]


def _canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # packaging.utils.canonicalize_name


def pip_dependency(requirement: str, category: str = "main") -> dict:
    """conda-lock's serialised form of one ``pip:`` requirement (a PEP 508 string)."""
    markers = None
    if ";" in requirement:
        requirement, markers = (s.strip() for s in requirement.rsplit(";", 1))
    plain = plain_requirement(requirement)
    if plain is not None:
        name, extras, clauses = plain
        operators = [re.match(r"[=!<>~]+", c)[0] for c in clauses]  # type: ignore[index]
        # what packaging's SpecifierSet would print: its clauses, sorted; two with one operator
        # could be the same clause spelt twice (>=1.0, >=1), which it keeps once: not plain then
        if len(extras) <= 1 and len(set(operators)) == len(operators):
            return _dep(
                _canonical_name(name),
                "pip",
                category,
                version=",".join(sorted(clauses)) or "*",
                extras=extras,
                markers=markers,
            )
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

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
