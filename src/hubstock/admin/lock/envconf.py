"""``envs/<env>/env.toml``: an environment's kind and what it runs on.

A conda env needs none (its ``environment.yml`` says everything). A venv env names its site
interpreter, a module env its Lmod modules::

    kind = "venv"                 # requirements.in, locked to pylock.toml
    [python]
    path = "/usr/bin/python3"     # an absolute path ...
    # module = "python/3.11"      # ... or the Lmod module that provides it (python3 on its PATH)

    kind = "module"               # no build: a kernel from the site's module tree
    modules = ["R/4.2"]
    optional = true               # a machine without them leaves this env (and its kernels) out

    groups = ["matlab-users"]     # any kind: the build is closed to all but these Unix groups

It is a pydantic model that forbids unknown keys, so a typo is an error naming the key.
"""

from __future__ import annotations

import re
import tomllib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ...errors import SpecError
from ...lmod import MODULE_NAME
from ...site import Site, describe_validation_error
from ...store.access import GROUP_NAME

ENV_CONF = "env.toml"


def _module_name(v: str) -> str:
    if not MODULE_NAME.fullmatch(v):
        raise ValueError(f"{v!r} is not a module name like 'R/4.2'")
    return v


def check_group_names(v: list[str]) -> list[str]:
    """Unix group names, each once (a ValueError naming the first that is not one)."""
    for g in v:
        if not isinstance(g, str) or not GROUP_NAME.match(g):
            raise ValueError(f"{g!r} is not a Unix group name like 'matlab-users'")
    if len(set(v)) != len(v):
        raise ValueError("a group is named twice")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PythonConf(_Model):
    """The site interpreter of a venv env: exactly one of ``path`` and ``module``."""

    path: str | None = Field(None, description="the interpreter's absolute path, e.g. '/usr/bin/python3'")
    module: str | None = Field(None, description="the Lmod module that provides it, e.g. 'python/3.11'")
    command: str = Field("python3", description="the interpreter's name on the module's PATH")

    @field_validator("path")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"{v!r} is not an absolute path; give the interpreter's full path")
        return v

    @field_validator("module")
    @classmethod
    def _module(cls, v: str | None) -> str | None:
        return None if v is None else _module_name(v)

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.+-]+$", v):
            raise ValueError(f"{v!r} is not a command name like 'python3'")
        return v

    @model_validator(mode="after")
    def _one(self) -> PythonConf:
        if (self.path is None) == (self.module is None):
            raise ValueError("give exactly one of 'path' and 'module'")
        return self


class EnvConf(_Model):
    kind: Literal["conda", "venv", "module"]
    python: PythonConf | None = Field(None, description="venv: the site interpreter")
    modules: list[str] = Field(default_factory=list, description="module: the Lmod modules it loads")
    index_url: str | None = Field(None, description="venv: a package index to lock from instead of PyPI")
    optional: bool = Field(
        False,
        description="left out, with one line saying why, where its interpreter or modules are not "
        "available (lock, build and publish go on with the other envs and kernels)",
    )

    groups: list[str] = Field(
        default_factory=list,
        description="the Unix groups that may use it: its builds are closed to everybody else, and so are "
        "its kernels unless they name groups of their own",
    )

    @field_validator("modules")
    @classmethod
    def _modules(cls, v: list[str]) -> list[str]:
        return [_module_name(m) for m in v]

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return check_group_names(v)

    @model_validator(mode="after")
    def _fits_kind(self) -> EnvConf:
        if self.kind == "venv" and self.python is None:
            raise ValueError("a venv env needs [python] with 'path' or 'module'")
        if self.kind != "venv" and (self.python is not None or self.index_url is not None):
            raise ValueError(f"'python' and 'index_url' are for venv envs, not {self.kind}")
        if self.kind == "module" and not self.modules:
            raise ValueError("a module env needs 'modules', e.g. ['R/4.2']")
        if self.kind != "module" and self.modules:
            raise ValueError(f"'modules' is for module envs, not {self.kind}")
        return self


def read_env_conf(site: Site, name: str) -> EnvConf | None:
    """``envs/<name>/env.toml`` validated, or None when the env has none (a conda env)."""
    path = site.envs_dir / name / ENV_CONF
    rel = f"envs/{name}/{ENV_CONF}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise SpecError(f"{rel} is not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
    except OSError as e:
        raise SpecError(f"{rel} cannot be read ({e.strerror}).") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{rel}: not valid TOML ({e}); fix the file.") from None
    try:
        return EnvConf.model_validate(data)
    except ValidationError as e:
        raise SpecError(describe_validation_error(rel, e)) from None
