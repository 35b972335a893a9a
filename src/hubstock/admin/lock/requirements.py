"""PyPI requirements as a site writes them: one PEP 508 requirement each, from an index.

Shared by the conda kind (an ``environment.yml``'s ``pip:`` section) and the venv kind
(``requirements.in``); no YAML, no solver.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SpecError
from .lockhash import plain_requirement


def check_requirement(rel: str, req: str) -> str:
    """``req`` (a PEP 508 requirement from ``rel``) stripped; options and direct URLs are refused:
    every package comes from an index, with its sha256."""
    if plain_requirement(req) is not None:  # valid as it is: no need for the full parser
        return req.strip()
    from packaging.requirements import InvalidRequirement, Requirement

    if req.strip().startswith("-"):
        raise SpecError(f"{rel}: pip option {req!r} is not supported; list requirements only.")
    try:
        parsed = Requirement(req)
    except InvalidRequirement as e:
        raise SpecError(f"{rel}: {req!r} is not a valid pip requirement ({_first_line(e)}).") from None
    if parsed.url:
        raise SpecError(
            f"{rel}: pip requirement {req!r} is a direct URL; hubstock locks pip packages from the "
            "index with their sha256, so publish it to an index or a conda channel."
        )
    return req.strip()


def read_requirements(path: Path, rel: str) -> list[str]:
    """The requirements of a ``requirements.in``, one per line (``#`` comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"{rel} does not exist; list the env's Python packages in it, one per line."
        ) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{rel} is not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
    reqs = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        reqs.append(check_requirement(rel, line))
    if not reqs:
        raise SpecError(f"{rel} lists no packages; add at least one (e.g. ipykernel).")
    return reqs


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
