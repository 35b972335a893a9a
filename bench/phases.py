"""Where one ``hubstock build`` spends its time, phase by phase, measured in-process.

    python -m bench.phases SITE ROOT ENV     prints {"phase": seconds, ...} as JSON

It wraps the steps of :mod:`hubstock.admin.build.build` (read-only: nothing in hubstock is
changed, the wrappers only time the calls) and builds ``ENV`` once. ``other`` is
what the build spends outside the named steps (provenance, marker, root lock); the
caller gets the interpreter's start, imports and exit as its wall time minus
``build total``.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
from collections import defaultdict

#: label -> (module of hubstock.admin, function): the steps of a conda build, timed where they are
STEPS = {
    "empty trash": ("build.build", "empty_trash"),
    "lock check": ("lock.lockfile", "require_fresh_lock"),
    "verify sha256": ("build.conda_install", "_verified_archive"),
    "read records": ("build.conda_install", "_records"),
    "check cache": ("build.conda_install", "_check_cache"),
    "install conda": ("build.conda_install", "_install_conda"),
    "seal (wait after install)": ("build.conda_install", "_seal_extracted"),
    "install pip": ("build.conda_install", "install_pip"),
    "byte-compile": ("build.conda_install", "compile_sources"),
    "read-only": ("build.build", "make_read_only"),
    "file list": ("build.build", "build_file_list"),
}


def _timed(fn, label: str, spent: dict[str, float]):
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper_async(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t0

        return wrapper_async

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - t0

    return wrapper


def main(argv: list[str]) -> dict[str, float]:
    site_dir, root, env = argv
    import importlib

    from hubstock.admin.build import build as building
    from hubstock.admin.kinds import load_env
    from hubstock.progress import Progress
    from hubstock.site import load_site

    spent: dict[str, float] = defaultdict(float)
    for label, (module, attr) in STEPS.items():
        mod = importlib.import_module(f"hubstock.admin.{module}")
        setattr(mod, attr, _timed(getattr(mod, attr), label, spent))
    site = load_site(site_dir, root)
    spec = load_env(site, env)
    t0 = time.perf_counter()
    result = building.ensure_build(site, spec, Progress(enabled=False))
    total = time.perf_counter() - t0
    if not result.built:
        raise SystemExit(f"bench.phases: {env} was already built in {root}; give it an empty root")
    out = {k: spent.get(k, 0.0) for k in STEPS}
    out["other"] = total - sum(spent.values())
    out["build total"] = total
    return {k: round(v, 4) for k, v in out.items()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
    sys.stdout.flush()
    os._exit(0)  # py-rattler's runtime can abort the interpreter at exit (see hubstock.cli.entry)
