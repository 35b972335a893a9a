"""``hubstock diff``'s text: a :class:`~.diff.GenerationDiff` for a terminal."""

from __future__ import annotations

import json
from typing import Any

from .diff import GenerationDiff, InterpreterChange, PackageChange
from .records import Interpreter

SOURCES = {"pip": "PyPI", "module": "module"}


def _sha(s: str | None) -> str:
    return (s or "none")[:12]


def _pkg_line(p: PackageChange) -> str:
    source = SOURCES.get(p.manager, "conda")
    if p.change == "added":
        what = f"{p.after}"
    elif p.change == "removed":
        what = f"{p.before}"
    elif p.change == "rebuilt":
        what = f"{p.after} (build {p.before_build} -> {p.after_build})"
    elif p.change == "changed" and p.before == p.after and p.manager == "module":
        what = f"{p.after} (its modulefile changed: sha256 {_sha(p.before_build)} -> {_sha(p.after_build)})"
    elif p.change == "changed" and p.before == p.after:
        what = f"{p.after} (another file of the same version)"
    else:
        what = f"{p.before} -> {p.after}"
    return f"    {p.change:<10} {p.name} {what} ({source})"


def _interp(i: Interpreter) -> str:
    return i.path + (f", module {i.module}" if i.module else "")


def _interpreter_line(c: InterpreterChange) -> str:
    a, b = c.before, c.after
    if a is None or b is None:
        i = b or a
        assert i is not None
        what = f"python {i.version} ({_interp(i)})"
    elif a.version != b.version:
        what = f"python {a.version} -> {b.version} ({_interp(b)})"
    else:
        diffs = []
        if a.path != b.path:
            diffs.append(f"path {a.path} -> {b.path}")
        if a.module != b.module:
            diffs.append(f"module {a.module or 'none'} -> {b.module or 'none'}")
        if a.sha256 != b.sha256:
            diffs.append(f"sha256 {_sha(a.sha256)} -> {_sha(b.sha256)}")
        what = f"python {b.version} ({'; '.join(diffs)})"
    return f"    {c.change:<10} interpreter {what}"


def format_diff(d: GenerationDiff) -> str:
    """``hubstock diff`` on a terminal: what changed, kernel by kernel."""
    a = f"generation {d.before.generation}" if d.before else "nothing published"
    lines = [f"{a} -> generation {d.after.generation} (published {d.after.created} by {d.after.by})"]
    for k in d.kernels:
        label = f"kernel {k.name} ({k.display_name})"
        if k.pinned_of:
            label += f", previous build {k.build[:8]} of {k.pinned_of}"
        if k.groups:
            label += f", for {', '.join(k.groups)} only"
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
        if k.groups_before is not None:
            head += f"; was for {', '.join(k.groups_before) or 'everybody'}"
        lines.append(head)
        if not k.packages_known:
            lines.append("    (package lists unknown: a build is no longer on the root)")
        if k.interpreter:
            lines.append(_interpreter_line(k.interpreter))
        lines += [_pkg_line(p) for p in k.packages]
    s = d.server
    if s and s.change != "unchanged":
        lines.append(f"  server env {s.env}: {s.change}" + (f", build {s.build}" if s.build else ""))
        if s.interpreter:
            lines.append(_interpreter_line(s.interpreter))
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
