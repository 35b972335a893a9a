"""Small helpers the tests share (fixtures are in conftest.py)."""

import os
import time
from collections.abc import Callable

import pytest


def need_root(what: str) -> None:
    """Fail in CI (which runs as root), skip elsewhere, when not root."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{what} need root (CI runs as root)")
        pytest.skip(f"{what} need root")


def until(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    """Wait until ``check()`` is true, asking every 0.2 s; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
