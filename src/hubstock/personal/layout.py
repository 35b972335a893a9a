"""Where a user's own environments are: one folder per environment under ``[personal] dir``.

::

    <dir>/                       0700, the user's
      <name>/
        spec.json                what was asked for (PersonalSpec)
        state.json               where the build stands (PersonalState)
        pylock.toml              the lock of the last good build (PEP 751), to download
        build.log                the build job's output
        builds/<build-id>/       a venv; complete once .hubstock-personal-complete names it
        jupyter/kernels/mine-<name>/kernel.json   the kernel, written only after its smoke test

``jupyter/`` is what the pre-spawn hook puts on the session's ``JUPYTER_PATH``.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..site import PersonalSettings
from ..store.fs import read_regular
from ..store.records import PersonalBuild, PersonalSpec, PersonalState

SPEC = "spec.json"
STATE = "state.json"
LOCK = "pylock.toml"
LOG = "build.log"
JOB_SCRIPT = "job.sh"
MARKER = ".hubstock-personal-complete"
PROVENANCE = ".hubstock-personal.json"
KERNEL_PREFIX = "mine-"
#: the most of a record of a user's folder that is read
LIMIT = 1 << 22


@dataclass(frozen=True)
class MineEnv:
    """One personal environment's folder."""

    name: str
    path: Path

    @property
    def spec_path(self) -> Path:
        return self.path / SPEC

    @property
    def state_path(self) -> Path:
        return self.path / STATE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def job_script(self) -> Path:
        return self.path / JOB_SCRIPT

    @property
    def builds(self) -> Path:
        return self.path / "builds"

    def build(self, bid: str) -> Path:
        return self.builds / bid

    @property
    def jupyter_dir(self) -> Path:
        """A ``JUPYTER_PATH`` entry that holds this environment's kernel alone."""
        return self.path / "jupyter"

    @property
    def kernel_name(self) -> str:
        return f"{KERNEL_PREFIX}{self.name}"

    @property
    def kernel_dir(self) -> Path:
        return self.jupyter_dir / "kernels" / self.kernel_name

    def spec(self) -> PersonalSpec | None:
        return PersonalSpec.read_optional(self.spec_path)

    def state(self) -> PersonalState | None:
        return PersonalState.read_optional(self.state_path)

    def provenance(self, bid: str) -> PersonalBuild | None:
        data = read_regular(self.build(bid) / PROVENANCE, LIMIT)
        return None if data is None else PersonalBuild.from_text(data, str(self.build(bid) / PROVENANCE))

    def kernel_build(self) -> str | None:
        """The build the published kernel runs (its argv names ``builds/<id>/bin/python``), if any.
        (Files of a user's folder are read as regular files only: the hub reads them as root.)"""
        try:
            argv = json.loads(read_regular(self.kernel_dir / "kernel.json", LIMIT) or b"")["argv"]
        except (ValueError, KeyError, TypeError):
            return None
        for arg in argv if isinstance(argv, list) else []:
            exe = Path(str(arg))
            if exe.name == "python" and exe.parent.name == "bin" and exe.parent.parent.parent == self.builds:
                return exe.parent.parent.name
        return None

    def is_complete(self, bid: str) -> bool:
        data = read_regular(self.build(bid) / MARKER, 256)
        return data is not None and data.decode(errors="replace").strip() == bid


@dataclass(frozen=True)
class Mine:
    """A user's folder of personal environments."""

    user: str
    path: Path

    def env(self, name: str) -> MineEnv:
        return MineEnv(name, self.path / name)

    def envs(self) -> Iterator[MineEnv]:
        """Its environments (folders with a spec), by name."""
        try:
            names = sorted(os.listdir(self.path))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for name in names:
            env = self.env(name)
            if not name.startswith(".") and env.spec_path.is_file():
                yield env


def mine_of(settings: PersonalSettings, user: str) -> Mine:
    """``user``'s folder of personal environments, from ``[personal] dir`` and the user's home."""
    home = pwd.getpwnam(user).pw_dir
    return Mine(user, settings.dir_for(user, home))
