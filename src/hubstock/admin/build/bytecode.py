"""Byte-compile python files with a build's own interpreter (checked-hash pycs), and say which.

Only what a build *wrote* is compiled: a conda package that ships its byte-code keeps it, a
file whose prefix the installer rewrote is compiled again, and the pip packages bring theirs
from the wheel cache (compiled once, when they entered it). The work is done by
``_compile_env.py`` under the build's interpreter, which skips a pyc that is already valid.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...errors import BuildError, CommandError, DiskFullError
from ...proc import run

SCRIPT = Path(__file__).with_name("_compile_env.py")


def compile_files(
    env: str, python: Path, files: Iterable[str], where: Path, strip: Path | None = None
) -> str:
    """Compile ``files`` (absolute paths of ``.py`` files) with ``python``; its summary line.

    ``where`` names the place for a full disk's message (the build, or the wheel cache). A
    source that cannot compile (py2 test data) is reported, not fatal; a pyc that cannot be
    written (a full disk) fails with one sentence. ``strip``: the byte-code names each source
    by its path below that folder (a staging folder whose name must not show in it).
    """
    opts = ["--strip", str(strip)] if strip else []
    todo = list(files)
    if not todo:
        return "compiled 0 file(s), 0 not compilable"
    fd, listing = tempfile.mkstemp(prefix="hubstock-compile-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("\n".join(todo) + "\n")
        if len(todo) <= IN_PROCESS_MAX and same_byte_code(python):
            return _compile_here(env, where, [*opts, "--list", listing])
        try:
            proc = run(
                [str(python), "-I", str(SCRIPT), *opts, "--list", listing],
                what=f"byte-compiling env {env!r}",
                env={"PYTHONDONTWRITEBYTECODE": ""},
            )
        except CommandError as e:
            raise _compile_error(env, where, e) from None
    finally:
        os.unlink(listing)
    return proc.stdout.strip()


#: up to this many files are compiled in this process when it writes the build's byte-code (more
#: go to the build's interpreter, which compiles them with worker processes)
IN_PROCESS_MAX = 200


def same_byte_code(python: Path) -> bool:
    """Whether this interpreter writes the very byte-code ``python`` (a build's) would: the same
    cache tag, and the same magic number as the byte-code its own standard library ships with."""
    tag = sys.implementation.cache_tag
    lib = python.parent.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        with open(lib / "__pycache__" / f"os.{tag}.pyc", "rb") as f:
            return bool(tag) and f.read(4) == importlib.util.MAGIC_NUMBER
    except OSError:
        return False


def _compile_here(env: str, where: Path, args: list[str]) -> str:
    """``_compile_env.py`` run in this process (one interpreter start less)."""
    from . import _compile_env

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _compile_env.main(args)
    if code != 0:
        text = out.getvalue()
        err = CommandError(
            f"byte-compiling env {env!r} failed", argv=["_compile_env.py"], returncode=code, output=text
        )
        raise _compile_error(env, where, err) from None
    return out.getvalue().strip()


def _compile_error(env: str, where: Path, e: CommandError) -> Exception:
    last = (e.output.strip().splitlines() or [""])[-1].split()
    fields = dict(f.split("=", 1) for f in last if "=" in f)
    if fields.get("errno") in (str(errno.ENOSPC), str(errno.EDQUOT)):
        needs = int(fields.get("needs", "0") or 0)
        return DiskFullError.at(where, f"byte-compiling env {env!r}", needs)
    first = next((ln for ln in e.output.splitlines() if ln.startswith("error ")), "")
    return BuildError(
        f"byte-compiling env {env!r} failed, so the build does not count: "
        f"{first.split(' ', 3)[-1] if first else e.message}; fix the cause and build again.",
        detail=e.output,
    )


@dataclass(frozen=True)
class CondaFiles:
    """What the conda packages installed in a prefix declare (paths relative to it), and the
    ``.py`` files among them that need byte-code from the build: those whose package ships
    none for them (noarch python packages), and those whose prefix the installer rewrote (the
    shipped pyc no longer matches them); and the sha256 they give their files (``rel -> sha256``:
    after the installer's rewrite of the prefix where it made one)."""

    declared: set[str]
    sources: list[str]
    hashes: dict[str, str]


def conda_files(prefix: Path) -> CondaFiles:
    """:class:`CondaFiles` of ``prefix``, from its ``conda-meta``."""
    declared: set[str] = set()
    sources = []
    hashes: dict[str, str] = {}
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            data = json.loads(meta.read_bytes())
        except (OSError, ValueError):
            continue
        paths = (data.get("paths_data") or {}).get("paths") if isinstance(data, dict) else None
        if not isinstance(paths, list):
            continue
        entries = [p for p in paths if isinstance(p, dict) and isinstance(p.get("_path"), str)]
        shipped = {source_of(p["_path"]) for p in entries if p["_path"].endswith(".pyc")}
        for p in entries:
            rel = p["_path"]
            declared.add(rel)
            if p.get("path_type", "hardlink") not in ("softlink", "directory"):
                sha = p.get("sha256_in_prefix") or p.get("sha256")
                if isinstance(sha, str) and sha:
                    hashes[rel] = sha
            if (
                rel.endswith(".py")
                and rel.startswith("lib/python")
                and (rel not in shipped or p.get("prefix_placeholder"))
            ):
                sources.append(rel)
    return CondaFiles(declared, sources, hashes)


def source_of(pyc: str) -> str | None:
    """``a/b.py`` for ``a/__pycache__/b.cpython-311.pyc`` (None for a pyc outside ``__pycache__``)."""
    folder, _, name = pyc.rpartition("/")
    parent, _, cache = folder.rpartition("/")
    if cache != "__pycache__":
        return None
    stem = name.split(".", 1)[0]
    return f"{parent}/{stem}.py" if parent else f"{stem}.py"
