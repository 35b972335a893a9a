"""The OpenPBS rig's command line: ``python -m rigs.openpbs build|up|down|run|exec`` (see the
package's docstring)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # python rigs/openpbs
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from rigs.openpbs.build import build_info, locate_openpbs  # noqa: E402
from rigs.openpbs.config import DEFAULT_QUEUES, Queue  # noqa: E402
from rigs.openpbs.rig import OpenPBSRig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m rigs.openpbs",
        description="A private single-node OpenPBS in its own network namespace.",
    )
    ap.add_argument("action", choices=("build", "up", "down", "run", "exec"))
    ap.add_argument("workdir", type=Path, nargs="?")
    ap.add_argument("command", nargs="*", help="exec: the command to run inside the rig's namespace")
    ap.add_argument("--queues", default="", help="name:cpus:mem:walltime,... (default: debug and batch)")
    args = ap.parse_args(argv)
    if args.action == "build":
        prefix, seconds = locate_openpbs(log=lambda m: print(m, file=sys.stderr))
        print(prefix)
        how = "cached" if seconds is None else f"built in {seconds:.0f} s"
        print(f"# {how}: {build_info(prefix)}", file=sys.stderr)
        return 0
    if args.workdir is None:
        ap.error("a workdir is needed")
    queues = DEFAULT_QUEUES
    if args.queues:
        queues = tuple(
            Queue(n, int(c), m, w) for n, c, m, w in (q.split(":", 3) for q in args.queues.split(","))
        )
    rig = OpenPBSRig(args.workdir, queues=queues)
    if args.action == "down":
        rig.stop()
        print(f"stopped the rig in {args.workdir}")
        return 0
    if args.action == "exec":
        cp = subprocess.run(rig.ns_argv(args.command or ["bash"]), env=rig.command_env(), check=False)
        return cp.returncode
    rig.start()
    print(f"# OpenPBS rig up ({rig.start_kind} start) in {rig.timings['start']:.1f} s, pids {rig.pids}")
    print(
        f"# server {rig.server_name} on {rig.address} in the namespace of pid {rig.holder[0] if rig.holder else '?'}"
    )
    print(f"# run commands there: python -m rigs.openpbs exec {args.workdir} -- qstat -B")
    print(f"export PBS_CONF_FILE={rig.conf}")
    if args.action == "run":
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            rig.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
