"""conda's MatchSpec grammar, as conda-lock's vendored conda parses an environment.yml's specs.

:func:`parse_conda_spec` gives (name, version, build, channel) exactly as conda-lock
serialises them into its content hash (see :mod:`.lockhash`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

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
