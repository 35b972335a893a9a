"""Kernels and publishing: ``kernel_start_readonly`` (a published kernel on its read-only build) and
``publish`` (``hubstock publish`` against its smoke tests alone)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubstock.store.root import Root

from .common import (
    KERNEL_ROOT,
    NOBODY,
    Bench,
    hubstock_argv,
    median,
    result,
    run_checked,
    skipped,
    timed,
    timings,
    write_kernels,
)

FIRST_CELL = r"""
import json, os, sys, time
from jupyter_client.manager import KernelManager

t0 = time.perf_counter()
km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
kc = km.client()
kc.start_channels()
try:
    kc.wait_for_ready(timeout=120)
    msg_id = kc.execute("import sys; sys.prefix", store_history=False)
    while True:
        reply = kc.get_shell_msg(timeout=120)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    took = time.perf_counter() - t0
    status = reply["content"]["status"]
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
print(json.dumps({"seconds": took, "status": status}))
sys.stdout.flush()
os._exit(0)
"""


def snapshot(top: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of everything under ``top``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def kernel_start_readonly(b: Bench) -> list[dict[str, Any]]:
    """First executed cell of a published kernel as uid 65534 on the read-only build,
    against the same kernel from a writable copy (owned by that user) after a warm-up start."""
    name, unit, base, goal = (
        "kernel_start_readonly",
        "s",
        "writable copy, after a warm-up start",
        "ratio <= 1.1 and 0 files written",
    )
    if os.geteuid() != 0:
        return [skipped(name, name, unit, base, goal, "needs root to start the kernel as uid 65534")]
    b.kernel_site()
    root = Root(b.work / KERNEL_ROOT)
    gen = Path(os.path.realpath(root.current))
    kernel = json.loads((gen / "manifest.json").read_text())["kernels"][0]
    prefix = root.build(kernel["env"], kernel["build"])
    spec = json.loads((gen / "share" / "jupyter" / "kernels" / kernel["name"] / "kernel.json").read_text())

    scratch = b.work / "kernel-start"
    home = scratch / "home"
    copy = scratch / "copy"
    share = scratch / "share" / "jupyter"
    home.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(prefix), str(copy)], check=True)
    subprocess.run(["chmod", "-R", "u+w", str(copy)], check=True)
    subprocess.run(["chown", "-R", "65534:65534", str(copy), str(home)], check=True)
    copy_spec = json.loads(json.dumps(spec).replace(str(prefix), str(copy)))
    (share / "kernels" / kernel["name"]).mkdir(parents=True)
    (share / "kernels" / kernel["name"] / "kernel.json").write_text(json.dumps(copy_spec))

    def start(jupyter_path: Path) -> Callable[[], float]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(HOME=str(home), JUPYTER_PATH=str(jupyter_path))
        argv = [*NOBODY, str(prefix / "bin" / "python"), "-c", FIRST_CELL, kernel["name"]]

        def run() -> float:
            out = json.loads(run_checked(argv, timeout=300, env=env, cwd=home)[1].strip().splitlines()[-1])
            if out["status"] != "ok":
                raise RuntimeError(f"the kernel's first cell did not run: {out}")
            return out["seconds"]

        return run

    readonly, writable = start(gen / "share" / "jupyter"), start(share)
    before_root = snapshot(root.path)
    before_copy = snapshot(copy)
    readonly()  # warm-up of both: the user's home (.ipython) and the page cache
    writable()
    warmup_copy = changes(before_copy, snapshot(copy))
    ro, rw = b.interleaved(readonly, writable)
    written = changes(before_root, snapshot(root.path))
    return [
        result(
            name,
            median(ro),
            unit,
            base,
            median(rw),
            goal,
            met=median(ro) / median(rw) <= 1.1 and not written,
            files_written=len(written),
            files_written_sample=written[:10],
            warmup_wrote_in_copy=len(warmup_copy),
            warmup_wrote_in_copy_sample=warmup_copy[:10],
            **timings(ro, rw),
        )
    ]


SMOKE_ALONE = r"""
import json, os, sys, tempfile, time
from pathlib import Path
from hubstock.admin.publish.kernels import load_kernel_templates, render_template, smoke_test, write_kernel
from hubstock.admin.publish.publish import build_ref
from hubstock.site import load_site
from hubstock.store.generations import Generation

site = load_site(sys.argv[1])
kernels = [render_template(t, build_ref(site, t.env)) for t in load_kernel_templates(site)]
with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
    gen = Generation("bench", Path(tmp))
    for k in kernels:
        write_kernel(gen, k)
    t0 = time.perf_counter()
    smoke_test(kernels, gen, site.settings.publish.smoke_timeout)
    took = time.perf_counter() - t0
print(json.dumps({"seconds": took, "kernels": len(kernels)}))
sys.stdout.flush()
os._exit(0)
"""


def publish(b: Bench) -> list[dict[str, Any]]:
    """``hubstock publish`` of N kernels (a new generation each run), against the smoke tests alone."""
    site = b.kernel_site()
    return [_publish_n(b, site, n) for n in ((1, 2) if b.tiny else (1, 10))]


def _publish_n(b: Bench, site: Path, n: int) -> dict[str, Any]:
    runs = itertools.count()
    goal = 1.3 if n == 1 else 1.1  # one kernel: the process start weighs more

    def publish_once() -> float:
        write_kernels(site, n, f"run {next(runs)}")  # new display names: a new generation
        return timed(hubstock_argv(site, "publish"), timeout=180)

    def smoke_alone() -> float:
        out = run_checked([sys.executable, "-c", SMOKE_ALONE, str(site)], timeout=180)[1]
        return json.loads(out.strip().splitlines()[-1])["seconds"]

    pubs, smokes = b.interleaved(publish_once, smoke_alone, steady=(0, 1))
    return result(
        "publish",
        median(pubs),
        "s",
        f"smoke tests of the {n} kernel(s) alone",
        median(smokes),
        f"ratio <= {goal}",
        goal,
        name=f"publish_{n}",
        kernels=n,
        generations=len(list((b.work / KERNEL_ROOT / "generations").glob("[0-9]*"))),
        **timings(pubs, smokes),
    )
