"""The venv and module env kinds: ``venv_build_cold`` and ``venv_build_warm`` (a venv env on the
machine's Python, its packages from PyPI through uv) and ``module_kernel_start`` (Debian's R
kernel started through Lmod).

The venv env is locked once (``hubstock lock``, online); every timed run after that works from uv's
download cache with ``UV_OFFLINE=1`` on both sides. Without it uv asks the index again about every
cached wheel, and an index (or proxy) that answers "modified" makes it download them again: the
figures would then be the network's, not the builds'.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubstock.store.fs import move_to_trash, remove_tree
from hubstock.store.root import Root

from .common import (
    Bench,
    build_phases,
    count_files,
    current_build,
    hubstock,
    hubstock_argv,
    median,
    result,
    rounded,
    run_checked,
    shadow_copy,
    skipped,
    timed,
    timings,
)

#: the site interpreter of the venv env (as the shipped catalog's envs/server/env.toml)
VENV_PYTHON = "/usr/bin/python3"
VENV_ENV = "v"
#: the venv env's requirements: a kernel and a compiled package (six alone in the tiny run)
VENV_REQUIREMENTS = ("ipykernel", "numpy")
VENV_REQUIREMENTS_TINY = ("six",)


# --------------------------------------------------------------------------- the venv env


def venv_site(b: Bench) -> Path:
    """A site with one venv env on :data:`VENV_PYTHON` (root ``venv-root``), locked, not built."""
    if "venv_site" not in b.cache:
        reqs = VENV_REQUIREMENTS_TINY if b.tiny else VENV_REQUIREMENTS
        b.say(f"locking the venv env ({', '.join(reqs)} on {VENV_PYTHON})")
        site = b.work / "venv-site"
        env_dir = site / "envs" / VENV_ENV
        env_dir.mkdir(parents=True)
        (env_dir / "env.toml").write_text(f'kind = "venv"\n\n[python]\npath = "{VENV_PYTHON}"\n')
        (env_dir / "requirements.in").write_text("".join(f"{r}\n" for r in reqs))
        (site / "hubstock.toml").write_text(f'root = "{b.work / "venv-root"}"\n')
        hubstock(site, "init-root")
        hubstock(site, "lock")
        b.cache["venv_site"] = site
    return b.cache["venv_site"]


def offline_env(b: Bench) -> dict[str, str]:
    """The environment of the timed runs: uv's download cache (the suite's, else one of the
    scratch folder's), used offline."""
    cache = os.environ.get("UV_CACHE_DIR") or str(b.work / "uv-cache")
    return {**os.environ, "UV_CACHE_DIR": cache, "UV_OFFLINE": "1"}


def online_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "UV_OFFLINE"}


def uv_sync_argv(venv: Path, lock: Path) -> list[list[str]]:
    """uv alone: a venv of the same interpreter, then ``uv pip sync`` of the same pylock.toml
    (the uv that hubstock runs, without user config, quiet, as hubstock runs it)."""
    from hubstock.admin.uv import uv_command

    uv = uv_command()
    return [
        [*uv, "venv", "--no-config", "--quiet", "--no-project", "--python", VENV_PYTHON, str(venv)],
        [
            *uv,
            "pip",
            "sync",
            "--no-config",
            "--quiet",
            "--preview-features",
            "pylock",
            "--python",
            str(venv / "bin" / "python"),
            str(lock),
        ],
    ]


def skip_venv(name: str, base: str, goal: str) -> list[dict[str, Any]] | None:
    if os.access(VENV_PYTHON, os.X_OK):
        return None
    return [skipped(name, name, "s", base, goal, f"no {VENV_PYTHON} here (the venv env's interpreter)")]


# --------------------------------------------------------------------------- venv_build_cold


def venv_build_cold(b: Bench) -> list[dict[str, Any]]:
    """``hubstock build`` of the venv env into a root whose wheel cache is empty and whose own uv
    cache (``$ROOT/cache/uv``, the default) already holds the wheels, against ``uv venv`` + ``uv
    pip sync`` of the same pylock.toml from that same uv cache (both hard-link from it; offline).

    A second figure, ``venv_build_cold_compiled``, has the same build against the same uv with
    ``--compile-bytecode``: the same product as hubstock's, byte-code for every module, which a
    read-only build needs (its users can write none, so without it every import compiles anew).
    """
    name, base = "venv_build_cold", "uv venv + uv pip sync of the same pylock.toml, same uv cache"
    goal = "ratio <= 1.2"
    if (skip := skip_venv(name, base, goal)) is not None:
        return skip
    site = venv_site(b)
    lock = site / "envs" / VENV_ENV / "pylock.toml"
    root = Root(b.work / "venv-cold-root")
    hubstock(site, "init-root", root=root.path)  # untimed, once: the runs empty its caches, not the root
    scratch = b.work / "venv-cold"
    scratch.mkdir(exist_ok=True)
    trash = scratch / ".trash"
    env = {k: v for k, v in offline_env(b).items() if k != "UV_CACHE_DIR"}  # the root's own uv cache
    uv_env = {**env, "UV_CACHE_DIR": str(root.uv_cache)}
    counter = itertools.count()
    facts: dict[str, Any] = {}

    def empty_wheel_cache() -> None:
        """Untimed: the root as before its first build of the env, but for its uv cache."""
        caches = [c for c in root.cache.iterdir() if c != root.uv_cache] if root.cache.is_dir() else []
        for p in [root.envs, root.trash, *caches]:
            remove_tree(p, trash)
        os.sync()  # no write-back of earlier runs' files during this one

    def build(environ: dict[str, str] = env) -> float:
        empty_wheel_cache()
        took = timed(hubstock_argv(site, "build", root=root.path), env=environ)
        if "files" not in facts:
            prefix = current_build(root.path, VENV_ENV)
            facts["files"] = count_files(prefix)
            facts["packages"] = len(json.loads((prefix / ".hubstock-build.json").read_text())["packages"])
        return took

    def uv_alone(environ: dict[str, str] = uv_env, *extra: str) -> float:
        top = scratch / f"uv-{next(counter)}"
        os.sync()
        argv = uv_sync_argv(top / "venv", lock)
        took = sum(timed(a, env=environ) for a in [argv[0], [*argv[1], *extra]])
        key = "uv_files_compiled" if extra else "uv_files"
        if key not in facts:
            facts[key] = count_files(top / "venv")
        remove_tree(top, trash)
        return took

    # untimed, online: fill the root's uv cache for both (hubstock asks for each wheel by its URL,
    # uv pip sync through the index)
    build(online_env(env))
    uv_alone(online_env(uv_env))
    builds, alone, compiled = b.interleaved(
        build, uv_alone, lambda: uv_alone(uv_env, "--compile-bytecode"), steady=(0, 1)
    )
    empty_wheel_cache()
    phases = build_phases(site, root.path, VENV_ENV, environ=env)
    common = {
        "python": VENV_PYTHON,
        "requirements": (site / "envs" / VENV_ENV / "requirements.in").read_text().split(),
        "uv_offline": True,
        "uv_cache": "the root's own ($ROOT/cache/uv), warm",
        "phases_s": phases,
        **facts,
    }
    return [
        result(name, median(builds), "s", base, median(alone), goal, 1.2, **common, **timings(builds, alone)),
        result(
            name,
            median(builds),
            "s",
            "uv venv + uv pip sync --compile-bytecode of the same pylock.toml, same uv cache",
            median(compiled),
            "report (the same product: byte-code for every module)",
            name="venv_build_cold_compiled",
            **timings(builds, compiled),
        ),
    ]


# --------------------------------------------------------------------------- venv_build_warm


def venv_build_warm(b: Bench) -> list[dict[str, Any]]:
    """A rebuild of the venv env whose packages are all in the root's wheel cache, against ``rm -rf``
    + ``cp -al`` of the same tree (as ``warm_build_large``: each run moves the finished build into
    the root's trash, untimed, and ``hubstock build`` empties the trash first)."""
    name, base = "venv_build_warm", "rm -rf + cp -al of the same tree"
    goal = "ratio <= 1.5"
    if (skip := skip_venv(name, base, goal)) is not None:
        return skip
    site = venv_site(b)
    env = offline_env(b)
    run_checked(hubstock_argv(site, "build"), env=online_env(env))  # fills the root's wheel cache
    root = b.work / "venv-root"
    trash = Root(root).trash
    prefix = current_build(root, VENV_ENV)
    copy = prefix.with_name(prefix.name + ".cp")
    shadow = shadow_copy(prefix)
    parts: dict[str, list[float]] = {"rm -rf": [], "cp -al": []}

    def build() -> float:
        move_to_trash(prefix, trash)
        os.sync()  # no write-back of earlier runs' files during this one
        return timed(hubstock_argv(site, "build"), env=env)

    def replace_copy() -> float:
        subprocess.run(["cp", "-al", str(shadow), str(copy)], check=True)  # the tree rm -rf removes
        os.sync()
        # as hubstock empties its trash: folders made writable (a build's are read-only), then rm -rf
        rm = timed(
            ["sh", "-c", 'find "$1" -type d ! -perm -u+w -exec chmod u+w {} + && rm -rf "$1"', "-", str(copy)]
        )
        cp = timed(["cp", "-al", str(shadow), str(copy)])
        remove_tree(copy, trash)
        parts["rm -rf"].append(rm)
        parts["cp -al"].append(cp)
        return rm + cp

    files = count_files(prefix)
    builds, copies = b.interleaved(build, replace_copy, steady=(0, 1))
    move_to_trash(prefix, trash)
    remove_tree(shadow, trash)
    phases = build_phases(site, root, VENV_ENV, environ=env)
    cp_al = median(parts["cp -al"])
    return [
        result(
            name,
            median(builds),
            "s",
            base,
            median(copies),
            goal,
            1.5,
            files=files,
            wheel_cache_entries=sum(1 for p in Root(root).wheels.iterdir() if not p.name.startswith(".")),
            baseline_parts_s={k: rounded(median(v)) for k, v in parts.items()},
            ratio_to_cp_al=rounded(median(builds) / cp_al, 3) if cp_al else None,
            phases_s=phases,
            **timings(builds, copies),
        )
    ]


# --------------------------------------------------------------------------- module_kernel_start

#: Debian's R kernel, as the catalog's kernels/r/kernel.json starts it
R_ARGV = ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]

KERNEL_READY = r"""
import json, os, sys, time
from jupyter_client.manager import KernelManager

t0 = time.perf_counter()
km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=120)
    ready = time.perf_counter() - t0
    msg_id = kc.execute(sys.argv[2], store_history=False)
    while True:
        reply = kc.get_shell_msg(timeout=120)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    first_cell = time.perf_counter() - t0
    status = reply["content"]["status"]
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
print(json.dumps({"ready": ready, "first_cell": first_cell, "status": status}))
sys.stdout.flush()
os._exit(0)
"""


def module_kernel_start(b: Bench) -> list[dict[str, Any]]:
    """Start-to-ready (``kernel_info`` answered) of Debian's R kernel with the kernelspec argv
    ``hubstock publish`` renders for a module env (``hubstock.lmod.kernel_argv``: bash, Lmod's init,
    ``module use/purge/load R/<X.Y>``, exec R), against the same kernel with the plain argv
    (``R --slave -e IRkernel::main() ...``). Also reported: the first executed cell, and the load
    alone (the same argv running ``true`` instead of R)."""
    name, unit, base = "module_kernel_start", "s", "the same R kernel without modules (plain argv)"
    goal = "report; lenient: ratio <= 1.5"
    from rigs.lmod_rig import RigError, write_module_tree

    from hubstock import lmod
    from hubstock.errors import ModuleError

    try:
        init = lmod.find_init()
        tree = write_module_tree(b.work / "lmod")
    except (ModuleError, RigError) as e:
        return [skipped(name, name, unit, base, goal, f"needs Lmod and R: {e}")]
    check = subprocess.run(
        [tree.r_exe, "--slave", "-e", "library(IRkernel)"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        reason = "needs IRkernel (apt-get install --no-install-recommends r-cran-irkernel)"
        return [skipped(name, name, unit, base, goal, reason)]
    use = [str(tree.modulepath)]
    argvs = {
        "r-lmod": lmod.kernel_argv(R_ARGV, [tree.r_module], init=str(init), use=use),
        "r-plain": list(R_ARGV),
    }
    share = b.work / "module-kernel" / "share" / "jupyter"
    for kernel, argv in argvs.items():
        (share / "kernels" / kernel).mkdir(parents=True)
        spec = {"argv": argv, "display_name": kernel, "language": "R", "interrupt_mode": "signal"}
        (share / "kernels" / kernel / "kernel.json").write_text(json.dumps(spec))
    env = {**os.environ, "JUPYTER_PATH": str(share)}
    cells: dict[str, list[float]] = {k: [] for k in argvs}

    def start(kernel: str) -> Callable[[], float]:
        argv = [sys.executable, "-c", KERNEL_READY, kernel, "cat(R.home())"]

        def run() -> float:
            out = json.loads(run_checked(argv, timeout=300, env=env)[1].strip().splitlines()[-1])
            if out["status"] != "ok":
                raise RuntimeError(f"the R kernel's first cell did not run ({kernel}): {out}")
            cells[kernel].append(out["first_cell"])
            return out["ready"]

        return run

    load_only = lmod.kernel_argv(["true"], [tree.r_module], init=str(init), use=use)
    with_lmod, plain = start("r-lmod"), start("r-plain")
    with_lmod()  # warm-up of both: the page cache, R's and Lmod's own caches
    plain()
    for v in cells.values():
        v.clear()
    lmods, plains, loads = b.interleaved(with_lmod, plain, lambda: timed(load_only, env=env))
    return [
        result(
            name,
            median(lmods),
            unit,
            base,
            median(plains),
            goal,
            1.5,
            module=tree.r_module,
            lmod_cost_s=rounded(median(lmods) - median(plains)),
            module_load_alone_s=rounded(median(loads)),
            module_load_alone_samples=[round(x, 4) for x in loads],
            first_cell_s=rounded(median(cells["r-lmod"])),
            first_cell_plain_s=rounded(median(cells["r-plain"])),
            lmod=str(init),
            r=tree.r_exe,
            **timings(lmods, plains),
        )
    ]
