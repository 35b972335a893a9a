"""Reading ``envs/<env>/environment.yml``: validated, with one clear message per mistake."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rattler import MatchSpec

from ..errors import SpecError
from ..site import ENV_NAME_RE, Site


@dataclass(frozen=True)
class EnvSpec:
    """One environment of the site, as its spec file says."""

    name: str
    path: Path  # envs/<env>/environment.yml
    channels: list[str]  # the spec's own, else the site's
    conda: list[str]  # conda match specs, as written
    pip: list[str] = field(default_factory=list)  # PEP 508 requirements

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.dir / "conda-lock.yml"

    @property
    def spec_names(self) -> list[str]:
        return [MatchSpec(s).name.normalized for s in self.conda]


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
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed"
        raise SpecError(f"{rel} is not valid YAML{where} ({problem}); fix the file.") from None
    if not isinstance(data, dict):
        raise SpecError(f"{rel} must be a mapping with 'channels' and 'dependencies'; fix the file.")
    unknown = sorted(set(data) - {"name", "channels", "dependencies", "platforms", "variables", "category"})
    if unknown:
        raise SpecError(
            f"{rel}: unknown key {unknown[0]!r}; an environment.yml has name, channels and dependencies."
        )
    channels = data.get("channels") or list(site.settings.channels)
    if not isinstance(channels, list) or not all(isinstance(c, str) and c for c in channels):
        raise SpecError(f"{rel}: 'channels' must be a list of channel names or URLs.")
    deps = data.get("dependencies")
    if not isinstance(deps, list) or not deps:
        raise SpecError(f"{rel}: 'dependencies' must be a non-empty list of packages.")
    conda: list[str] = []
    pip: list[str] = []
    for dep in deps:
        if isinstance(dep, dict) and set(dep) == {"pip"}:
            items = dep["pip"]
            if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
                raise SpecError(f"{rel}: the 'pip:' section must be a list of requirements.")
            for req in items:
                pip.append(_check_pip(rel, req))
        elif isinstance(dep, str):
            conda.append(_check_conda(rel, dep))
        else:
            raise SpecError(f"{rel}: dependency {dep!r} is neither a package spec nor a 'pip:' list.")
    names = [MatchSpec(s).name.normalized for s in conda]
    if pip and "python" not in names:
        raise SpecError(f"{rel}: a 'pip:' section needs 'python' in the conda dependencies; add it.")
    return EnvSpec(name=name, path=path, channels=list(channels), conda=conda, pip=pip)


def _check_conda(rel: str, dep: str) -> str:
    try:
        ms = MatchSpec(dep)
    except Exception as e:  # rattler raises its own exception types
        raise SpecError(f"{rel}: {dep!r} is not a valid conda package spec ({e}).") from None
    if ms.name is None:
        raise SpecError(f"{rel}: {dep!r} names no package.")
    return dep.strip()


def _check_pip(rel: str, req: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    if req.strip().startswith("-"):
        raise SpecError(f"{rel}: pip option {req!r} is not supported; list requirements only.")
    try:
        Requirement(req)
    except InvalidRequirement as e:
        raise SpecError(f"{rel}: {req!r} is not a valid pip requirement ({e}).") from None
    return req.strip()


def _rel(site: Site, path: Path) -> str:
    try:
        return str(path.relative_to(site.dir))
    except ValueError:
        return str(path)
