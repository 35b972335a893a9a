"""Where hubstock finds the external tools it drives (uv), and their environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..proc import run
from ..site import Site
from ..store.perms import close_cache, no_write_for_others
from ..store.root import Root
from ..store.rootmark import is_root


def uv_command() -> list[str]:
    """The uv executable: the one the ``uv`` package ships, else uv on PATH."""
    try:
        from uv import find_uv_bin

        return [find_uv_bin()]
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return [found]
        return [sys.executable, "-m", "uv"]


#: the umask uv runs with: group and other never write what it makes
UV_UMASK = 0o022


def uv_env(site: Site) -> dict[str, str]:
    """uv's environment: never downloads a Python; caches under the root unless told (or, before
    the root is made, as uv would on its own: ``hubstock lock`` makes no root)."""
    cache = os.environ.get("UV_CACHE_DIR") or (str(Root(site.root).uv_cache) if is_root(site.root) else None)
    return {
        **({"UV_CACHE_DIR": cache} if cache else {}),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }


def run_uv(
    site: Site, *args: str, what: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``uv ARGS`` (no user or project config, quiet) with hubstock's uv environment.

    uv runs with umask 022, whatever the admin's, so what it makes in the root's uv cache is not
    writable by others, but for its lock files (0666 on purpose, for caches users share), which
    :func:`_tidy_locks` closes; and the root's cache folder is made the admin's alone afterwards
    (:func:`~hubstock.store.perms.close_cache`), so no user can reach anything in it.
    """
    env = {**(env or {}), **uv_env(site)}  # ``env``: what the interpreter needs (its module's)
    root = Root(site.root)
    own_cache = env.get("UV_CACHE_DIR") == str(root.uv_cache)
    if own_cache:
        root.ensure()
    try:
        return run(
            [*uv_command(), *args[:2], "--no-config", "--quiet", *args[2:]],
            what=what,
            env=env,
            umask=UV_UMASK,
        )
    finally:
        if own_cache:
            _tidy_locks(root.uv_cache)
            close_cache(root.cache)


def _tidy_locks(cache: Path) -> None:
    """Take group and other write from uv's lock files (``*.lock``) in its cache. The unpacked
    wheels (``archive-v*``, most of the cache) hold none and are not walked; nothing else is
    looked at (a folder listing each, no ``stat`` per file)."""
    stack = [os.fspath(cache)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith("archive-v"):
                        stack.append(entry.path)
                elif entry.name.endswith(".lock"):
                    no_write_for_others(entry.path)


def compile_pylock(
    site: Site,
    requirements: list[str],
    *,
    python: str,
    target: str,
    constraints: tuple[str, ...] = (),
    index_url: str | None = None,
    what: str,
) -> str:
    """``uv pip compile`` of ``requirements`` for Python ``python`` (X.Y) on ``target`` (uv's
    platform name): the text of the pylock.toml (PEP 751) uv writes. A :class:`CommandError` when
    uv cannot resolve them."""
    with tempfile.TemporaryDirectory(prefix="hubstock-pip-") as tmp:
        req = Path(tmp, "requirements.in")
        req.write_text("".join(f"{r}\n" for r in requirements))
        extra = ["--index-url", index_url] if index_url else []
        if constraints:
            cons = Path(tmp, "constraints.txt")
            cons.write_text("".join(f"{c}\n" for c in constraints))
            extra += ["--constraint", str(cons)]
        out = Path(tmp, "pylock.toml")
        run_uv(
            site,
            "pip",
            "compile",
            "--format",
            "pylock.toml",
            "--python-version",
            python,
            "--python-platform",
            target,
            *extra,
            "--output-file",
            str(out),
            str(req),
            what=what,
        )
        return out.read_text()


def uv_error_summary(output: str) -> str:
    """uv's explanation of a failure as one line (its first few meaningful lines)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    keep = [ln.lstrip("×╰─▶ ").strip() for ln in lines if not ln.startswith(("hint", "warning"))]
    return re.sub(r"\s+", " ", " ".join(keep[:3]))[:500].rstrip(".") or "uv gave no reason"
