"""Reading ``qstat -f`` and its kin."""

from __future__ import annotations

import re


def parse_qstat_f(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f``/``-fx``/``-Qf``/``-Bf`` output -> {id: {attribute: value}}; continuation lines
    (a tab, then the rest of a long value) are joined to their attribute."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last = None
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^(?:Job Id|Queue|Server|Reservation Id|Resv ID):\s*(\S+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            last = None
            continue
        if current is None:
            continue
        if line.startswith("\t") and last is not None:
            current[last] += line.strip()
            continue
        key, sep, value = line.strip().partition(" = ")
        if sep:
            current[key] = value
            last = key
    return out
