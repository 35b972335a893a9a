"""Install steps that several kinds share: the pip packages linked from the wheel cache (conda's
``pip:`` part, a venv's whole lock) and the byte-compilation of what a build wrote."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...progress import Progress
from ...site import Site
from ...store.root import Root
from ..kinds.base import Installed
from . import wheels
from .bytecode import compile_files
from .verify import recheck_builds

if TYPE_CHECKING:
    from ..lock.condalock import LockedDependency


def install_pip(
    site: Site, root: Root, env: str, pip: list[LockedDependency], prefix: Path, progress: Progress
) -> Installed:
    """Link the pip packages ``pip`` (conda-lock's or pylock's entries) from the wheel cache into ``prefix`` (uv adds what it lacks).
    Builds that link a wheel found damaged are verified."""
    done = wheels.install(site, root, env, pip, prefix, say=progress.step, warn=progress.warn)
    if done.damaged:
        progress.step(
            f"[{env}] the wheel cache's copy of {', '.join(done.damaged)} was damaged: installed again"
        )
        recheck(root, env, done.damaged, progress)
    return Installed(known=done.known, declared=done.declared, linked=done.linked)


def recheck(root: Root, env: str, damaged: list[str], progress: Progress) -> None:
    """Verify (and mark) the builds that link cache entries found ``damaged``: a file changed in
    place in a cache is changed in every build that links it."""
    for check in recheck_builds(root, set(damaged)):
        if not check.ok:
            progress.step(
                f"[{env}] build {check.env}/{check.build_id} links the damaged files: it is marked damaged"
            )


def says_disk_full(text: str) -> bool:
    """Whether a tool's message is about a full filesystem or quota (os error 28 or 122)."""
    signs = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
    return any(s in text for s in signs)


def compile_sources(env: str, prefix: Path, sources: list[str]) -> str:
    """Byte-compile, with checked-hash pycs, the python files of the build that have no valid
    pyc yet: ``sources`` (relative to the build: :func:`~.bytecode.conda_sources`).

    Extraction changes mtimes, so only hash-checked pycs stay valid; files whose prefix was
    rewritten at install time are compiled here, after install. A conda package that ships
    its byte-code keeps it, and the pip part brings its own from the wheel cache. A package's
    stray file that does not compile (py2 test data) is reported, not fatal; a pyc that cannot
    be written (a full disk) fails the build.
    """
    python = prefix / "bin" / "python"
    if not python.exists() or not sources:
        return "nothing to byte-compile"
    return compile_files(env, python, (f"{prefix}/{rel}" for rel in sources), prefix)
