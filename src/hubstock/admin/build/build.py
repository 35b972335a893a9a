"""``hubstock build``: a fresh lock becomes an immutable, verified build on the root, whatever
the env's kind (:mod:`..kinds`).

The build id comes from the lock (and what else defines the build: a venv's interpreter), so
building the same lock again is a no-op. The kind installs into a folder only the admin can
reach; then, for every kind alike: group and other write bits are removed, provenance and the
lock's copy are recorded, every file is listed for ``hubstock verify``, and the completion
marker is written last. A build directory without the marker is an interrupted build: it is
removed before the next attempt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ...progress import Progress
from ...site import Site
from ...store.buildlock import write_lock_copy
from ...store.builds import (
    clear_damage,
    current_build,
    damage,
    is_complete,
    mark_complete,
    write_build_files,
    write_provenance,
)
from ...store.fs import atomic_symlink, empty_trash, make_read_only, now_iso, remove_tree
from ...store.perms import ADMIN_DIR, PUBLIC_DIR, make_dir
from ...store.records import BuildProvenance
from ...store.root import Root
from ..kinds import kind_of
from ..kinds.base import BuildPlan, Env
from .policy import check_server_packages
from .verify import build_file_list


@dataclass(frozen=True)
class BuildResult:
    env: str
    build_id: str
    prefix: Path
    built: bool  # False when it was already complete


#: conda's name for this machine's platform, by (system, machine): no solver import for it
_PLATFORMS = {
    ("Linux", "x86_64"): "linux-64",
    ("Linux", "aarch64"): "linux-aarch64",
    ("Linux", "ppc64le"): "linux-ppc64le",
    ("Darwin", "x86_64"): "osx-64",
    ("Darwin", "arm64"): "osx-arm64",
    ("Windows", "AMD64"): "win-64",
}


def host_platform() -> str:
    import platform

    known = _PLATFORMS.get((platform.system(), platform.machine()))
    if known:
        return known
    from rattler import Subdir  # any other: the solver knows them all

    return str(Subdir.current())


def ensure_build(site: Site, env: Env, progress: Progress) -> BuildResult:
    """Make sure the build of ``env``'s fresh lock exists and is complete."""
    kind = kind_of(env)
    platform = host_platform()
    plan = kind.plan(site, env, platform)
    bid = plan.build_id
    check_server_packages(site, env.name, (p.name for p in plan.packages))
    root = Root(site.root)
    prefix = root.build(env.name, bid)
    if current_build(root, env.name) == bid and not damage(root, env.name, bid):
        progress.step(f"[{env.name}] build {bid} is up to date")
        return BuildResult(env.name, bid, prefix, built=False)
    with root.locked(on_wait=progress.step):
        empty_trash(root.trash)
        damaged = is_complete(prefix, bid) and damage(root, env.name, bid) is not None
        if damaged or not is_complete(prefix, bid):
            if prefix.exists():
                what = "damaged" if damaged else "interrupted"
                progress.step(f"[{env.name}] removing the {what} build {bid}")
                remove_tree(prefix, root.trash)
            _build(site, root, env, plan, prefix, progress)
            clear_damage(root, env.name, bid)
            root.audit("build", env=env.name, build=bid, **({"replaced": "damaged"} if damaged else {}))
            built = True
        else:
            built = False
        atomic_symlink(bid, root.env_current(env.name))
    progress.step(f"[{env.name}] build {bid} is complete")
    return BuildResult(env.name, bid, prefix, built=built)


def ensure_builds(site: Site, envs: list[Env], progress: Progress) -> list[BuildResult]:
    """:func:`ensure_build` for each of ``envs``; then once more for any whose build a later
    one found damaged (a cached package it links was changed in place)."""
    results = [ensure_build(site, env, progress) for env in envs]
    root = Root(site.root)
    for i, (env, result) in enumerate(zip(envs, results, strict=True)):
        if damage(root, env.name, result.build_id) is not None:
            again = ensure_build(site, env, progress)
            results[i] = BuildResult(env.name, again.build_id, again.prefix, built=True)
    return results


def _build(site: Site, root: Root, env: Env, plan: BuildPlan, prefix: Path, progress: Progress) -> None:
    make_dir(root.env(env.name), PUBLIC_DIR)
    make_dir(prefix, ADMIN_DIR)  # nobody else may reach into a build before it is read-only
    done = kind_of(env).install(site, root, env, plan, prefix, progress)
    provenance = BuildProvenance(
        build_id=plan.build_id,
        env=env.name,
        kind=env.kind,
        platform=plan.platform,
        lock_content_hash=plan.lock_content_hash,
        lock_platform_hash=plan.lock_platform_hash,
        packages=plan.packages,
        interpreter=plan.interpreter,
        modules=plan.modules,
        created=now_iso(),
        builder=f"hubstock {__version__}",
    )
    write_provenance(prefix, provenance)
    write_lock_copy(prefix, plan.lock_bytes)  # for users to download
    tree: list[tuple[str, os.stat_result]] = []
    # one walk for both; the files linked from the caches are read-only (checked before)
    make_read_only(prefix, seen=lambda path, st: tree.append((path, st)), already=done.linked)
    os.chmod(prefix, 0o755)  # the file list and the marker are the writes left
    files = build_file_list(
        prefix,
        plan.build_id,
        known=done.known,
        compiled=done.compiled,
        declared=done.declared,
        tree=tree,
    )
    write_build_files(prefix, files)  # what hubstock verify checks the rest against
    mark_complete(prefix, plan.build_id)  # last: from now on the build counts
    os.chmod(prefix, 0o555)
