"""What a check of ``hubstock doctor`` says: its name, ok / warn / FAIL, the detail, and the fix.

Pure: no I/O. A check is a small function that returns :class:`Check` values; the command
prints one line per check and exits non-zero on any FAIL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

Status = Literal["ok", "warn", "FAIL"]


class Check(BaseModel):
    """One check's result. ``fix`` is one sentence (empty when there is nothing to do)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    status: Status
    detail: str
    fix: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name=name, status="ok", detail=detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name=name, status="warn", detail=detail, fix=fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name=name, status="FAIL", detail=detail, fix=fix)


def format_check(check: Check) -> str:
    """One line: ``FAIL  queue.gpu              no partition 'gpu' in Slurm... Fix: create it, or ...``."""
    line = f"{check.status:<4}  {check.name:<22} {check.detail}"
    if check.fix and check.status != "ok":
        line += f" Fix: {check.fix}"
    return line


def exit_code(checks: Iterable[Check]) -> int:
    """1 if any check failed, else 0."""
    return 1 if any(c.status == "FAIL" for c in checks) else 0
