"""``hubstock status``: what the root holds and how it relates to the site."""

from __future__ import annotations

from typing import Any

from ..errors import HubstockError
from ..site import Site
from ..store.builds import build_ids, current_build, damage, is_complete
from ..store.generations import generations, resolve_current
from ..store.records import RecordError
from ..store.root import Root
from .lock.envconf import read_env_conf
from .lock.lockcache import known_fresh


def lock_state(site: Site, name: str) -> str:
    """``fresh``, ``stale`` or ``missing``: remembered for a conda lock seen fresh, byte for byte,
    with the same settings (:mod:`.lockcache`); else read (and the spec checked) in full."""
    if known_fresh(site, name):
        return "fresh"
    from .kinds import kind_of, load_env  # only now: YAML and the spec grammar cost more than the rest

    env = load_env(site, name)  # a spec that is not valid is an error, named
    try:
        return kind_of(env).lock_state(site, env)
    except HubstockError:
        return "stale"  # unreadable: nothing may build from it


def collect_status(site: Site) -> dict[str, Any]:
    """The status document (the contract of ``status --json``)."""
    root = Root(site.root)
    envs: dict[str, Any] = {}
    for name in site.env_names():
        state = lock_state(site, name)
        conf = read_env_conf(site, name)
        envs[name] = {
            "kind": conf.kind if conf else "conda",
            "lock": state,
            "current": current_build(root, name),
            "builds": _builds(root, name),
        }
    return {
        "root": str(site.root),
        "root_exists": root.path.is_dir(),
        "site": str(site.dir),
        "envs": envs,
        "published": published(root),
    }


def _builds(root: Root, env: str) -> list[dict[str, Any]]:
    """Each build: complete (its marker), and damaged (the last ``hubstock verify`` found files
    that differ from what its packages declare: the next ``build`` replaces it)."""
    out = []
    for b in build_ids(root, env):
        entry: dict[str, Any] = {"id": b, "complete": is_complete(root.build(env, b), b)}
        found = damage(root, env, b)
        if found is not None:
            entry["damaged"] = found.count or len(found.problems)
        out.append(entry)
    return out


def published(root: Root) -> dict[str, Any]:
    """The published generation and its kernels (empty until something is published)."""
    gen = resolve_current(root)
    if gen is None:
        return {"generation": None, "kernels": [], "generations": generations(root)}
    try:
        manifest = gen.manifest()
    except RecordError:
        kernels = []
    else:
        kernels = [
            {
                "name": k.name,
                "display_name": k.display_name,
                "env": k.env,
                "build": k.build,
                "groups": k.groups,
            }
            for k in manifest.kernels
        ]
    return {"generation": gen.name, "kernels": kernels, "generations": generations(root)}


def format_status(doc: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = [f"root: {doc['root']}"]
    if not doc.get("root_exists", True):
        lines[0] += " (does not exist: not built yet, or the shared filesystem is not mounted there)"
    if not doc["envs"]:
        lines.append("no environments in envs/")
    for name, env in doc["envs"].items():
        n = len(env["builds"])
        done = sum(b["complete"] for b in env["builds"])
        cur = env["current"] or "none"
        lines.append(
            f"  env {name:<16} {env['kind']:<6} lock {env['lock']:<8} current {cur:<18} builds {done}/{n} complete"
        )
        for b in env["builds"]:
            if b.get("damaged"):
                lines.append(
                    f"    build {b['id']} is DAMAGED: {b['damaged']} file(s) differ "
                    f"(`hubstock verify {name}`); the next `hubstock build` replaces it"
                )
    pub = doc["published"]
    if pub["generation"]:
        lines.append(f"published generation {pub['generation']}:")
        for k in pub["kernels"]:
            only = f", for {', '.join(k['groups'])} only" if k.get("groups") else ""
            lines.append(f"  kernel {k['name']:<20} {k['display_name']!r} on {k['env']}/{k['build']}{only}")
    else:
        lines.append("nothing published yet")
    return "\n".join(lines)
