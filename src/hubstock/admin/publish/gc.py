"""``hubstock gc``: remove old generations, unused builds and unused cached packages.

Kept: the newest ``keep`` generations, the current one, and every generation a
live session uses; every build those name, each env's newest build
(``$ROOT/envs/<env>/current``, built but maybe not yet published), and every build a
live session names. Everything else under ``envs/`` and ``generations/`` goes,
interrupted builds included, and so do package-cache entries no kept build uses.

A spawn hook pins its generation without the root's lock, so gc never removes a generation
a hook may have pinned: the hook writes its session record *before* it checks that its
generation still exists and is not announced for removal (and starts over with the new current
one if it is), and gc first announces the generations it removes
(:func:`~hubstock.store.generations.announce_removal`), then reads the session records again and
keeps whatever one of them names, and only then moves the rest into the trash (gone at once for
readers) and deletes it. Either gc sees the record, or the hook sees the announcement: a pinned
generation is never removed, nor out of its place for a moment. (After the move the records are
read once more, and anything one names is brought back: a record written by a hook of an older
hubstock, which does not read announcements.)

``--dry-run`` reads and creates nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...progress import Progress
from ...site import Site
from ...store.builds import build_ids, clear_damage, current_build, env_names, read_provenance
from ...store.fs import empty_trash, move_to_trash, remove_tree
from ...store.generations import (
    announce_removal,
    current_name,
    generation,
    generations,
    unfinished,
    withdraw_removal,
)
from ...store.records import RecordError
from ...store.root import Root
from ...store.sessions import live_sessions
from ..build import cache, wheels
from ..build.seals import pkg_watermarks
from ..build.wheels import entries as wheel_entries
from ..build.wheels import wheel_id


@dataclass
class GcPlan:
    generations: list[str] = field(default_factory=list)
    builds: list[str] = field(default_factory=list)  # "<env>/<build-id>"
    packages: list[str] = field(default_factory=list)  # cache entries (conda packages, then wheels)
    kept_generations: list[str] = field(default_factory=list)
    kept_builds: list[str] = field(default_factory=list)

    def paths(self, root: Root) -> list[Path]:
        return [*self.tree_paths(root), *self.package_paths(root)]

    def tree_paths(self, root: Root) -> list[Path]:
        return [root.generations / g for g in self.generations] + [root.envs / b for b in self.builds]

    def package_paths(self, root: Root) -> list[Path]:
        out = []
        for p in self.packages:
            if os.path.lexists(root.wheel_entry(p)):
                out.append(root.wheel_entry(p))
            else:
                out += [root.pkg_entry(p), root.pkg_lock(p), root.downloads / p]
        return out


def plan_gc(site: Site, keep: int) -> GcPlan:
    root = Root(site.root)
    plan = GcPlan()
    gens = generations(root)
    cur = current_name(root)
    sessions = live_sessions(root, site.settings.gc.session_max_age_hours)
    keep_gens = set(gens[-keep:]) | {g for g in [cur] if g} | {s.generation for s in sessions}
    plan.kept_generations = [g for g in gens if g in keep_gens]
    plan.generations = [g for g in gens if g not in keep_gens]
    # staging leftovers of interrupted publishes, and numbered folders never finished
    plan.generations += unfinished(root)

    keep_builds: set[str] = set()
    for g in plan.kept_generations:
        keep_builds |= generation(root, g).manifest().build_keys()
    for s in sessions:
        keep_builds |= set(s.builds)
    all_builds = []
    for env in env_names(root):
        bid = current_build(root, env)
        if bid:
            keep_builds.add(f"{env}/{bid}")
        all_builds += [f"{env}/{b}" for b in sorted(build_ids(root, env))]
    plan.kept_builds = [b for b in all_builds if b in keep_builds]
    plan.builds = [b for b in all_builds if b not in keep_builds]
    plan.packages = _unused_packages(root, plan.kept_builds)
    return plan


def _unused_packages(root: Root, kept_builds: list[str]) -> list[str]:
    """Cache entries (extracted packages, downloaded archives, the wheel cache's installed pip
    packages) no kept build uses."""
    used: set[str] = set()
    for b in kept_builds:
        try:
            prov = read_provenance(root.envs / b)
        except RecordError:
            prov = None
        for p in prov.packages if prov else []:
            if p.manager == "conda":
                fn = p.url.rsplit("/", 1)[-1]
                used.add(fn)
                used.add(_strip_ext(fn))
            else:
                used.add(wheel_id(p.name, p.version, p.sha256))
    unused_wheels = [k for k in wheel_entries(root) if k.rsplit("-", 1)[0] not in used]
    if not root.pkgs.is_dir():
        return unused_wheels
    entries = {p.name for p in root.pkgs.iterdir() if p.is_dir() and p != root.downloads}
    if root.downloads.is_dir():
        entries |= {p.name for p in root.downloads.iterdir() if p.is_file()}
    return sorted(e for e in entries if e not in used and not e.startswith(".")) + unused_wheels


def _strip_ext(fn: str) -> str:
    for ext in (".conda", ".tar.bz2"):
        if fn.endswith(ext):
            return fn[: -len(ext)]
    return fn


def gc(site: Site, keep: int, dry_run: bool, progress: Progress) -> GcPlan:
    root = Root(site.root)
    with root.locked(on_wait=progress.warn, create=not dry_run):
        plan = plan_gc(site, keep)
        if dry_run:
            return plan
        pkg_marks, wheel_marks = pkg_watermarks(root), wheels.wheel_watermarks(root)
        intact_pkgs, intact_wheels = (
            cache.intact_entries(root, pkg_marks),
            wheels.intact_entries(root, wheel_marks),
        )
        if plan.generations:
            announce_removal(root, plan.generations)
        try:
            _bring_back_what_sessions_use(site, root, plan, {})  # before anything moves
            moved = {p: move_to_trash(p, root.trash) for p in plan.tree_paths(root)}
            _bring_back_what_sessions_use(site, root, plan, moved)
        finally:
            withdraw_removal(root)
        plan.packages = _unused_packages(root, plan.kept_builds)
        for p in plan.package_paths(root):
            remove_tree(p, root.trash)
        for b in plan.builds:
            env, bid = b.split("/", 1)
            clear_damage(root, env, bid)
        empty_trash(root.trash)
        # the deleted builds' unlinks moved the change times of the cached files they linked
        pkg_marks.advance(p for p in intact_pkgs if p not in plan.packages)
        wheel_marks.advance(w for w in intact_wheels if w not in plan.packages)
        root.audit("gc", generations=plan.generations, builds=plan.builds, packages=len(plan.packages))
    return plan


def _bring_back_what_sessions_use(
    site: Site, root: Root, plan: GcPlan, moved: dict[Path, Path | None]
) -> None:
    """Read the session records again and keep what they name (bringing back, from ``moved``,
    what was moved away already): once gc has announced what it removes, a hook that pinned one
    of those after :func:`plan_gc` read the records has written its record by now, or will see
    the announcement (or the generation gone) and pin the current one instead."""
    sessions = live_sessions(root, site.settings.gc.session_max_age_hours)
    gens = {s.generation for s in sessions} & set(plan.generations)
    builds = {b for s in sessions for b in s.builds} & set(plan.builds)
    for g in gens:
        _restore(moved, root.generations / g)
        with contextlib.suppress(RecordError):
            builds |= generation(root, g).manifest().build_keys() & set(plan.builds)
    for b in builds:
        _restore(moved, root.envs / b)
    plan.generations = [g for g in plan.generations if g not in gens]
    plan.kept_generations = sorted({*plan.kept_generations, *gens}, key=lambda g: (len(g), g))
    plan.builds = [b for b in plan.builds if b not in builds]
    plan.kept_builds = sorted({*plan.kept_builds, *builds})


def _restore(moved: dict[Path, Path | None], path: Path) -> None:
    trashed = moved.get(path)
    if trashed is not None and os.path.lexists(trashed) and not os.path.lexists(path):
        os.rename(trashed, path)
