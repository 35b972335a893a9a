"""``hubstock gc``: remove old generations, unused builds and unused cached packages.

Kept: the newest ``keep`` generations, the current one, and every generation a
live session uses; every build those name, each env's newest build
(``$ROOT/envs/<env>/current``, built but maybe not yet published), and every build a
live session names. Everything else under ``envs/`` and ``generations/`` goes,
interrupted builds included, and so do package-cache entries no kept build uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..progress import Progress
from ..site import Site
from ..store.builds import build_ids, current_build, env_names, read_provenance
from ..store.fs import empty_trash, remove_tree
from ..store.generations import current_name, generation, generations, unfinished
from ..store.records import RecordError
from ..store.root import Root
from ..store.sessions import live_sessions


@dataclass
class GcPlan:
    generations: list[str] = field(default_factory=list)
    builds: list[str] = field(default_factory=list)  # "<env>/<build-id>"
    packages: list[str] = field(default_factory=list)  # cache entries
    kept_generations: list[str] = field(default_factory=list)
    kept_builds: list[str] = field(default_factory=list)

    def paths(self, root: Root) -> list[Path]:
        out = [root.generations / g for g in self.generations]
        out += [root.envs / b for b in self.builds]
        for p in self.packages:
            out += [root.pkgs / p, root.pkgs / f"{p}.lock", root.downloads / p]
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

    used: set[str] = set()
    for b in plan.kept_builds:
        try:
            prov = read_provenance(root.envs / b)
        except RecordError:
            prov = None
        for p in prov.packages if prov else []:
            if p.manager == "conda":
                fn = p.url.rsplit("/", 1)[-1]
                used.add(fn)
                used.add(_strip_ext(fn))
    if root.pkgs.is_dir():
        entries = {p.name for p in root.pkgs.iterdir() if p.is_dir() and p.name not in ("downloads",)}
        if root.downloads.is_dir():
            entries |= {p.name for p in root.downloads.iterdir() if p.is_file()}
        plan.packages = sorted(e for e in entries if e not in used and not e.startswith("."))
    return plan


def _strip_ext(fn: str) -> str:
    for ext in (".conda", ".tar.bz2"):
        if fn.endswith(ext):
            return fn[: -len(ext)]
    return fn


def gc(site: Site, keep: int, dry_run: bool, progress: Progress) -> GcPlan:
    root = Root(site.root)
    with root.locked(on_wait=progress.step):
        plan = plan_gc(site, keep)
        if dry_run:
            return plan
        for p in plan.paths(root):
            if p.exists() or p.is_symlink():
                remove_tree(p, root.trash)
        empty_trash(root.trash)
        root.audit("gc", generations=plan.generations, builds=plan.builds, packages=len(plan.packages))
    return plan
