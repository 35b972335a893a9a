"""Reading ``envs/<env>/environment.yml``: validated, with one clear message per mistake.

This is the one parser of a spec: the solve and the content hash both take what it
says for each platform of the site.

- **Selectors.** A line ending in ``# [linux]``, ``# [osx]``, ``# [win]``,
  ``# [unix]``, ``# [linux64]``, ``# [aarch64]``, ``# [ppc64le]``, ``# [osx64]``,
  ``# [arm64]`` or ``# [win64]`` counts only on the platforms it names, as in
  conda-lock; any other selector is an error (conda-lock would silently drop
  the line everywhere).
- **nodefaults** in ``channels`` means what it means to conda: do not add the
  ``defaults`` channels. hubstock never adds them, so it is dropped; a spec whose
  only channel is ``nodefaults`` uses the site's channels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ...errors import SpecError
from ...site import ENV_NAME_RE, Site
from .condalock import YAML_LOADER
from .condaspec import parse_conda_spec
from .lockhash import PlatformSpec
from .requirements import check_requirement

#: the selectors conda-lock honours, per platform
PLATFORM_SELECTORS: dict[str, frozenset[str]] = {
    "linux-64": frozenset({"linux64", "unix", "linux"}),
    "linux-aarch64": frozenset({"aarch64", "unix", "linux"}),
    "linux-ppc64le": frozenset({"ppc64le", "unix", "linux"}),
    "osx-64": frozenset({"osx64", "osx", "unix"}),
    "osx-arm64": frozenset({"arm64", "osx", "unix"}),
    "win-64": frozenset({"win", "win64"}),
}
_ALL_SELECTORS = sorted(set().union(*PLATFORM_SELECTORS.values()))
# conda-build's selector pattern, as conda-lock uses it
_SELECTOR_RE = re.compile(r"(.+?)\s*(#.*)\[([^\[\]]+)\](?(2)[^\(\)]*)$")
_KEYS = {"name", "channels", "dependencies", "platforms", "variables", "category"}


@dataclass(frozen=True)
class EnvSpec:
    """One environment of the site, as its spec file says."""

    name: str
    path: Path  # envs/<env>/environment.yml
    channels: list[str]  # the spec's own (without nodefaults), else the site's
    conda: list[str]  # conda match specs, as written (of the site's first platform)
    pip: list[str] = field(default_factory=list)  # PEP 508 requirements (idem)
    category: str = "main"  # conda-lock's nonstandard 'category' key
    #: what the spec asks on each platform of the site, selectors applied
    by_platform: dict[str, PlatformSpec] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.dir / "conda-lock.yml"

    def for_platform(self, platform: str) -> EnvSpec:
        """This spec on one platform: ``conda`` and ``pip`` are that platform's."""
        p = self.platform_spec(platform)
        return replace(self, conda=list(p.conda), pip=list(p.pip), by_platform={platform: p})

    def platform_spec(self, platform: str) -> PlatformSpec:
        """What the spec asks on ``platform`` (the same everywhere without selectors)."""
        p = self.by_platform.get(platform)
        if p is not None:
            return p
        return PlatformSpec(conda=tuple(self.conda), pip=tuple(self.pip), pip_section=bool(self.pip))

    @property
    def spec_names(self) -> list[str]:
        """The conda package names, as the solver reads them."""
        variants = set(self.by_platform.values())
        if len(variants) > 1:
            a, b = list(self.by_platform)[:2]
            raise SpecError(
                f"envs/{self.name}/environment.yml: its selectors ask for different packages on "
                f"{a} and {b}, which this solve cannot tell apart; drop the selectors that differ, "
                "or the extra platform from hubstock.toml."
            )
        from rattler import MatchSpec

        names = []
        for s in self.conda:
            try:
                names.append(MatchSpec(s).name.normalized)
            except Exception as e:  # rattler raises its own exception types
                raise SpecError(
                    f"envs/{self.name}/environment.yml: {s!r} is not a valid conda package spec "
                    f"({_first_line(e)})."
                ) from None
        return names


def load_env_spec(site: Site, name: str) -> EnvSpec:
    """Parse and validate one environment spec of ``site``."""
    if not ENV_NAME_RE.match(name):
        raise SpecError(f"{name!r} is not a valid environment name; use letters, digits, '.', '_' and '-'.")
    path = site.envs_dir / name / "environment.yml"
    rel = _rel(site, path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{rel} does not exist; create it or remove envs/{name}/.") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{rel} is not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
    data = _load_yaml(rel, text)
    if not isinstance(data, dict):
        raise SpecError(f"{rel} must be a mapping with 'channels' and 'dependencies'; fix the file.")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise SpecError(
            f"{rel}: unknown key {unknown[0]!r}; an environment.yml has name, channels and dependencies."
        )
    channels = _channels(rel, data.get("channels"), site)
    category = data.get("category") or "main"
    if not isinstance(category, str):
        raise SpecError(f"{rel}: 'category' must be a name, like 'main'.")

    platforms = list(site.settings.platforms)
    selectors = _selector_lines(rel, text)
    by_platform: dict[str, PlatformSpec] = {}
    if not selectors:
        spec = _platform_spec(rel, data.get("dependencies"))
        by_platform = dict.fromkeys(platforms, spec)
    else:
        for platform in platforms:
            kept = "\n".join(_filter_selectors(text, platform))
            try:
                pdata = yaml.load(kept, Loader=YAML_LOADER)
            except yaml.YAMLError as e:
                raise SpecError(
                    f"{rel}: with its selectors applied for {platform} it is not valid YAML "
                    f"({getattr(e, 'problem', None) or 'malformed'}); fix the selector lines."
                ) from None
            deps = pdata.get("dependencies") if isinstance(pdata, dict) else None
            by_platform[platform] = _platform_spec(rel, deps, platform)
    first = by_platform[platforms[0]]
    return EnvSpec(
        name=name,
        path=path,
        channels=channels,
        conda=list(first.conda),
        pip=list(first.pip),
        category=category,
        by_platform=by_platform,
    )


def _load_yaml(rel: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed"
        raise SpecError(f"{rel} is not valid YAML{where} ({problem}); fix the file.") from None


def _channels(rel: str, raw: Any, site: Site) -> list[str]:
    if raw is None:
        raw = []
    if not isinstance(raw, list) or not all(isinstance(c, str) and c.strip() for c in raw):
        raise SpecError(f"{rel}: 'channels' must be a list of channel names or URLs.")
    # conda adds the 'defaults' channels unless told 'nodefaults'; hubstock never adds them
    own = [c.strip() for c in raw if c.strip() != "nodefaults"]
    chosen = own or [c for c in site.settings.channels if c != "nodefaults"]
    if not chosen:
        raise SpecError(f"{rel}: no channel to solve from; list one under 'channels' or in hubstock.toml.")
    return chosen


def _selector_lines(rel: str, text: str) -> list[int]:
    """Line numbers with a selector; an unknown selector is an error."""
    lines = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        m = _SELECTOR_RE.match(line)
        if m:
            cond = m.group(3)
            if cond not in _ALL_SELECTORS:
                raise SpecError(
                    f"{rel} line {i}: selector [{cond}] is not one hubstock understands; use one of "
                    f"{', '.join(_ALL_SELECTORS)} (no 'not', 'and' or 'or')."
                )
            lines.append(i)
    return lines


def _filter_selectors(text: str, platform: str) -> list[str]:
    """The lines of ``text`` that count on ``platform`` (conda-lock's filter_platform_selectors)."""
    wanted = PLATFORM_SELECTORS[platform]
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = _SELECTOR_RE.match(line)
        if m and m.group(3) not in wanted:
            continue
        out.append(line)
    return out


def _platform_spec(rel: str, deps: Any, platform: str | None = None) -> PlatformSpec:
    on = f" on {platform}" if platform else ""
    if not isinstance(deps, list) or not deps:
        raise SpecError(f"{rel}: 'dependencies' must be a non-empty list of packages{on}.")
    conda: list[str] = []
    pip: list[str] = []
    pip_section = False
    for dep in deps:
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            items = dep["pip"]
            if items is None:  # emptied by selectors: conda-lock ignores it too
                continue
            if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
                raise SpecError(f"{rel}: the 'pip:' section must be a list of requirements.")
            pip_section = True
            for req in items:
                pip.append(check_requirement(rel, req))
        elif isinstance(dep, str):
            conda.append(_check_conda(rel, dep))
        else:
            raise SpecError(f"{rel}: dependency {dep!r} is neither a package spec nor a 'pip:' list.")
    if pip and "python" not in {parse_conda_spec(s)[0] for s in conda}:
        raise SpecError(f"{rel}: a 'pip:' section needs 'python' in the conda dependencies{on}; add it.")
    return PlatformSpec(conda=tuple(conda), pip=tuple(pip), pip_section=pip_section)


def _check_conda(rel: str, dep: str) -> str:
    try:
        name = parse_conda_spec(dep)[0]
    except ValueError as e:
        raise SpecError(f"{rel}: {dep!r} is not a valid conda package spec ({e}).") from None
    if name == "*":
        raise SpecError(f"{rel}: {dep!r} names no package.")
    return dep.strip()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")


def _rel(site: Site, path: Path) -> str:
    try:
        return str(path.relative_to(site.dir))
    except ValueError:
        return str(path)
