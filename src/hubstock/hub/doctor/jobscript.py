"""The doctor's probe job: its request (:func:`probe_options`) and its command (:func:`probe_shell`).

The batch script around it is the hub's own (:mod:`hubstock.batchjob`), with the probe's
command where the server would be.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ...limits import Limits, Options, Seconds

PROBE_WALLTIME = Seconds(600)
REPORT = "report.json"


def probe_options(limits: Limits, queue: str) -> Options:
    """The site's defaults on ``queue`` (one GPU on a GPU queue), for at most ten minutes."""
    q = limits.queue(queue)
    opts = limits.defaults_for(q)
    return opts.model_copy(
        update={
            "walltime": min(opts.walltime, PROBE_WALLTIME),
            "gpus": max(opts.gpus, 1) if q.max_gpus else 0,
        }
    )


def probe_shell(dir: Path, python: str, root: str) -> str:
    """The job's command: run the node probe with the server build's python; if that python cannot
    run, still say what the shell sees. The report appears whole (written, then renamed)."""
    q = {k: shlex.quote(str(v)) for k, v in {"d": dir, "py": python, "root": root}.items()}
    return f"""#!/bin/sh
# hubstock doctor's probe job: reports from the compute node into {REPORT}
started=$(date +%s.%N 2>/dev/null); case "$started" in *[!0-9.]*|"") started=$(date +%s);; esac
{q["py"]} {q["d"]}/node_probe.py {q["d"]}/args.json "$started" > {q["d"]}/report.tmp 2> {q["d"]}/probe.err
rc=$?
if [ "$rc" -eq 0 ]; then mv {q["d"]}/report.tmp {q["d"]}/{REPORT}; exit 0; fi
if [ -r {q["root"]} ] && [ -x {q["root"]} ]; then r=true; else r=false; fi
if [ -x {q["py"]} ]; then x=true; else x=false; fi
printf '{{"probe_failed": %s, "host": "%s", "started": %s, "root_readable": %s, "python_executable": %s}}\\n' \\
    "$rc" "$(uname -n)" "$started" "$r" "$x" > {q["d"]}/report.tmp
mv {q["d"]}/report.tmp {q["d"]}/{REPORT}
"""
