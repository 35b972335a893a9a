"""Where one ``hubstock build`` spends its time, phase by phase, measured in-process.

    python -m bench.phases SITE ROOT ENV     prints {"phase": seconds, ...} as JSON

It wraps the steps of :mod:`hubstock.admin.build.build` (read-only: nothing in hubstock is
changed, the wrappers only time the calls) and builds ``ENV`` once. ``other`` is
what the build spends outside the named steps (provenance, marker, root lock); the
caller gets the interpreter's start, imports and exit as its wall time minus
``build total``. A venv build has its own steps too (``VENV_STEPS``); the parts of ``install
pip`` (uv's install into the wheel cache, the checks, the byte-compile, the links) are reported
beside the steps, prefixed ``pip:``, when the build has a pip part.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

#: label -> (module of hubstock.admin, function or Class.method): the steps of a conda build, timed
#: where they are (``install conda`` includes the installer's reading of the archives' records)
STEPS = {
    "empty trash": ("build.build", "empty_trash"),
    "lock check": ("lock.lockfile", "require_fresh_lock"),
    "verify sha256": ("build.conda_install", "_verified_archive"),
    "check cache": ("build.conda_install", "_check_cache"),
    "install conda": ("build.conda_install", "_install"),
    "seal (wait after install)": ("build.seals", "Sealer.finish"),
    "install pip": ("build.conda_install", "install_pip"),
    "byte-compile": ("build.conda_install", "compile_sources"),
    "read-only": ("build.build", "make_read_only"),
    "file list": ("build.build", "build_file_list"),
}
#: the steps of a venv build beside STEPS' ``build.build`` ones (its backend imports them when it
#: runs, so these wrappers are the ones it calls); ``uv venv`` is every uv call made through
#: ``hubstock.admin.uv.run_uv`` at call time: in a build, only the venv's creation (the wheel
#: cache's modules hold their own reference, bound when they were imported)
VENV_STEPS = {
    "interpreter check": ("kinds.venv", "site_interpreter"),
    "uv venv": ("uv", "run_uv"),
    "install pip (venv)": ("build.install", "install_pip"),
    "byte-compile (venv)": ("build.install", "compile_sources"),
}
#: parts of "install pip": reported apart, inside that step's time (not subtracted from "other")
PIP_PARTS = {
    "pip: uv install (wheel cache fill)": ("build.wheel_fill", "_uv_install"),
    "pip: check against RECORD": ("build.wheel_fill", "_check_staged"),
    "pip: byte-compile (wheel cache)": ("build.wheel_fill", "compile_files"),
    "pip: seal entries": ("build.wheel_fill", "_make_entry"),
    "pip: link into the build": ("build.wheels", "_link"),
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

    # the env's kind, read before anything is imported or wrapped: a venv build imports none of
    # the conda modules, and neither does this one then
    conf = Path(site_dir, "envs", env, "env.toml")
    kind = tomllib.loads(conf.read_text()).get("kind", "conda") if conf.is_file() else "conda"
    if kind == "conda":
        steps = STEPS
    else:
        steps = {k: v for k, v in STEPS.items() if v[0] == "build.build"} | VENV_STEPS
    spent: dict[str, float] = defaultdict(float)
    parts: dict[str, float] = defaultdict(float)
    groups = ((steps, spent), (PIP_PARTS, parts))
    # every module imported before any is wrapped: a module that binds another's function when it
    # is imported (``from ..uv import run_uv``) keeps the original, as the comments above assume
    mods = {m: importlib.import_module(f"hubstock.admin.{m}") for g, _ in groups for m, _ in g.values()}
    for group, into in groups:
        for label, (module, attr) in group.items():
            owner, *path = [mods[module], *attr.split(".")]
            for name in path[:-1]:
                owner = getattr(owner, name)
            setattr(owner, path[-1], _timed(getattr(owner, path[-1]), label, into))
    site = load_site(site_dir, root)
    spec = load_env(site, env)
    t0 = time.perf_counter()
    result = building.ensure_build(site, spec, Progress(enabled=False))
    total = time.perf_counter() - t0
    if not result.built:
        raise SystemExit(f"bench.phases: {env} was already built in {root}; give it an empty root")
    out = {k: spent.get(k, 0.0) for k in steps}
    out["other"] = total - sum(out.values())
    out["build total"] = total
    out.update({k: v for k, v in parts.items() if v})
    return {k: round(v, 4) for k, v in out.items()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
    sys.stdout.flush()
    os._exit(0)  # py-rattler's runtime can abort the interpreter at exit (see hubstock.cli.entry)
