"""Where hubstock finds the external tools it drives (uv), and their environment."""

from __future__ import annotations

import os
import shutil
import sys

from .layout import Root
from .settings import Site


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


def uv_env(site: Site) -> dict[str, str]:
    """uv's environment: never downloads a Python; caches under the root unless told."""
    return {
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR") or str(Root(site.root).uv_cache),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
