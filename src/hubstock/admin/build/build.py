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

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ...errors import BuildError
from ...proc import run
from ...progress import Progress
from ...site import Site
from ...store.access import close_to, give_to_group, group_ids
from ...store.buildlock import write_lock_copy
from ...store.builds import (
    clear_damage,
    current_build,
    damage,
    is_complete,
    mark_complete,
    write_build_files,
    write_build_record,
    write_provenance,
)
from ...store.fs import atomic_symlink, empty_trash, make_read_only, move_to_trash, now_iso, remove_tree
from ...store.perms import ADMIN_DIR, PUBLIC_DIR, make_dir
from ...store.records import BuildProvenance, BuildRecord
from ...store.root import Root
from ...store.swap import exchange
from ..kinds import kind_of
from ..kinds.base import BuildPlan, Env, restricted_build_id
from .policy import check_server_packages
from .verify import build_file_list, file_map


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


def plan_build(site: Site, env: Env, platform: str) -> BuildPlan:
    """What ``env``'s fresh lock builds into on ``platform``; an env for some groups only gets a
    build id of its own (:func:`~..kinds.base.restricted_build_id`), and its groups must exist."""
    plan = kind_of(env).plan(site, env, platform)
    if env.groups:
        group_ids(env.groups, f"envs/{env.name}/env.toml")
        plan.build_id = restricted_build_id(plan.build_id, env.groups)
    return plan


def plan_lock(site: Site, env: Env, platform: str, lock_bytes: bytes) -> BuildPlan:
    """:func:`plan_build` of a kept lock (:meth:`~..kinds.base.Kind.plan_lock`)."""
    plan = kind_of(env).plan_lock(site, env, platform, lock_bytes)
    if env.groups:
        plan.build_id = restricted_build_id(plan.build_id, env.groups)
    return plan


def ensure_build(site: Site, env: Env, progress: Progress, plan: BuildPlan | None = None) -> BuildResult:
    """Make sure the build of ``env``'s fresh lock (or of ``plan``: a kept lock's) exists and is complete."""
    plan = plan or plan_build(site, env, host_platform())
    bid = plan.build_id
    check_server_packages(site, env.name, (p.name for p in plan.packages))
    root = Root(site.root)
    prefix = root.build(env.name, bid)
    if current_build(root, env.name) == bid and not damage(root, env.name, bid):
        progress.step(f"[{env.name}] build {bid} is up to date")
        return BuildResult(env.name, bid, prefix, built=False)
    with root.locked(on_wait=progress.warn):
        empty_trash(root.trash)
        damaged = is_complete(prefix, bid) and damage(root, env.name, bid) is not None
        if damaged:
            # published builds are in use: the replacement is made beside it and swapped in
            _replace(site, root, env, plan, prefix, progress)
            built = True
        elif not is_complete(prefix, bid):
            if os.path.lexists(prefix):
                progress.step(f"[{env.name}] removing the interrupted build {bid}")
                remove_tree(prefix, root.trash)
            write_build_record(root, build_into(site, root, env, plan, prefix, progress))
            clear_damage(root, env.name, bid)
            root.audit("build", env=env.name, build=bid)
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


#: the exit status of :mod:`.staged` when the system gives it no private mount namespace
NO_NAMESPACE = 3


def staging_of(root: Root, env: str, bid: str) -> Path:
    """Where the replacement of a damaged build is made (beside it; a dot name: no build)."""
    return root.env(env) / f".replacing-{bid}"


def run_staged(
    site: Site, env: str, bid: str, staging: Path, progress: Progress, what: str, lock: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run :mod:`.staged`: the build ``env/bid`` made in ``staging``, seen at the build's own path
    (of the env's lock, or of the kept ``lock``)."""
    argv: list[str | os.PathLike[str]] = [sys.executable, "-m", "hubstock.admin.build.staged"]
    argv += ["--site", site.dir, "--root", site.root, "--env", env, "--build", bid, "--staging", staging]
    argv += ["--lock", lock] if lock else []
    return run(
        [*argv, *(["--progress"] if progress.enabled else [])],
        what=what,
        check=False,
        stderr_to_terminal=True,
    )


def staged_error(proc: subprocess.CompletedProcess[str]) -> str:
    """What a failed :mod:`.staged` child said (its last line: ``{"error": ...}``)."""
    lines = proc.stdout.strip().splitlines()
    try:
        told = json.loads(lines[-1])["error"] if lines else ""
    except (ValueError, KeyError, TypeError):
        told = lines[-1] if lines else ""
    return told or f"status {proc.returncode}"


def _replace(site: Site, root: Root, env: Env, plan: BuildPlan, prefix: Path, progress: Progress) -> None:
    """Replace the damaged build at ``prefix`` with a new build of the same lock, never leaving
    ``prefix`` missing: the new build is installed by a child process that sees ``prefix`` as
    the staging folder (:mod:`.staged`), then the two folders are swapped in one step. A kill at
    any point leaves the damaged build (still recorded as damaged) or the new one."""
    bid = plan.build_id
    staging = staging_of(root, env.name, bid)
    remove_tree(staging, root.trash)  # what a killed repair left
    make_dir(staging, ADMIN_DIR)
    progress.step(f"[{env.name}] building a replacement beside the damaged build {bid}")
    proc = run_staged(
        site, env.name, bid, staging, progress, what=f"building the replacement of {env.name}/{bid}"
    )
    if proc.returncode == NO_NAMESPACE:
        progress.warn(
            f"[{env.name}] {proc.stdout.strip()}: the damaged build {bid} is rebuilt in place, and "
            "its kernel cannot start until that ends (run the repair as root to avoid it)."
        )
        remove_tree(staging, root.trash)
        remove_tree(prefix, root.trash)
        build_into(site, root, env, plan, prefix, progress)
    else:
        if proc.returncode != 0 or not is_complete(staging, bid):
            remove_tree(staging, root.trash)
            raise BuildError(
                f"the replacement of the damaged build {env.name}/{bid} could not be built "
                f"({staged_error(proc)}); the damaged build stays in place."
            )
        if not exchange(staging, prefix):  # a filesystem without RENAME_EXCHANGE: two renames
            move_to_trash(prefix, root.trash)
            os.rename(staging, prefix)
        # the damaged build, now there: deleted by the next build, which empties the trash while it
        # holds the lock (its unlinks then move the change times of cached files under that lock)
        move_to_trash(staging, root.trash)
    clear_damage(root, env.name, bid)
    root.audit("build", env=env.name, build=bid, replaced="damaged")


def build_into(
    site: Site, root: Root, env: Env, plan: BuildPlan, prefix: Path, progress: Progress
) -> BuildRecord:
    """Make the build of ``plan`` in the empty ``prefix``; what reproduces it (the caller keeps it
    on the root with :func:`~hubstock.store.builds.write_build_record`)."""
    make_dir(root.env(env.name), PUBLIC_DIR)
    make_dir(prefix, ADMIN_DIR)  # nobody else may reach into a build before it is read-only
    where = f"envs/{env.name}/env.toml"
    if env.groups:  # before anything is installed: an admin who may not give it to them learns now
        give_to_group(prefix, env.groups[0], where)
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
        groups=list(env.groups),
        created=now_iso(),
        builder=f"hubstock {__version__}",
        **({"schema": BuildProvenance.RESTRICTED_SCHEMA} if env.groups else {}),
    )
    write_provenance(prefix, provenance)
    write_lock_copy(prefix, plan.lock_bytes)  # for users to download
    tree: list[tuple[str, os.stat_result]] = []
    # one walk for both; the files linked from the caches are read-only (checked before)
    make_read_only(prefix, seen=lambda path, st: tree.append((path, st)), already=done.linked)
    os.chmod(prefix, 0o700 if env.groups else 0o755)  # the file list and the marker are the writes left
    files = build_file_list(
        prefix,
        plan.build_id,
        known=done.known,
        compiled=done.compiled,
        declared=done.declared,
        tree=tree,
    )
    write_build_files(prefix, files)  # what hubstock verify checks the rest against
    record = BuildRecord(
        build_id=plan.build_id,
        env=env.name,
        kind=env.kind,
        platform=plan.platform,
        lock_name=env.lock_name,
        lock=plan.lock_bytes.decode("utf-8", errors="surrogateescape"),
        files=file_map(prefix, tree, recorded=files, linked=done.linked, hashes=done.hashes),
        created=provenance.created,
    )
    mark_complete(prefix, plan.build_id)  # last: from now on the build counts
    if env.groups:  # a restricted build is never open to others, not even while it is made
        close_to(prefix, list(env.groups), where)
    else:
        os.chmod(prefix, 0o555)
    return record
