"""The build benchmarks of conda envs: ``noop_build``, ``warm_build``, ``warm_build_large``,
``cold_build`` and ``disk_five_builds``."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from hubstock.store.fs import move_to_trash, remove_tree
from hubstock.store.root import Root

from .common import (
    PY_ENV,
    Bench,
    build_phases,
    count_files,
    current_build,
    hubstock,
    hubstock_argv,
    median,
    remove_build,
    result,
    rounded,
    shadow_copy,
    timed,
    timings,
)

# --------------------------------------------------------------------------- noop_build


def noop_build(b: Bench) -> list[dict[str, Any]]:
    """``hubstock build ENV`` with nothing to do, against ``hubstock status``; and for 10x the files."""
    root = b.work / "noop-root"
    small = b.site("noop-small", {"small": PY_ENV}, root)
    many = b.site("noop-many", {"many": PY_ENV + "  - bench-many\n"}, root)
    for site in (small, many):
        hubstock(site, "build")
    build_small, status_small, build_many, status_many = b.interleaved(
        lambda: timed(hubstock_argv(small, "build")),
        lambda: timed(hubstock_argv(small, "status")),
        lambda: timed(hubstock_argv(many, "build")),
        lambda: timed(hubstock_argv(many, "status")),
    )
    n_small = count_files(current_build(root, "small"))
    n_many = count_files(current_build(root, "many"))
    noop = median(build_small)
    return [
        result(
            "noop_build",
            noop,
            "s",
            "hubstock status",
            median(status_small),
            "ratio <= 1.5",
            1.5,
            files=n_small,
            **timings(build_small, status_small),
        ),
        result(
            "noop_build",
            median(build_many),
            "s",
            f"noop_build ({n_small} files)",
            noop,
            "ratio <= 1.2 (flat as the env grows)",
            1.2,
            name="noop_build_10x_files",
            files=n_many,
            files_ratio=round(n_many / n_small, 1),
            status_value=rounded(median(status_many)),
            ratio_to_status=rounded(median(build_many) / median(status_many), 3),
            **timings(build_many, build_small),
        ),
    ]


# --------------------------------------------------------------------------- warm_build


def warm_build(b: Bench) -> list[dict[str, Any]]:
    """A new build whose packages are all in the root's cache, against ``cp -al`` of the same tree."""
    root = b.work / "warm-root"
    site = b.site("build-site", {"py": PY_ENV}, root)
    hubstock(site, "build")
    prefix = current_build(root, "py")
    trash = Root(root).trash

    shadow = shadow_copy(prefix)

    def build() -> float:
        remove_build(root, prefix)  # as gc does; the cache (root/pkgs) stays warm
        os.sync()  # no write-back of earlier runs' files during this one
        return timed(hubstock_argv(site, "build"))

    def link() -> float:
        copy = prefix.with_name(prefix.name + ".cp")
        os.sync()
        took = timed(["cp", "-al", str(shadow), str(copy)])
        remove_tree(copy, trash)
        return took

    files = count_files(prefix)
    builds, links = b.interleaved(build, link, steady=(0, 1))
    remove_tree(prefix, trash)
    remove_tree(shadow, trash)
    phases = build_phases(site, root, "py")
    return [
        result(
            "warm_build",
            median(builds),
            "s",
            "cp -al of the finished build",
            median(links),
            "ratio <= 1.5",
            1.5,
            files=files,
            phases_s=phases,
            **timings(builds, links),
        )
    ]


# --------------------------------------------------------------------------- warm_build_large


def warm_build_large(b: Bench) -> list[dict[str, Any]]:
    """A warm rebuild of the hub site's server env (python from the channel; JupyterHub, JupyterLab
    and the rest from PyPI: ~27,000 files), against ``rm -rf`` + ``cp -al`` of the same tree (of a
    copy of it: links of the caches' own files would move their change times, :mod:`seals`).

    Each run moves the finished build into the root's trash (a rename, untimed) and times
    ``hubstock build server``, which empties the trash first: the removal of the old tree is
    in both figures. Every package is in the root's caches (conda packages, and the wheel cache
    the first build of the site filled)."""
    site = b.hub_site()
    root = site.parent / "root"
    trash = Root(root).trash
    prefix = current_build(root, "server")
    copy = prefix.with_name(prefix.name + ".cp")
    shadow = shadow_copy(prefix)
    parts: dict[str, list[float]] = {"rm -rf": [], "cp -al": []}

    def build() -> float:
        move_to_trash(prefix, trash)
        os.sync()  # no write-back of earlier runs' files during this one
        return timed(hubstock_argv(site, "build", "server"))

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
    prov = json.loads((prefix / ".hubstock-build.json").read_text())
    managers = [p["manager"] for p in prov["packages"]]
    builds, copies = b.interleaved(build, replace_copy, steady=(0, 1))
    move_to_trash(prefix, trash)
    remove_tree(shadow, trash)
    phases = build_phases(site, root, "server")
    return [
        result(
            "warm_build_large",
            median(builds),
            "s",
            "rm -rf + cp -al of the same tree",
            median(copies),
            "ratio <= 1.5",
            1.5,
            files=files,
            conda_packages=managers.count("conda"),
            pip_packages=managers.count("pip"),
            baseline_parts_s={k: rounded(median(v)) for k, v in parts.items()},
            phases_s=phases,
            **timings(builds, copies),
        )
    ]


# --------------------------------------------------------------------------- cold_build

RATTLER_ALONE = r"""
import asyncio, os, sys
from pathlib import Path
from rattler import Platform, RepoDataRecord, install

async def main(prefix, cache, archives):
    records = []
    for a in archives:
        r = await RepoDataRecord.from_package_archive(Path(a))
        r.url = Path(a).as_uri()
        records.append(r)
    await install(records, target_prefix=prefix, cache_dir=cache, platform=Platform.current(),
                  execute_link_scripts=False, show_progress=False)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
sys.stdout.flush()
os._exit(0)
"""


def cold_build(b: Bench) -> list[dict[str, Any]]:
    """A build on an empty root (empty package cache), against py-rattler alone on the same archives."""
    site = b.site("build-site", {"py": PY_ENV}, b.work / "warm-root")
    scratch = b.work / "cold"
    scratch.mkdir(exist_ok=True)
    trash = scratch / ".trash"
    counter = itertools.count()

    def build() -> float:
        root = scratch / f"root-{next(counter)}"
        hubstock(site, "init-root", root=root)  # untimed: an empty root, made as an admin makes one
        os.sync()  # no write-back of earlier runs' files during this one
        took = timed(hubstock_argv(site, "build", root=root))
        if "archives" not in b.cache:
            prov = json.loads((current_build(root, "py") / ".hubstock-build.json").read_text())
            b.cache["archives"] = [unquote(urlparse(p["url"]).path) for p in prov["packages"]]
        remove_tree(root, trash)
        return took

    def rattler() -> float:
        top = scratch / f"rattler-{next(counter)}"
        os.sync()
        took = timed(
            [
                sys.executable,
                "-c",
                RATTLER_ALONE,
                str(top / "prefix"),
                str(top / "pkgs"),
                *b.cache["archives"],
            ]
        )
        remove_tree(top, trash)
        return took

    # disk-bound and noisy on a VM (the same extraction takes 0.4 to 1.2 s): twice the runs
    builds, alone = b.interleaved(build, rattler, times=2 * b.repeat)
    phases = build_phases(site, scratch / "root-phases", "py")
    remove_tree(scratch / "root-phases", trash)
    return [
        result(
            "cold_build",
            median(builds),
            "s",
            "py-rattler alone, same archives, empty cache",
            median(alone),
            "ratio <= 1.2",
            1.2,
            packages=len(b.cache["archives"]),
            phases_s=phases,
            **timings(builds, alone),
        )
    ]


# --------------------------------------------------------------------------- disk_five_builds


def disk_usage(tops: list[Path]) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of everything under ``tops``, each inode counted once (du -s)."""
    seen: set[tuple[int, int]] = set()
    blocks = apparent = 0
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames, *([""] if dirpath == str(top) else [])]:
                st = os.lstat(os.path.join(dirpath, name) if name else dirpath)
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                blocks += st.st_blocks * 512
                apparent += st.st_size
    return blocks, apparent


def unshared(prefix: Path, top: int = 5) -> dict[str, Any]:
    """What a build holds that no other build or the cache shares (files with one link)."""
    sizes: dict[str, int] = {}
    biggest: list[tuple[int, str]] = []
    for dirpath, _dirs, files in os.walk(prefix):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if st.st_nlink != 1 or not os.path.isfile(p) or os.path.islink(p):
                continue
            rel = os.path.relpath(p, prefix)
            kind = "pyc" if name.endswith(".pyc") else rel.split(os.sep)[0]
            sizes[kind] = sizes.get(kind, 0) + st.st_blocks * 512
            biggest.append((st.st_blocks * 512, rel))
    biggest.sort(reverse=True)
    return {
        "by_kind_kib": {k: v // 1024 for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])},
        "biggest_kib": {rel: size // 1024 for size, rel in biggest[:top]},
    }


def disk_five_builds(b: Bench) -> list[dict[str, Any]]:
    """Disk used by five builds of one env that differ by one package, against one build."""
    root = b.work / "disk-root"
    prefixes = []
    for v in range(1, 6):
        site = b.site("disk-site", {"disk": PY_ENV + f"  - bench-extra {v}.0\n"}, root)
        hubstock(site, "build")
        prefixes.append(current_build(root, "disk"))
    mib = 1 << 20
    # du is deterministic: the "runs" are the five builds, each measured alone for the baseline
    singles = [disk_usage([p])[0] / mib for p in prefixes]
    five, five_apparent = disk_usage(prefixes)
    cache = disk_usage([Root(root).pkgs])[0] / mib
    one = median(singles)
    return [
        result(
            "disk_five_builds",
            five / mib,
            "MiB",
            "one build",
            one,
            "ratio <= 1.3",
            1.3,
            runs=len(prefixes),
            samples=[round(five / mib, 3)],
            baseline_samples=[round(x, 3) for x in singles],
            apparent_mib=round(five_apparent / mib, 3),
            package_cache_mib=round(cache, 3),
            ratio_with_cache=round((five / mib + cache) / (one + cache), 3),
            unshared_per_build=unshared(prefixes[-1]),
        )
    ]
