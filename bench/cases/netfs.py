"""The root on a network filesystem: ``warm_build_large_netfs`` and ``publish_1_netfs``.

A GlusterFS volume on the loopback, mounted over FUSE (``rigs/gluster_rig.py``), holds a copy
of the hub site's root and of the kernel site's root, each made with ``hubstock init-root``
and built there once (untimed). Then, interleaved in the same run, the same command on the
local root (the baseline) and on the network one:

- ``warm_build_large_netfs``: ``hubstock build server`` of the hub site's server env, every
  package in the root's caches (as ``warm_build_large``: the finished build moved to the
  trash, untimed, before each run);
- ``publish_1_netfs``: ``hubstock publish`` of one kernel, a new generation each run.

Needs root (mounts) and Debian's glusterfs-server; the tiny run leaves it out
(``tests/test_netfs.py`` runs the same flow on GlusterFS in the test suite).
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import Any

from rigs.gluster_rig import GlusterRig, missing_binaries

from hubstock.store.fs import move_to_trash
from hubstock.store.root import Root

from .common import (
    Bench,
    current_build,
    hubstock,
    hubstock_argv,
    median,
    result,
    skipped,
    timed,
    timings,
    write_kernels,
)

GOAL, LIMIT = "ratio <= 1.5", 1.5


def netfs(b: Bench) -> list[dict[str, Any]]:
    rows = [
        ("warm_build_large_netfs", "s", "the same build on a local disk"),
        ("publish_1_netfs", "s", "the same publish on a local disk"),
    ]
    reason = None
    if b.tiny:
        reason = "the tiny run leaves out the network filesystem (tests/test_netfs.py runs it)"
    elif os.geteuid() != 0:
        reason = "needs root to mount a GlusterFS volume"
    elif missing := missing_binaries():
        reason = f"needs GlusterFS ({', '.join(missing)}: apt-get install glusterfs-server glusterfs-client)"
    if reason:
        return [skipped("netfs", name, unit, base, GOAL, reason) for name, unit, base in rows]
    rig = GlusterRig(b.work / "gluster").start()
    try:
        mount = rig.mount(b.work / "gluster" / "shared")
        mount.chmod(0o755)
        b.say(f"GlusterFS up in {rig.timings['start']:.1f} s, mounted at {mount}")
        return [_warm_build_large(b, mount), _publish_1(b, mount)]
    finally:
        rig.stop()


def _on(b: Bench, site: Path, name: str, root: Path) -> Path:
    """A copy of ``site`` (its specs and locks) whose root is ``root``: made there and built."""
    copy = b.work / name
    shutil.copytree(site, copy, symlinks=True)
    toml = copy / "hubstock.toml"
    lines = [ln for ln in toml.read_text().splitlines() if not ln.startswith("root = ")]
    toml.write_text(f'root = "{root}"\n' + "\n".join(lines) + "\n")
    b.say(f"building {name} on the network filesystem (untimed)")
    hubstock(copy, "init-root")
    hubstock(copy, "build")
    hubstock(copy, "publish")
    return copy


def _warm_build_large(b: Bench, mount: Path) -> dict[str, Any]:
    local = b.hub_site()
    remote = _on(b, local, "netfs-hub-site", mount / "hub-root")

    def build(site: Path, root: Path) -> float:
        move_to_trash(current_build(root, "server"), Root(root).trash)
        os.sync()
        return timed(hubstock_argv(site, "build", "server"))

    here, there = b.interleaved(
        lambda: build(local, local.parent / "root"), lambda: build(remote, mount / "hub-root")
    )
    return result(
        "netfs",
        median(there),
        "s",
        "the same build on a local disk",
        median(here),
        GOAL,
        LIMIT,
        name="warm_build_large_netfs",
        filesystem="GlusterFS 1 brick over FUSE, loopback",
        **timings(there, here),
    )


def _publish_1(b: Bench, mount: Path) -> dict[str, Any]:
    local = b.kernel_site()
    remote = _on(b, local, "netfs-kernel-site", mount / "kernel-root")
    runs = itertools.count()

    def publish(site: Path) -> float:
        write_kernels(site, 1, f"netfs run {next(runs)}")  # a new display name: a new generation
        return timed(hubstock_argv(site, "publish"), timeout=300)

    here, there = b.interleaved(lambda: publish(local), lambda: publish(remote), steady=(1, 0))
    return result(
        "netfs",
        median(there),
        "s",
        "the same publish on a local disk",
        median(here),
        GOAL,
        LIMIT,
        name="publish_1_netfs",
        filesystem="GlusterFS 1 brick over FUSE, loopback",
        **timings(there, here),
    )
