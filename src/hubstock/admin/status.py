"""``hubstock status``: what the root holds and how it relates to the site."""

from __future__ import annotations

import os
from typing import Any

from ..errors import HubstockError
from ..site import Site
from ..store.root import Root
from .build import is_complete
from .envspec import load_env_spec
from .lockfile import lock_status


def collect_status(site: Site) -> dict[str, Any]:
    """The status document (the contract of ``status --json``)."""
    root = Root(site.root)
    envs: dict[str, Any] = {}
    for name in site.env_names():
        spec = load_env_spec(site, name)
        try:
            state = lock_status(site, spec).state
        except HubstockError:
            state = "stale"  # unreadable: nothing may build from it
        envs[name] = {
            "lock": state,
            "current": _current_build(root, name),
            "builds": _builds(root, name),
        }
    return {"root": str(site.root), "site": str(site.dir), "envs": envs, "published": published(root)}


def _current_build(root: Root, env: str) -> str | None:
    try:
        bid = os.readlink(root.env_current(env))
    except OSError:
        return None
    return bid if is_complete(root.build(env, bid), bid) else None


def _builds(root: Root, env: str) -> list[dict[str, Any]]:
    d = root.env(env)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir(), key=lambda p: p.stat().st_mtime if p.exists() else 0):
        if p.name.startswith(".") or p.is_symlink() or not p.is_dir():
            continue
        out.append({"id": p.name, "complete": is_complete(p, p.name)})
    return out


def published(root: Root) -> dict[str, Any]:
    """The published generation and its kernels (empty until something is published)."""
    from ..store.root import read_json

    try:
        gen = os.readlink(root.current)
    except OSError:
        return {"generation": None, "kernels": []}
    manifest = read_json(root.current / "manifest.json") or {}
    kernels = [
        {k: kern.get(k) for k in ("name", "display_name", "env", "build")}
        for kern in manifest.get("kernels", [])
    ]
    from .publish import generations

    return {"generation": os.path.basename(gen), "kernels": kernels, "generations": generations(root)}


def format_status(doc: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = [f"root: {doc['root']}"]
    if not doc["envs"]:
        lines.append("no environments in envs/")
    for name, env in doc["envs"].items():
        n = len(env["builds"])
        done = sum(b["complete"] for b in env["builds"])
        cur = env["current"] or "none"
        lines.append(f"  env {name:<16} lock {env['lock']:<8} current {cur:<18} builds {done}/{n} complete")
    pub = doc["published"]
    if pub["generation"]:
        lines.append(f"published generation {pub['generation']}:")
        for k in pub["kernels"]:
            lines.append(f"  kernel {k['name']:<20} {k['display_name']!r} on {k['env']}/{k['build']}")
    else:
        lines.append("nothing published yet")
    return "\n".join(lines)
