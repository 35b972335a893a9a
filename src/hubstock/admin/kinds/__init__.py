"""The kinds of environment, one backend each behind :class:`.base.Kind`.

- ``conda``: ``environment.yml`` locked to ``conda-lock.yml`` (py-rattler, uv for ``pip:``);
- ``venv``: ``requirements.in`` on a site interpreter (a path or an Lmod module), locked with uv
  to ``pylock.toml`` (PEP 751);
- ``module``: Lmod modules only, locked to what they resolve to (``modules.lock.json``).

An env's kind is ``kind`` in its ``envs/<env>/env.toml``; a folder with only an
``environment.yml`` is a conda env. The backends are imported when an env of their kind is
used, so a site without conda envs never loads the solver.
"""

from __future__ import annotations

import dataclasses
import importlib

from ...errors import SpecError
from ...site import ENV_NAME_RE, Site
from .base import Env, Kind

#: kind -> the module (beside this one) and class of its backend
KINDS: dict[str, tuple[str, str]] = {
    "conda": ("conda", "CondaKind"),
    "venv": ("venv", "VenvKind"),
    "module": ("module", "ModuleKind"),
}


def backend(kind: str) -> Kind:
    module, cls = KINDS[kind]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)()


def kind_of(env: Env) -> Kind:
    return backend(env.kind)


def load_env(site: Site, name: str) -> Env:
    """Read ``envs/<name>/`` as its kind says: a :class:`SpecError` naming the file and the fix."""
    if not ENV_NAME_RE.match(name):
        raise SpecError(f"{name!r} is not a valid environment name; use letters, digits, '.', '_' and '-'.")
    from ..lock.envconf import read_env_conf

    conf = read_env_conf(site, name)
    env = backend(conf.kind if conf else "conda").load(site, name)
    if conf is None or not conf.groups:
        return env
    if name == site.settings.server.env:
        raise SpecError(
            f"envs/{name}/env.toml: the server environment cannot be for some groups only (every user's "
            "server runs in it); remove 'groups', and restrict the kernels instead."
        )
    return dataclasses.replace(env, groups=tuple(conf.groups))


def load_envs(site: Site, names: list[str]) -> list[Env]:
    return [load_env(site, n) for n in site.check_env_names(names)]
