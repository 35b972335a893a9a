"""The ``hubstock`` command.

    hubstock [--site DIR] [--root DIR] init-root [--moved]
                                       lock [ENV...] [--check] [--update]
                                       build [ENV...]
                                       publish
                                       status [--json]
                                       diff [GEN_A] [GEN_B] [--json]
                                       rollback [GEN]
                                       gc [--keep N] [--dry-run]
                                       doctor [--json] [--as-user USER] [--queue Q] [--no-job] [--timeout S]
                                       verify [ENV...] [--repair]
                                       mine create|list|show|lock|verify|remove NAME ...

``HUBSTOCK_SITE``, ``HUBSTOCK_ROOT`` and ``HUBSTOCK_WAIT`` stand in for the flags (``--root`` and
``HUBSTOCK_ROOT`` are relative to the working directory; ``--wait SECONDS`` bounds the wait for the
root's lock). ``-q`` and ``-v`` go before
or after the command; ``build``, ``publish``, ``rollback``, ``gc``, ``verify`` and
``status`` take ``--json`` (what was done, on stdout). A failure prints one sentence
on stderr; ``-v`` adds the underlying output. Exit status: 0 success, 1 failure,
2 usage or site configuration, 130 interrupted. A closed stdout ends quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import DiskFullError, HubstockError, ModuleError, UsageError, is_disk_full
from .progress import Progress

if TYPE_CHECKING:
    from .site import Site


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hubstock",
        description="Locked environments and stock kernels for a batch-scheduled JupyterHub.",
    )
    p.add_argument("--site", help="the site repository (default: $HUBSTOCK_SITE or the current directory)")
    p.add_argument("--root", help="the shared root (default: $HUBSTOCK_ROOT or 'root' in hubstock.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    p.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        default=os.environ.get("HUBSTOCK_WAIT") or None,
        help="give up (exit 1, naming the holder) if another command holds the root's lock this long "
        "(default: $HUBSTOCK_WAIT, else wait as long as it takes)",
    )
    p.add_argument("--version", action="version", version=f"hubstock {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lk = sub.add_parser(
        "lock", help="lock each env's spec (conda-lock.yml, pylock.toml or modules.lock.json)"
    )
    lk.add_argument("envs", nargs="*", metavar="ENV", help="environments (default: all)")
    mode = lk.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if any lock is missing or stale")
    mode.add_argument("--update", action="store_true", help="solve again even where the lock is fresh")
    mode.add_argument(
        "--if-needed",
        action="store_true",
        help="lock only what has no lock, or a venv lock made for another Python than its interpreter's "
        "(the site kit's build-envs does this; a stale lock is still an error)",
    )

    ir = sub.add_parser("init-root", help="make the shared root (once; every other command needs it made)")
    ir.add_argument(
        "--moved", action="store_true", help="adopt a root that was made elsewhere and moved or copied here"
    )
    ir.add_argument("--json", action="store_true", help="machine-readable output")

    bd = sub.add_parser("build", help="build the locked environments on the root")
    bd.add_argument("envs", nargs="*", metavar="ENV", help="environments (default: all)")
    bd.add_argument("--json", action="store_true", help="machine-readable output")

    pb = sub.add_parser("publish", help="smoke-test the kernels and publish them as a new generation")
    pb.add_argument("--json", action="store_true", help="machine-readable output")

    rb = sub.add_parser("rollback", help="make an earlier generation current again")
    rb.add_argument("generation", nargs="?", metavar="GEN", help="generation (default: the previous one)")
    rb.add_argument("--json", action="store_true", help="machine-readable output")

    gcp = sub.add_parser("gc", help="remove old generations, unused builds and cached packages")
    gcp.add_argument("--keep", type=int, metavar="N", help="generations to keep (default: [gc] keep)")
    gcp.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gcp.add_argument("--json", action="store_true", help="machine-readable output")

    vf = sub.add_parser("verify", help="re-hash builds and the package cache against their packages")
    vf.add_argument("envs", nargs="*", metavar="ENV", help="environments (default: every env on the root)")
    vf.add_argument("--repair", action="store_true", help="remove damaged cache entries, rebuild builds")
    vf.add_argument("--json", action="store_true", help="machine-readable output")

    rp = sub.add_parser(
        "reproduce",
        help="build a build again from its kept lock and compare it with the original, file by file",
    )
    rp.add_argument(
        "what",
        metavar="BUILD|GEN",
        help="ENV/BUILD, a build id, or a generation (each of its builds; 'current')",
    )
    rp.add_argument("--into", type=Path, metavar="DIR", help="keep the rebuild in DIR/<env>-<build>")
    rp.add_argument(
        "--restore", action="store_true", help="put an identical rebuild of a build gc removed back in place"
    )
    rp.add_argument(
        "--publish",
        action="store_true",
        help="and publish kernels of that build beside today's (NAME-<build>), restored first if it was gone",
    )
    rp.add_argument(
        "--unpublish", action="store_true", help="withdraw the kernels --publish gave it (no rebuild)"
    )
    rp.add_argument("--json", action="store_true", help="machine-readable output")

    ex = sub.add_parser(
        "export", help="write a generation, its kernels, defaults and build locks as one archive"
    )
    ex.add_argument("generation", metavar="GEN", help="the generation ('current': the published one)")
    ex.add_argument(
        "-o",
        dest="output",
        type=Path,
        metavar="FILE",
        help="the archive (default: hubstock-generation-GEN.tar)",
    )
    ex.add_argument("--json", action="store_true", help="machine-readable output")

    mi = sub.add_parser(
        "mirror", help="write every package of some generations as a conda channel and a simple index"
    )
    mi.add_argument("dest", type=Path, metavar="DIR", help="the mirror's folder (made, or added to)")
    mi.add_argument("generations", nargs="*", metavar="GEN", help="generations (default: the current one)")
    mi.add_argument("--json", action="store_true", help="machine-readable output")

    im = sub.add_parser(
        "import",
        help="check an archive of `hubstock export`, build its locks and publish its generation here",
    )
    im.add_argument("archive", type=Path, metavar="ARCHIVE", help="the archive `hubstock export` wrote")
    im.add_argument("--json", action="store_true", help="machine-readable output")

    un = sub.add_parser("units", help="render the hub's and the proxy's systemd units from hubstock.toml")
    un.add_argument("--out", metavar="DIR", help="write the unit files into DIR (default: print them)")
    un.add_argument("--jupyterhub", metavar="PATH", help="the jupyterhub command (default: found on PATH)")
    un.add_argument("--proxy", metavar="PATH", help="configurable-http-proxy (default: [hub] proxy_command)")

    st = sub.add_parser("status", help="show locks, builds and what is published")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    df = sub.add_parser("diff", help="what changed between two published generations, kernel by kernel")
    df.add_argument(
        "gen_a", nargs="?", metavar="GEN_A", help="the earlier one (default: the one before GEN_B)"
    )
    df.add_argument("gen_b", nargs="?", metavar="GEN_B", help="the later one (default: the current one)")
    df.add_argument("--json", action="store_true", help="machine-readable output")

    dr = sub.add_parser("doctor", help="check the site end to end, on the hub node and from a compute node")
    dr.add_argument("--json", action="store_true", help="machine-readable output: one entry per check")
    dr.add_argument("--as-user", metavar="USER", help="the probe job's account (default: [doctor] user)")
    dr.add_argument(
        "--queue", metavar="Q", help="the probe job's queue (default: [doctor] queue, the default queue)"
    )
    dr.add_argument("--no-job", action="store_true", help="only check the hub node: submit no probe job")
    dr.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds the probe job may take (default: [doctor] timeout)",
    )

    from .personal.args import add_parser as add_mine  # argparse only: nothing heavy before main's start

    add_mine(sub)

    # each command's own --help opens with what the command list says of it
    for choice in sub._choices_actions:  # argparse keeps the commands' help texts there
        sub.choices[choice.dest].description = f"hubstock {choice.dest}: {choice.help}."
    for cmd in sub.choices.values():  # -v and -q after the command too (SUPPRESS: unset keeps the top's)
        cmd.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        cmd.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return p


#: the shape of every ``--json`` document (its ``format`` key; README "Machine-readable output"):
#: raised when a key changes meaning or goes away, not when one is added
JSON_FORMAT = 1


def _print_json(doc: dict) -> None:
    print(json.dumps({"format": JSON_FORMAT, **doc}, indent=2))


VERBOSE_HELP = "show every step and the output of the commands hubstock runs (not with -q)"
QUIET_HELP = "show no progress, only warnings and errors (not with -v)"


def cmd_lock(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("lock")
    from .admin.kinds import kind_of, load_envs

    bad = []
    for env in load_envs(site, args.envs):
        kind = kind_of(env)
        state = kind.lock_state(site, env)
        if args.check:
            if state != "fresh":
                bad.append(f"{env.lock_rel} is {state}")
            continue
        if args.if_needed and state == "fresh":
            try:
                why = _lock_misfit(site, env)
            except ModuleError as e:
                if not env.optional:
                    raise
                print(f"hubstock: env {env.name!r} (optional) left out: {e}", file=sys.stderr)
                continue
            if why is None:
                progress.step(f"[{env.name}] lock is up to date")
                continue
            progress.warn(f"[{env.name}] {why}: locking it again")  # said even in CI
        elif args.if_needed and state == "stale":
            bad.append(f"{env.lock_rel} is stale")
            continue
        elif state == "fresh" and not args.update:
            progress.step(f"[{env.name}] lock is up to date")
            continue
        try:
            kind.lock(site, env, progress)
        except ModuleError as e:
            if not env.optional:
                raise
            print(f"hubstock: env {env.name!r} (optional) left out: {e}", file=sys.stderr)
            continue
        progress.step(f"[{env.name}] wrote {env.lock_rel}")
    if bad:
        fix = (
            "run `hubstock lock ENV` and commit the locks"
            if args.if_needed
            else "run `nox -s lock` and commit the locks"
        )
        print(f"hubstock: {'; '.join(bad)}; {fix}.", file=sys.stderr)
        return 1
    return 0


def _lock_misfit(site: Site, env) -> str | None:
    """Why a fresh lock does not fit this machine (a venv locked for another Python), or None."""
    if env.kind != "venv":
        return None
    from .admin.kinds.venv import VenvKind, site_interpreter

    locked = VenvKind().locked_python(env)
    have = site_interpreter(site, env).minor
    return (
        None if locked == have else f"{env.lock_rel} was made for Python {locked}, the interpreter is {have}"
    )


def cmd_build(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("build")
    from .admin.build.build import ensure_builds, host_platform
    from .admin.kinds import kind_of, load_envs

    envs = load_envs(site, args.envs)
    if not envs:
        raise HubstockError(
            f"the site {site.dir} has no environments: add envs/<env>/ with an env.toml or environment.yml."
        )
    kept = []
    for env in envs:
        if env.optional:
            try:
                if kind_of(env).lock_state(site, env) == "missing":
                    raise ModuleError(
                        f"{env.lock_rel} is missing and `hubstock lock {env.name}` could not make it here"
                    )
                kind_of(env).plan(site, env, host_platform())
            except ModuleError as e:
                print(f"hubstock: env {env.name!r} (optional) left out: {e}", file=sys.stderr)
                continue
        kept.append(env)
    done = []
    for result in ensure_builds(site, kept, progress):
        done.append({"env": result.env, "build": result.build_id, "built": result.built})
        if not args.json:
            print(f"{result.env}: {result.build_id} ({'built' if result.built else 'up to date'})")
    if args.json:
        _print_json({"root": str(site.root), "builds": done})
    return 0


def _checked_root(site: Site, args: argparse.Namespace) -> None:
    """Every command that reads or changes what was built first reads the root's marker
    (:func:`~hubstock.store.rootmark.check_root`): an absent root, an empty mount point, a typo or
    another site's root stops it with one sentence, before anything is read or made; one that
    changes the root also needs it writable (not a read-only mount)."""
    use = ROOT_USE.get(args.command)
    if use is None:
        return
    from .site import EMBEDDED_ROOT
    from .store.rootmark import check_root

    root, write = Path(site.root), use(args)
    if root == site.dir / EMBEDDED_ROOT and not os.path.lexists(root):
        # the site's own root (no root configured: trying hubstock out) is read as empty until
        # the command that first writes it makes it, once its input has been checked; a shared
        # root is made once, by `hubstock init-root`
        return
    check_root(root, write=write)


#: the commands that use the root: whether the command (with these arguments) changes it
ROOT_USE = {
    "build": lambda a: True,
    "publish": lambda a: True,
    "rollback": lambda a: True,
    "gc": lambda a: not a.dry_run,
    "verify": lambda a: a.repair,
    "reproduce": lambda a: True,  # the rebuild uses the root's caches, as a build does
    "export": lambda a: True,  # a build without a record gets one
    "import": lambda a: True,
    "mirror": lambda a: False,
    "status": lambda a: False,
    "diff": lambda a: False,
    "mine": lambda a: False,  # read only: a user's builds go to their own folder
}


def cmd_init_root(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .store.rootmark import init_root

    marker, made = init_root(Path(site.root), moved=args.moved)
    if args.json:
        _print_json({"root": str(site.root), "id": marker.id, "made": made})
    else:
        state = "made" if made else "already a root"
        print(f"{site.root}: {state} (root {marker.id}, made {marker.created} by {marker.by})")
    return 0


def cmd_status(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.status import collect_status, format_status

    doc = collect_status(site)
    if args.json:
        _print_json(doc)
    else:
        print(format_status(doc))
    return 0


def cmd_publish(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("publish")
    from .admin.publish.publish import publish

    result = publish(site, progress, smoke=args.smoke_worker)
    if args.json:
        doc = {
            "generation": result.generation,
            "published": result.changed,
            "kernels": list(result.kernels),
            "removed_staging": list(result.removed_staging),
        }
        _print_json(doc)
    else:
        print(f"generation {result.generation} ({'published' if result.changed else 'unchanged'})")
    return 0


def cmd_rollback(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.publish.rollback import rollback

    gen = rollback(site, args.generation, progress)
    if args.json:
        _print_json({"generation": gen})
    else:
        print(f"generation {gen} is current")
    return 0


def cmd_gc(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .admin.publish.gc import gc

    keep = args.keep if args.keep is not None else site.settings.gc.keep
    if keep < 1:
        raise UsageError(f"--keep {keep}: at least the current generation is kept; use 1 or more.")
    plan = gc(site, keep, args.dry_run, progress)
    if args.json:
        doc = {  # the same keys with --dry-run: "removed" is then what a run without it removes
            "dry_run": args.dry_run,
            "removed": {
                "generations": plan.generations,
                "builds": plan.builds,
                "packages": plan.packages,
            },
            "kept": {"generations": plan.kept_generations, "builds": plan.kept_builds},
        }
        _print_json(doc)
        return 0
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


def _admin_extra(command: str) -> None:
    """``lock``, ``build``, ``publish`` and ``verify`` run on the admin machine, with its tools (the
    ``admin`` extra): one sentence on a machine installed for another role (the hub node)."""
    import importlib.util
    import shutil

    from .errors import SiteError

    missing = [name for name in ("rattler", "jupyter_client") if importlib.util.find_spec(name) is None]
    if importlib.util.find_spec("uv") is None and shutil.which("uv") is None:
        missing.append("uv")
    if missing:
        raise SiteError(
            f"hubstock {command} runs on the admin machine and needs its tools ({', '.join(missing)} "
            "not installed here); install them with `pip install 'hubstock[admin]'`."
        )


def _hub_extra(command: str) -> None:
    """``units`` and ``doctor`` run on the hub node, with the hub's packages: one sentence without them."""
    from .errors import SiteError

    for name in ("jupyterhub", "batchspawner"):
        try:
            __import__(name)
        except ImportError:
            raise SiteError(
                f"hubstock {command} runs on the hub node and needs the hub's packages ({name} is not "
                "installed here); install them with `pip install 'hubstock[hub]'`."
            ) from None


def cmd_units(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    import shutil

    _hub_extra("units")
    from .errors import SiteError
    from .hub.config import ensure_secret_file, ensure_state_dir
    from .hub.units import Executables, render_units, scheduler_programs
    from .store.fs import atomic_write

    def find(given: str | None, name: str, what: str) -> str:
        path = given or shutil.which(name)
        if not path:
            raise SiteError(f"{what} ({name!r}) is not on PATH; install it or pass its path.")
        path = os.path.abspath(path)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise SiteError(
                f"{what} {path}: there is no such program; give the path of {name} on the hub node."
            )
        return path

    jupyterhub = find(args.jupyterhub, "jupyterhub", "--jupyterhub")
    proxy = find(args.proxy, site.settings.hub.proxy_command[0], "--proxy")
    scheduler_dirs = []
    for program in scheduler_programs(site):
        path = shutil.which(program)
        if not path:
            raise SiteError(
                f"the hub runs {program!r} for its scheduler ({site.settings.spawner.scheduler}), and it is "
                "not on PATH here: run `hubstock units` on the hub node, with the scheduler's commands on PATH."
            )
        scheduler_dirs.append(os.path.dirname(os.path.abspath(path)))
    exe = Executables(jupyterhub=jupyterhub, proxy=proxy, scheduler_dirs=tuple(scheduler_dirs))
    units = render_units(site, exe)
    if args.out and site.settings.hub.proxy_external:
        # the proxy's unit reads the token the hub uses: make it now (mode 0600), so the
        # proxy can start before the hub's first start
        ensure_secret_file(ensure_state_dir(site) / "proxy_auth_token")
    for name, text in units.items():
        if args.out:
            atomic_write(Path(args.out) / name, text)
            progress.step(f"wrote {Path(args.out) / name}")
        else:
            print(f"# --- {name}\n{text}")
    return 0


def cmd_diff(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    """Reads only the root: it still answers after the site repository has moved on."""
    from .store.catalog import Catalog, previous_generation
    from .store.diff_text import format_diff
    from .store.generations import normalise, resolve_current
    from .store.records import RecordError
    from .store.root import Root

    root = Root(site.root)
    catalog = Catalog(root)
    names = catalog.generation_names()

    def known(gen: str) -> str:
        gen = normalise(gen)
        if gen not in names:
            raise UsageError(
                f"generation {gen!r} does not exist on {root.path} (generations: {', '.join(names) or 'none'}); "
                "see `hubstock status`."
            )
        return gen

    named = [known(g) for g in (args.gen_a, args.gen_b) if g]  # an unknown one is usage (2), first
    if args.gen_b:
        after = named[-1]
    else:
        current = resolve_current(root)
        if current is None:
            raise HubstockError(f"nothing is published on {root.path} yet: run `hubstock publish` first.")
        after = current.name
    before = named[0] if args.gen_a else previous_generation(after, names)
    try:
        diff = catalog.diff(catalog.generation(before) if before else None, catalog.generation(after))
    except RecordError as e:  # a manifest this hubstock cannot read: the root is the fault (table: 2)
        raise UsageError(str(e)) from None
    if args.json:
        _print_json(diff.model_dump(mode="json"))
    else:
        print(format_diff(diff))
    return 0


def cmd_export(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("export")
    from .admin.publish.transfer import export

    done = export(site, args.generation, args.output, progress)
    if args.json:
        _print_json(
            {
                "generation": done.generation,
                "archive": str(done.archive),
                "builds": list(done.builds),
                "files": done.files,
            }
        )
    else:
        print(
            f"generation {done.generation}: {len(done.builds)} build(s), {done.files} file(s) in {done.archive}"
        )
    return 0


def cmd_mirror(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("mirror")
    from .admin.mirror import mirror

    done = mirror(site, args.dest, args.generations, progress)
    if args.json:
        _print_json(
            {
                "dest": str(done.dest),
                "generations": list(done.generations),
                "conda": done.conda,
                "pip": done.pip,
                "added": done.added,
            }
        )
    else:
        print(
            f"{done.dest}: {done.conda} conda and {done.pip} pip package file(s) of generation(s) "
            f"{', '.join(done.generations)} ({done.added} added); list it under `mirrors` in hubstock.toml"
        )
    return 0


def cmd_import(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("import")
    from .admin.publish.transfer import import_archive

    done = import_archive(site, args.archive, progress)
    if args.json:
        _print_json(
            {
                "generation": done.generation,
                "published": done.published,
                "built": list(done.built),
                "kernels": list(done.kernels),
            }
        )
    elif done.published:
        print(f"published generation {done.generation} from {args.archive}: {', '.join(done.kernels)}")
    else:
        print(f"generation {done.generation} has all of {args.archive} already: nothing to do")
    return 0


def cmd_reproduce(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("reproduce")
    from .admin.build.reproduce import describe, reproduce, unpublish

    if args.unpublish:
        done = unpublish(site, args.what, progress)
    else:
        done = reproduce(
            site, args.what, progress, into=args.into, restore=args.restore, publish=args.publish
        )
    if args.json:
        _print_json({"builds": [r.to_json() for r in done]})
    else:
        for r in done:
            print(
                f"{r.env}/{r.build_id}: its kernels withdrawn in generation {r.generation}"
                if args.unpublish
                else describe(r)
            )
    return 0 if all(r.identical for r in done) else 1


def cmd_verify(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    _admin_extra("verify")
    from .admin.build.repair import verify_and_repair
    from .admin.build.verify import verify

    report = (
        verify_and_repair(site, args.envs, progress)
        if args.repair
        else verify(site, args.envs, False, progress)
    )
    if args.json:
        _print_json(report.to_json())
    else:
        for b in report.builds:
            for f in b.findings:
                print(f.line())
            state = "repaired" if b.repaired else "ok" if b.ok else f"DAMAGED ({len(b.findings)} file(s))"
            print(f"build {b.env}/{b.build_id}: {state}")
        for key, findings in sorted(report.kernels.items()):
            for f in findings:
                print(f.line())
            print(f"kernel {key}: {'closed again' if key in report.repaired_kernels else 'OPEN TO OTHERS'}")
        for dist, findings in sorted(report.cache.items()):
            for f in findings:
                print(f.line())
            print(f"cached package {dist}: {'removed' if dist in report.repaired_cache else 'DAMAGED'}")
        for line in report.left:
            print(f"not repaired: {line}")
        bad = sum(not b.ok for b in report.builds)
        print(
            f"verified {len(report.builds)} build(s) and the package cache: {bad} damaged build(s), "
            f"{len(report.cache)} damaged cached package(s)"
            + (f", {len(report.kernels)} kernel(s) open to others" if report.kernels else "")
            + ("" if report.ok or args.repair else "; run `hubstock verify --repair`")
        )
    return 0 if report.ok else 1


def cmd_mine(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    from .personal.commands import cmd_mine as run_mine

    return run_mine(site, args, progress)


def cmd_doctor(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    """One line per check (ok, warn or FAIL with its fix), or ``--json``; exit 1 on any FAIL. The probe
    job is cancelled on Ctrl-C and SIGTERM before doctor exits."""
    _hub_extra("doctor")
    from .errors import SiteError
    from .hub.doctor import DoctorOptions, exit_code, format_check, run_doctor

    opts = DoctorOptions(as_user=args.as_user, queue=args.queue, job=not args.no_job, timeout=args.timeout)
    if args.timeout is not None and args.timeout <= 0:
        raise SiteError(f"--timeout {args.timeout:g}: give the probe job a positive number of seconds.")
    try:
        checks = run_doctor(
            site,
            opts,
            emit=(lambda c: None) if args.json else (lambda c: print(format_check(c), flush=True)),
            log=progress.step,
        )
    except KeyboardInterrupt:
        print("hubstock doctor: interrupted; the probe job was cancelled.", file=sys.stderr)
        return 130
    if args.json:
        worst = "FAIL" if exit_code(checks) else "warn" if any(c.status == "warn" for c in checks) else "ok"
        _print_json({"status": worst, "checks": [c.model_dump() for c in checks]})
    return exit_code(checks)


COMMANDS = {
    "lock": cmd_lock,
    "build": cmd_build,
    "diff": cmd_diff,
    "publish": cmd_publish,
    "status": cmd_status,
    "rollback": cmd_rollback,
    "gc": cmd_gc,
    "units": cmd_units,
    "doctor": cmd_doctor,
    "init-root": cmd_init_root,
    "verify": cmd_verify,
    "reproduce": cmd_reproduce,
    "export": cmd_export,
    "mirror": cmd_mirror,
    "import": cmd_import,
    "mine": cmd_mine,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `mine create NAME --from K PKG...`: packages after an option too (argparse stops at it)
        if getattr(args, "mine_command", None) == "create" and not any(x.startswith("-") for x in extra):
            args.packages += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.verbose and args.quiet:
        parser.error("-v (--verbose) and -q (--quiet) say opposite things; give one of them")
    logging.basicConfig(level=logging.WARNING, format="hubstock: %(message)s")
    logging.getLogger("hubstock").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    progress = Progress(enabled=False if args.quiet else (True if args.verbose else None))
    # what hubstock and its tools create is never writable by others, whatever the caller's umask
    # (the modes that matter are also set explicitly: hubstock.store.perms)
    old_umask = os.umask(0o022)
    try:
        with contextlib.ExitStack() as stack:
            args.smoke_worker = None
            if args.command == "publish":
                # the smoke tests' worker starts before the site is loaded: its import of
                # jupyter_client overlaps with this process's own (hubstock.admin.publish.smoke)
                from .admin.publish.smoke import SmokeWorker

                args.smoke_worker = stack.enter_context(SmokeWorker.start())
            elif args.command == "build":
                # likewise the conda installer's process: it imports py-rattler meanwhile
                from .admin.build.installer import prestart

                stack.enter_context(prestart())
            from .site import load_site  # pydantic and the site's models: after the worker's start

            site = load_site(args.site, args.root)
            if args.wait is not None:
                from .store.root import LOCK_WAIT

                LOCK_WAIT.set(float(args.wait))
            _checked_root(site, args)
            code = COMMANDS[args.command](site, args, progress)
            sys.stdout.flush()
            return code
    except HubstockError as e:
        print(f"hubstock: {e}", file=sys.stderr)
        if e.detail and (args.verbose or e.show_detail):
            print(e.detail.rstrip(), file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        _quiet_stdout()  # the reader went away (`| head`): nothing left to say to it
        return 0
    except OSError as e:
        if not is_disk_full(e):
            raise
        print(f"hubstock: {DiskFullError.at(e.filename or os.getcwd(), 'writing')}", file=sys.stderr)
        return DiskFullError.exit_code
    except KeyboardInterrupt:
        print("hubstock: interrupted; nothing half-done counts, run the command again.", file=sys.stderr)
        return 130
    finally:
        os.umask(old_umask)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def entry() -> None:
    """The console script: ``main()``, then a hard exit.

    py-rattler's runtime can abort the interpreter while it shuts down, after all
    work is done; leaving with ``os._exit`` keeps the exit code the one ``main`` chose.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code)
