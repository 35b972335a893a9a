"""``hubstock publish`` and ``hubstock rollback``: generations of kernels and defaults.

A generation is a directory that holds everything a user's server reads:

    $ROOT/generations/<gen>/share/jupyter/kernels/<kernel>/kernel.json   (+ logos)
    $ROOT/generations/<gen>/share/jupyter/lab/settings/overrides.json
    $ROOT/generations/<gen>/etc/jupyter/labconfig/page_config.json
    $ROOT/generations/<gen>/etc/jupyter/jupyter_server_config.py
    $ROOT/generations/<gen>/manifest.json                                (written last)

It is staged under a hidden name, every kernel in it is smoke-tested, it is made
read-only and renamed into place, and only then does ``$ROOT/current`` switch to
it, with one atomic rename. Readers that resolve ``current`` once see one whole
generation, old or new. Generations are numbered; old ones stay for rollback
until ``hubstock gc`` removes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PublishError
from ..progress import Progress
from ..site import Site
from ..store.root import Root, atomic_symlink, atomic_write, fsync_dir, now_iso, read_json, remove_tree
from .build import host_platform, is_complete, read_provenance
from .envspec import load_env_spec
from .extensions import load_extensions, render_server_config, write_extensions
from .kernels import (
    BuildRef,
    RenderedKernel,
    load_kernel_templates,
    render_template,
    smoke_test,
    write_kernel,
)
from .lockfile import build_id, packages_for, require_fresh_lock
from .policy import check_server_packages

MANIFEST = "manifest.json"
GEN_RE = re.compile(r"^\d{4,}$")


@dataclass(frozen=True)
class PublishResult:
    generation: str
    changed: bool


def generations(root: Root) -> list[str]:
    """Complete generations (with a manifest), oldest first."""
    if not root.generations.is_dir():
        return []
    gens = [p.name for p in root.generations.iterdir() if GEN_RE.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(gens, key=int)


def current_generation(root: Root) -> str | None:
    try:
        return os.path.basename(os.readlink(root.current))
    except OSError:
        return None


def read_manifest(root: Root, gen: str) -> dict[str, Any] | None:
    return read_json(root.generations / gen / MANIFEST)


def build_ref(site: Site, env: str) -> BuildRef:
    """The complete build of ``env``'s fresh lock (a :class:`PublishError` if there is none)."""
    spec = load_env_spec(site, env)
    lock = require_fresh_lock(site, spec)
    platform = host_platform()
    bid = build_id(lock, platform)
    prefix = Root(site.root).build(env, bid)
    if not is_complete(prefix, bid):
        raise PublishError(
            f"env {env!r} has no complete build of its lock (build {bid}); run `nox -s build-envs` "
            f"(or `hubstock build {env}`) first."
        )
    if env == site.settings.server.env:
        check_server_packages(site, env, (p.name for p in packages_for(lock, platform)))
    return BuildRef(env=env, build_id=bid, prefix=prefix, lock_hash=lock.metadata.content_hash[platform])


def publish(site: Site, progress: Progress) -> PublishResult:
    """Render, smoke-test and publish the site's kernels and defaults as a new generation."""
    root = Root(site.root)
    templates = load_kernel_templates(site)
    if not templates:
        raise PublishError("the site has no kernels: add kernels/<name>/kernel.json (see the README).")
    ext = load_extensions(site.extensions_dir)
    names = [t.name for t in templates]
    default_kernel = site.settings.publish.default_kernel or names[0]
    if default_kernel not in names:
        raise PublishError(
            f"hubstock.toml: publish.default_kernel is {default_kernel!r}, which is not a kernel in "
            f"kernels/ (the site has: {', '.join(names)})."
        )
    envs = sorted({t.env for t in templates})
    builds = {env: build_ref(site, env) for env in envs}
    server_env = site.settings.server.env
    server = None
    if server_env in site.env_names():
        server = builds.get(server_env) or build_ref(site, server_env)

    with root.locked(on_wait=progress.step):
        cur = current_generation(root)
        prev = read_manifest(root, cur) if cur else None
        kernels = [render_template(t, builds[t.env]) for t in templates]
        kernels += _pinned_kernels(root, cur, prev, kernels, site.settings.publish.keep_previous_builds)
        all_names = [k.name for k in kernels]
        digest = _digest(kernels, ext, server, default_kernel)
        if prev and prev.get("digest") == digest:
            progress.step(f"nothing changed since generation {cur}: not publishing")
            return PublishResult(cur, changed=False)

        gen = _next_generation(root)
        final = root.generations / gen
        staging = root.generations / f".staging-{gen}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            kdir = staging / "share" / "jupyter" / "kernels"
            for k in kernels:
                write_kernel(kdir, k)
            settings_dir = final / "share" / "jupyter" / "lab" / "settings"
            write_extensions(staging, ext, render_server_config(all_names, default_kernel, str(settings_dir)))
            progress.step(f"smoke-testing {len(kernels)} kernel(s): {', '.join(all_names)}")
            smoke_test(kernels, kdir, site.settings.publish.smoke_timeout)
            manifest = _manifest(gen, digest, kernels, builds, server, default_kernel)
            atomic_write(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            _make_read_only(staging)
            os.rename(staging, final)
            fsync_dir(root.generations)
        except BaseException:
            remove_tree(staging, root.trash)
            raise
        atomic_symlink(f"generations/{gen}", root.current)
        root.audit(
            "publish",
            generation=gen,
            previous=cur,
            kernels=all_names,
            builds={e: b.build_id for e, b in builds.items()},
        )
    progress.step(f"published generation {gen} ({len(kernels)} kernel(s))")
    return PublishResult(gen, changed=True)


def _pinned_kernels(
    root: Root, cur: str | None, prev: dict[str, Any] | None, new: list[RenderedKernel], keep: int
) -> list[RenderedKernel]:
    """Kernels of earlier builds, kept under pinned names for a transition period.

    For every stock kernel whose build changed, its previous kernelspec (exactly as
    published before) stays available as ``<name>-<build[:8]>``, up to ``keep``
    earlier builds per kernel, as long as those builds still exist.
    """
    if not prev or not cur or keep == 0:
        return []
    now = {k.name: k.build.build_id for k in new}
    candidates: dict[str, list[dict[str, Any]]] = {}
    for entry in prev.get("kernels", []):
        base = entry.get("pinned_of") or entry["name"]
        if base not in now or entry["build"] == now[base]:
            continue
        candidates.setdefault(base, []).append(entry)
    out = []
    for base, entries in candidates.items():
        seen = set()
        for entry in entries:  # the previous generation lists the newest build first
            if entry["build"] in seen or len(seen) >= keep:
                continue
            prefix = root.build(entry["env"], entry["build"])
            if not is_complete(prefix, entry["build"]):
                continue
            seen.add(entry["build"])
            src = root.generations / cur / "share" / "jupyter" / "kernels" / entry["name"]
            spec = json.loads((src / "kernel.json").read_text())
            name = f"{base}-{entry['build'][:8]}"
            if not entry.get("pinned_of"):
                spec["display_name"] = f"{spec['display_name']} (previous build {entry['build'][:8]})"
            spec["metadata"]["hubstock"]["pinned_of"] = base
            resources = {
                str(p.relative_to(src)): p.read_bytes()
                for p in src.rglob("*")
                if p.is_file() and p.name != "kernel.json"
            }
            ref = BuildRef(entry["env"], entry["build"], prefix, entry.get("lock_hash", ""))
            out.append(RenderedKernel(name=name, spec=spec, build=ref, resources=resources))
    return out


def _digest(kernels: list[RenderedKernel], ext, server: BuildRef | None, default_kernel: str) -> str:
    h = hashlib.sha256()
    blob = {
        "kernels": {k.name: k.spec for k in kernels},
        "resources": {
            k.name: {r: hashlib.sha256(d).hexdigest() for r, d in sorted(k.resources.items())}
            for k in kernels
        },
        "extensions": [ext.page_config, ext.overrides, ext.server_config],
        "server": server.build_id if server else None,
        "default_kernel": default_kernel,
    }
    h.update(json.dumps(blob, sort_keys=True).encode())
    return h.hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(gen, digest, kernels, builds, server, default_kernel) -> dict[str, Any]:
    from ..store.root import current_user

    return {
        "generation": gen,
        "digest": digest,
        "created": now_iso(),
        "by": current_user(),
        "default_kernel": default_kernel,
        "server": _build_json(server) if server else None,
        "builds": {env: _build_json(b) for env, b in builds.items()},
        "kernels": [
            {
                "name": k.name,
                "display_name": k.display_name,
                "language": k.spec.get("language"),
                "env": k.build.env,
                "build": k.build.build_id,
                "lock_hash": k.build.lock_hash,
                "pinned_of": k.spec["metadata"]["hubstock"].get("pinned_of"),
            }
            for k in kernels
        ],
    }


def _build_json(b: BuildRef) -> dict[str, Any]:
    prov = read_provenance(b.prefix) or {}
    return {
        "env": b.env,
        "build": b.build_id,
        "prefix": str(b.prefix),
        "lock_hash": b.lock_hash,
        "created": prov.get("created"),
    }


def _next_generation(root: Root) -> str:
    nums = (
        [int(p.name) for p in root.generations.iterdir() if GEN_RE.match(p.name)]
        if root.generations.is_dir()
        else []
    )
    return f"{max(nums, default=0) + 1:04d}"


def _make_read_only(top: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(top):
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o444)
        os.chmod(dirpath, 0o555)


def rollback(site: Site, gen: str | None, progress: Progress) -> str:
    """Make ``gen`` (default: the one before the current) the current generation again."""
    root = Root(site.root)
    with root.locked(on_wait=progress.step):
        gens = generations(root)
        cur = current_generation(root)
        if gen is None:
            earlier = [g for g in gens if cur is None or int(g) < int(cur)]
            if not earlier:
                raise PublishError(
                    f"there is no generation before {cur or 'the current one'} to roll back to "
                    f"(generations: {', '.join(gens) or 'none'})."
                )
            gen = earlier[-1]
        gen = f"{int(gen):04d}" if gen.isdigit() else gen
        if gen not in gens:
            raise PublishError(
                f"generation {gen!r} does not exist (generations: {', '.join(gens) or 'none'}); "
                "see `hubstock status`."
            )
        manifest = read_manifest(root, gen) or {}
        for k in manifest.get("kernels", []):
            if not is_complete(root.build(k["env"], k["build"]), k["build"]):
                raise PublishError(
                    f"generation {gen} cannot come back: its kernel {k['name']!r} needs build "
                    f"{k['env']}/{k['build']}, which no longer exists."
                )
        if gen != cur:
            atomic_symlink(f"generations/{gen}", root.current)
            root.audit("rollback", generation=gen, previous=cur)
    progress.step(f"generation {gen} is current")
    return gen
