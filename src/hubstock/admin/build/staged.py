"""The child process that builds the replacement of a damaged build (``build._replace``).

Run as ``python -m hubstock.admin.build.staged --site DIR --root ROOT --env NAME --build ID
--staging DIR [--lock FILE]``. It enters a mount namespace of its own in which the build's path
shows the staging folder (:func:`~hubstock.store.swap.enter_private_bind`), then builds the env's
lock (or the kept lock in FILE: ``hubstock reproduce``) there exactly as a first build would,
paths and all: every other process still sees the damaged build at that path (or nothing,
for a build that is gone) until the parent swaps the two folders. The parent holds the root's
lock meanwhile.

Exit status: 0 with the build complete in the staging folder; :data:`.build.NO_NAMESPACE`
with one line on standard output when the system gives no private mount namespace; 1 with
``{"error": "..."}`` on standard output when the build failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...errors import HubstockError
from ...progress import Progress
from ...site import load_site
from ...store.root import Root
from ...store.swap import die_with_parent, enter_private_bind
from ..kinds import load_env
from .build import NO_NAMESPACE, build_into, host_platform, plan_build, plan_lock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hubstock.admin.build.staged")
    p.add_argument("--site", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--build", required=True)
    p.add_argument("--staging", required=True, type=Path)
    p.add_argument("--lock", type=Path, help="build this kept lock, not the env's own")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    die_with_parent()
    try:
        site = load_site(args.site, args.root)
        root = Root(site.root)
        prefix = root.build(args.env, args.build)
        try:
            enter_private_bind(args.staging, prefix)
        except OSError as e:
            print(f"this system gives no private mount namespace ({e.strerror})")
            return NO_NAMESPACE
        env = load_env(site, args.env)
        if args.lock:
            plan = plan_lock(site, env, host_platform(), args.lock.read_bytes())
            if plan.build_id != args.build:
                raise HubstockError(
                    f"the kept lock of {args.env}/{args.build} builds {plan.build_id} here, not "
                    f"{args.build} (a venv's interpreter or an env's groups changed since)"
                )
        else:
            plan = plan_build(site, env, host_platform())
            if plan.build_id != args.build:
                raise HubstockError(
                    f"the lock of {args.env} now gives build {plan.build_id}, not {args.build}; "
                    "run `hubstock build` for the new lock."
                )
        build_into(site, root, env, plan, prefix, Progress(enabled=args.progress))
    except HubstockError as e:
        print(json.dumps({"error": str(e)}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
