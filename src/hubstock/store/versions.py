"""Comparing package versions: PEP 440 where both parse, else conda-style, else as strings."""

from __future__ import annotations

import re

try:  # a dependency of hubstock and of JupyterHub; the store itself needs only the standard library
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover
    Version = None  # type: ignore[assignment,misc]
    InvalidVersion = ValueError  # type: ignore[assignment,misc]

    def canonicalize_name(name: str) -> str:  # type: ignore[misc]
        return re.sub(r"[-_.]+", "-", name).lower()


_TOKEN_RE = re.compile(r"\d+|[A-Za-z]+")


def _conda_key(v: str) -> tuple[int, list[tuple[int, int | str]]]:
    """A sort key in the spirit of conda's VersionOrder: epoch, then numbers and words, where
    ``dev`` sorts first, other words before numbers (``1.0a1 < 1.0``) and ``post`` last."""
    epoch = 0
    if "!" in v:
        head, _, v = v.partition("!")
        epoch = int(head) if head.isdigit() else 0
    parts: list[tuple[int, int | str]] = []
    for tok in _TOKEN_RE.findall(v.split("+", 1)[0].lower()):
        if tok.isdigit():
            parts.append((2, int(tok)))
        elif tok == "dev":
            parts.append((0, tok))
        elif tok == "post":
            parts.append((3, tok))
        else:
            parts.append((1, tok))
    while parts and parts[-1] == (2, 0):  # 1.0 == 1.0.0
        parts.pop()
    return epoch, parts


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1: PEP 440 where both parse, else conda-style, else as strings."""
    if Version is not None:
        try:
            va, vb = Version(a), Version(b)
        except InvalidVersion:
            pass
        else:
            return (va > vb) - (va < vb)
    try:
        ka, kb = _conda_key(a), _conda_key(b)
        return (ka > kb) - (ka < kb)
    except TypeError:  # pragma: no cover - mixed tokens at one position are ranked, so unlikely
        return (a > b) - (a < b)
