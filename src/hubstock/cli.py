"""The ``hubstock`` command.

    hubstock [--site DIR] [--root DIR] lock [ENV...] [--check] [--update]
                                       build [ENV...]
                                       publish
                                       status [--json]
                                       diff [GEN_A] [GEN_B] [--json]
                                       rollback [GEN]
                                       gc [--keep N] [--dry-run]

``HUBSTOCK_SITE`` and ``HUBSTOCK_ROOT`` stand in for the flags. A failure prints
one sentence on stderr and exits non-zero; ``-v`` adds the underlying output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import HubstockError
from .progress import Progress
from .site import Site, load_site


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubstock",
        description="Locked environments and stock kernels for a batch-scheduled JupyterHub.",
    )
    p.add_argument("--site", help="the site repository (default: $HUBSTOCK_SITE or the current directory)")
    p.add_argument("--root", help="the shared root (default: $HUBSTOCK_ROOT or 'root' in hubstock.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="show progress and commands' output")
    p.add_argument("-q", "--quiet", action="store_true", help="show no progress, only errors")
    p.add_argument("--version", action="version", version=f"hubstock {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lk = sub.add_parser("lock", help="solve envs/<env>/environment.yml into conda-lock.yml")
    lk.add_argument("envs", nargs="*", metavar="ENV", help="environments (default: all)")
    mode = lk.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if any lock is missing or stale")
    mode.add_argument("--update", action="store_true", help="solve again even where the lock is fresh")

    bd = sub.add_parser("build", help="build the locked environments on the root")
    bd.add_argument("envs", nargs="*", metavar="ENV", help="environments (default: all)")

    sub.add_parser("publish", help="smoke-test the kernels and publish them as a new generation")

    rb = sub.add_parser("rollback", help="make an earlier generation current again")
    rb.add_argument("generation", nargs="?", metavar="GEN", help="generation (default: the previous one)")

    gcp = sub.add_parser("gc", help="remove old generations, unused builds and cached packages")
    gcp.add_argument("--keep", type=int, metavar="N", help="generations to keep (default: [gc] keep)")
    gcp.add_argument("--dry-run", action="store_true", help="only list what would be removed")

    st = sub.add_parser("status", help="show locks, builds and what is published")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    df = sub.add_parser("diff", help="what changed between two published generations, kernel by kernel")
    df.add_argument(
        "gen_a", nargs="?", metavar="GEN_A", help="the earlier one (default: the one before GEN_B)"
    )
    df.add_argument("gen_b", nargs="?", metavar="GEN_B", help="the later one (default: the current one)")
    df.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def cmd_lock(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.envspec import load_env_spec
    from .admin.lockfile import lock_status
    from .admin.solve import lock_env

    bad = []
    for name in site.check_env_names(args.envs):
        spec = load_env_spec(site, name)
        state = lock_status(site, spec).state
        if args.check:
            if state != "fresh":
                bad.append(f"envs/{name}/conda-lock.yml is {state}")
            continue
        if state == "fresh" and not args.update:
            progress.step(f"[{name}] lock is up to date")
            continue
        lock_env(site, spec, progress)
        progress.step(f"[{name}] wrote envs/{name}/conda-lock.yml")
    if bad:
        print(f"hubstock: {'; '.join(bad)}; run `nox -s lock` and commit the locks.", file=sys.stderr)
        return 1
    return 0


def cmd_build(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.build import ensure_build
    from .admin.envspec import load_env_spec

    specs = [load_env_spec(site, name) for name in site.check_env_names(args.envs)]
    if not specs:
        raise HubstockError(f"the site {site.dir} has no environments: add envs/<env>/environment.yml.")
    for spec in specs:
        result = ensure_build(site, spec, progress)
        print(f"{spec.name}: {result.build_id} ({'built' if result.built else 'up to date'})")
    return 0


def cmd_status(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.status import collect_status, format_status

    doc = collect_status(site)
    print(json.dumps(doc, indent=2) if args.json else format_status(doc))
    return 0


def cmd_publish(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.publish import publish

    result = publish(site, progress)
    print(f"generation {result.generation} ({'published' if result.changed else 'unchanged'})")
    return 0


def cmd_rollback(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.rollback import rollback

    print(f"generation {rollback(site, args.generation, progress)} is current")
    return 0


def cmd_gc(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.gc import gc

    keep = args.keep if args.keep is not None else site.settings.gc.keep
    if keep < 1:
        raise HubstockError(f"--keep {keep}: at least the current generation is kept; use 1 or more.")
    plan = gc(site, keep, args.dry_run, progress)
    verb = "would remove" if args.dry_run else "removed"
    for g in plan.generations:
        print(f"{verb} generation {g}")
    for b in plan.builds:
        print(f"{verb} build {b}")
    print(
        f"{verb} {len(plan.packages)} cached package(s); kept generations: "
        f"{', '.join(plan.kept_generations) or 'none'}; kept builds: {len(plan.kept_builds)}"
    )
    return 0


def cmd_diff(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    """Reads only the root: it still answers after the site repository has moved on."""
    from .store.catalog import Catalog, previous_generation
    from .store.diff_text import format_diff
    from .store.generations import normalise, resolve_current
    from .store.root import Root

    root = Root(site.root)
    catalog = Catalog(root)
    names = catalog.generation_names()

    def known(gen: str) -> str:
        gen = normalise(gen)
        if gen not in names:
            raise HubstockError(
                f"generation {gen!r} does not exist on {root.path} (generations: {', '.join(names) or 'none'}); "
                "see `hubstock status`."
            )
        return gen

    if args.gen_b:
        after = known(args.gen_b)
    else:
        current = resolve_current(root)
        if current is None:
            raise HubstockError(f"nothing is published on {root.path} yet: run `hubstock publish` first.")
        after = current.name
    before = known(args.gen_a) if args.gen_a else previous_generation(after, names)
    diff = catalog.diff(catalog.generation(before) if before else None, catalog.generation(after))
    print(json.dumps(diff.model_dump(mode="json"), indent=2) if args.json else format_diff(diff))
    return 0


COMMANDS = {
    "lock": cmd_lock,
    "build": cmd_build,
    "diff": cmd_diff,
    "publish": cmd_publish,
    "status": cmd_status,
    "rollback": cmd_rollback,
    "gc": cmd_gc,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="hubstock: %(message)s")
    logging.getLogger("hubstock").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    progress = Progress(enabled=False if args.quiet else (True if args.verbose else None))
    try:
        site = load_site(args.site, args.root)
        return COMMANDS[args.command](site, args, progress)
    except HubstockError as e:
        print(f"hubstock: {e}", file=sys.stderr)
        if e.detail and (args.verbose or e.show_detail):
            print(e.detail.rstrip(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hubstock: interrupted; nothing half-done counts, run the command again.", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script: ``main()``, then a hard exit.

    py-rattler's runtime can abort the interpreter while it shuts down, after all
    work is done; leaving with ``os._exit`` keeps the exit code the one ``main`` chose.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
