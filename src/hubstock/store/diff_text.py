"""``hubstock diff``'s text: a :class:`~.diff.GenerationDiff` for a terminal."""

from __future__ import annotations

import json
from typing import Any

from .diff import GenerationDiff, PackageChange


def _pkg_line(p: PackageChange) -> str:
    source = "PyPI" if p.manager == "pip" else "conda"
    if p.change == "added":
        what = f"{p.after}"
    elif p.change == "removed":
        what = f"{p.before}"
    elif p.change == "rebuilt":
        what = f"{p.after} (build {p.before_build} -> {p.after_build})"
    else:
        what = f"{p.before} -> {p.after}"
    return f"    {p.change:<10} {p.name} {what} ({source})"


def format_diff(d: GenerationDiff) -> str:
    """``hubstock diff`` on a terminal: what changed, kernel by kernel."""
    a = f"generation {d.before.generation}" if d.before else "nothing published"
    lines = [f"{a} -> generation {d.after.generation} (published {d.after.created} by {d.after.by})"]
    for k in d.kernels:
        label = f"kernel {k.name} ({k.display_name})"
        if k.pinned_of:
            label += f", previous build {k.build[:8]} of {k.pinned_of}"
        if k.change == "unchanged":
            continue
        if k.change == "added":
            lines.append(f"  {label}: added, on {k.env}/{k.build}")
            continue
        if k.change == "removed":
            lines.append(f"  {label}: removed (was on {k.env}/{k.build})")
            continue
        head = f"  {label}: "
        if k.change == "renamed":
            head += f"renamed from {k.renamed_from}"
        else:
            head += "changed"
        if k.display_name_before:
            head += f"; display name was {k.display_name_before!r}"
        if k.build_before:
            head += f"; build {k.env_before}/{k.build_before} -> {k.env}/{k.build}"
        lines.append(head)
        if not k.packages_known:
            lines.append("    (package lists unknown: a build is no longer on the root)")
        lines += [_pkg_line(p) for p in k.packages]
    s = d.server
    if s and s.change != "unchanged":
        lines.append(f"  server env {s.env}: {s.change}" + (f", build {s.build}" if s.build else ""))
        lines += [_pkg_line(p) for p in s.packages]
    if d.extensions:
        lines.append("  extension defaults:")
        for e in d.extensions:
            key = " > ".join(e.key) or "(whole file)"
            if e.change == "added":
                lines.append(f"    {e.file}: {key}: added {_json(e.after)}")
            elif e.change == "removed":
                lines.append(f"    {e.file}: {key}: removed (was {_json(e.before)})")
            else:
                lines.append(f"    {e.file}: {key}: {_json(e.before)} -> {_json(e.after)}")
    if not d.changed:
        lines.append("  no changes")
    return "\n".join(lines)


def _json(v: Any) -> str:

    return json.dumps(v, sort_keys=True)
