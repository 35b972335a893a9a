"""``cli_overhead``: what a ``hubstock`` command costs before it does anything."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from .common import (
    Bench,
    count_files,
    current_build,
    hubstock_argv,
    median,
    result,
    rounded,
    run_checked,
    timed,
    timings,
)

# --------------------------------------------------------------------------- cli_overhead

FLOOR = "import pydantic, yaml; pydantic.BaseModel"


def cli_overhead(b: Bench) -> list[dict[str, Any]]:
    """``hubstock status`` on the hub site (a server env of ~27,000 files and a kernel env),
    against ``python -c pass`` on the same interpreter.

    hubstock remembers locks it has read and found fresh (in the user's cache, here a folder of
    the benchmark's own): the figure is a status as an admin runs it again and again; a status
    that must read both locks (its cache emptied just before) is reported beside it, and so is
    Python importing pydantic and yaml alone."""
    site = b.hub_site()
    root = site.parent / "root"
    cache_dir = b.work / "xdg-cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_dir)}
    status = hubstock_argv(site, "status")
    run_checked(status, env=env)  # reads both locks, and remembers them

    def cold_status() -> float:
        shutil.rmtree(cache_dir, ignore_errors=True)
        return timed(status, env=env)

    statuses, passes, colds, floors = b.interleaved(
        lambda: timed(status, env=env),
        lambda: timed([sys.executable, "-c", "pass"]),
        cold_status,
        lambda: timed([sys.executable, "-c", FLOOR]),
        times=max(b.repeat, 1 if b.tiny else 15),  # ~0.2 s each: more runs, a steadier median
    )
    base = median(passes)
    return [
        result(
            "cli_overhead",
            median(statuses),
            "s",
            "python -c pass",
            base,
            "ratio <= 15",
            15,
            server_files=count_files(current_build(root, "server")),
            envs=sorted(p.name for p in (site / "envs").iterdir()),
            locks_read_value=rounded(median(colds)),
            locks_read_ratio=rounded(median(colds) / base, 3),
            locks_read_samples=[round(x, 4) for x in colds],
            pydantic_yaml_value=rounded(median(floors)),
            pydantic_yaml_ratio=rounded(median(floors) / base, 3),
            **timings(statuses, passes),
        )
    ]
