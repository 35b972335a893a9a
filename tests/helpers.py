"""Small helpers the tests share (fixtures are in conftest.py)."""

import os

import pytest


def need_root(what: str) -> None:
    """Fail in CI (which runs as root), skip elsewhere, when not root."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{what} need root (CI runs as root)")
        pytest.skip(f"{what} need root")
