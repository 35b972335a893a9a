"""The benchmarks: one function per benchmark, each returning its result entries.

Everything is real: the offline test channel (``rigs/channel.py``) plus a
few packages added for the benchmarks, the ``hubstock`` command in a subprocess
(``sys.executable -m hubstock``, as the tests run it), real py-rattler and uv
installs, real kernels, and (as root) the private Slurm rig and JupyterHub of the
hub tests. Every figure is the median of ``repeat`` runs, and its baseline is
measured in the same run, interleaved with it (A, B, A, B, ...), so that a slow
moment of the machine hits both.

A result entry::

    {"name": "warm_build", "value": 1.02, "unit": "s", "baseline": "cp -al of the build",
     "baseline_value": 0.11, "ratio": 9.3, "goal": "ratio <= 1.5", "met": false,
     "benchmark": "warm_build", "runs": 5, "samples": [...], "baseline_samples": [...], ...}

Extra fields explain a figure (file counts, phases of a build, files written).
A benchmark that cannot run here (``spawn_to_ready`` without root) has
``"value": null`` and says why in ``"skipped"``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from rigs.channel import add_package, cached_channel
from rigs.clusters import Cluster, PBSCluster
from rigs.hub_rig import Hub
from rigs.hubsite import (
    base_settings,
    build_site,
    free_port,
    hub_settings,
    py_env,
    start_hub,
)
from rigs.slurm_rig import SlurmRig, create_user, remove_user, require_binaries

from hubstock.store.fs import move_to_trash, remove_tree
from hubstock.store.root import Root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
#: the env most benchmarks build: the repackaged interpreter and a noarch python package, no pip part
PY_ENV = "dependencies:\n  - python\n  - demo-c\n"
KERNEL_ROOT = "kernel-root"
KERNEL_ARGV = ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]

Say = Callable[[str], None]


# --------------------------------------------------------------------------- results


def result(
    benchmark: str,
    value: float | None,
    unit: str,
    baseline: str,
    baseline_value: float | None,
    goal: str,
    limit: float | None = None,
    *,
    name: str | None = None,
    met: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One entry of results.json; ``met`` is ``ratio <= limit`` unless given."""
    ratio = value / baseline_value if value is not None and baseline_value else None
    if met is None and limit is not None and ratio is not None:
        met = ratio <= limit
    return {
        "name": name or benchmark,
        "value": _round(value),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": _round(baseline_value),
        "ratio": _round(ratio, 3),
        "goal": goal,
        "met": met,
        "benchmark": benchmark,
        **extra,
    }


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def skipped(benchmark: str, name: str, unit: str, baseline: str, goal: str, reason: str) -> dict[str, Any]:
    return {**result(benchmark, None, unit, baseline, None, goal, name=name), "skipped": reason}


def timings(a: list[float], b: list[float]) -> dict[str, Any]:
    """The extra fields that show the runs behind a median."""
    return {"runs": len(a), "samples": [round(x, 4) for x in a], "baseline_samples": [round(x, 4) for x in b]}


median = statistics.median


# --------------------------------------------------------------------------- the context


@dataclass
class Bench:
    """What every benchmark shares: the scratch folder, the channel, the built sites."""

    work: Path  # world-readable (0755): other users run what is built below it
    repeat: int = 5
    tiny: bool = False
    say: Say = print
    cache: dict[str, Any] = field(default_factory=dict)
    #: runs that failed and were run again (reset by the runner for each benchmark)
    failures: list[str] = field(default_factory=list)

    def interleaved(self, *runs: Callable[[], float], times: int | None = None) -> list[list[float]]:
        """Call each of ``runs`` in turn, ``times`` (default ``repeat``) times; the samples of each.

        A run that fails is recorded in ``failures`` and run once more (a second
        failure ends the benchmark): one flaky start must not hide a figure, nor pass unseen.
        """
        samples: list[list[float]] = [[] for _ in runs]
        for _ in range(times or self.repeat):
            for i, run in enumerate(runs):
                try:
                    samples[i].append(run())
                except RuntimeError as e:
                    self.failures.append(" ".join(str(e).split())[:400])
                    self.say(f"a run failed, running it again: {self.failures[-1][:200]}")
                    samples[i].append(run())
        return samples

    @property
    def many_files(self) -> int:
        """Files of ``bench-many``: the python env has ~1,750, so 16,000 more make it 10x."""
        return 2000 if self.tiny else 16000

    def channel(self) -> Path:
        """A copy of the test channel with ``bench-many`` and ``bench-extra`` 1.0 ... 5.0 added."""
        if "channel" not in self.cache:
            self.say(f"preparing the channel ({self.many_files} files in bench-many)")
            ch = self.work / "channel"
            shutil.copytree(cached_channel(), ch)
            files = {
                f"share/bench-many/{i // 1000:02d}/f{i:05d}.txt": f"{i}\n" for i in range(self.many_files)
            }
            add_package(ch, "bench-many", "1.0", files=files)
            for v in range(1, 6):
                add_package(ch, "bench-extra", f"{v}.0", files={"share/bench-extra/VERSION": f"{v}.0\n"})
            self.cache["channel"] = ch
        return self.cache["channel"]

    def site(self, name: str, envs: dict[str, str], root: Path) -> Path:
        """A site folder with ``envs`` on ``root`` and the bench channel, locked (not built)."""
        site = self.work / name
        for env, text in envs.items():
            (site / "envs" / env).mkdir(parents=True, exist_ok=True)
            (site / "envs" / env / "environment.yml").write_text(text)
        (site / "hubstock.toml").write_text(base_settings(root, self.channel()))
        hubstock(site, "lock")
        return site

    def kernel_site(self) -> Path:
        """A published site: env ``py`` (python, demo-c, ipykernel from PyPI) and one kernel."""
        if "kernel_site" not in self.cache:
            self.say("building and publishing the kernel site")
            site = self.site("kernel", {"py": py_env("0.1")}, self.work / KERNEL_ROOT)
            write_kernels(site, 1, "first")
            hubstock(site, "build")
            hubstock(site, "publish")
            self.cache["kernel_site"] = site
        return self.cache["kernel_site"]

    def hub_site(self) -> Path:
        """The hub tests' published site (server env and stock kernel), on the test channel."""
        if "hub_site" not in self.cache:
            self.say("building and publishing the hub site (server env from PyPI)")
            hub = self.work / "hub"
            self.cache["hub_site"] = build_site(hub / "site", hub / "root", cached_channel())
        return self.cache["hub_site"]


def hubstock_argv(site: Path, *args: str, root: Path | None = None) -> list[str]:
    opts = ["--root", str(root)] if root else []
    return [sys.executable, "-m", "hubstock", "--site", str(site), *opts, "-q", *args]


def hubstock(site: Path, *args: str, root: Path | None = None) -> str:
    """Run the real ``hubstock`` command; its stdout, or a RuntimeError with its output."""
    return run_checked(hubstock_argv(site, *args, root=root))[1]


def run_checked(argv: list[str], timeout: float = 600, **kw: Any) -> tuple[float, str]:
    """(seconds, stdout) of ``argv``, which must succeed within ``timeout``.

    It runs in its own session: on timeout its whole process group is killed (and
    only that), so a hung command fails its figure instead of stalling the suite.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(
            f"{shlex.join(map(str, argv[:6]))} did not finish within {timeout:.0f} s:\n{err[-2000:]}"
        ) from None
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(map(str, argv[:6]))} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}"
        )
    return took, out


def timed(argv: list[str], **kw: Any) -> float:
    """Seconds ``argv`` takes to run to completion (it must succeed)."""
    return run_checked(argv, **kw)[0]


def current_build(root: Path, env: str) -> Path:
    r = Root(root)
    return r.build(env, os.readlink(r.env_current(env)))


def count_files(top: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(top))


def build_phases(site: Path, root: Path, env: str) -> dict[str, float]:
    """The phases of one build of ``env`` into the (empty of it) ``root``, via bench.phases."""
    argv = [sys.executable, "-m", "bench.phases", str(site), str(root), env]
    wall, out = run_checked(argv, cwd=Path(__file__).resolve().parents[1])
    phases = json.loads(out.strip().splitlines()[-1])
    phases["interpreter, imports, exit"] = round(wall - phases["build total"], 4)
    return phases


# --------------------------------------------------------------------------- 1. noop_build


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
            status_value=_round(median(status_many)),
            ratio_to_status=_round(median(build_many) / median(status_many), 3),
            **timings(build_many, build_small),
        ),
    ]


# --------------------------------------------------------------------------- 2. warm_build


def warm_build(b: Bench) -> list[dict[str, Any]]:
    """A new build whose packages are all in the root's cache, against ``cp -al`` of the same tree."""
    root = b.work / "warm-root"
    site = b.site("build-site", {"py": PY_ENV}, root)
    hubstock(site, "build")
    prefix = current_build(root, "py")
    trash = Root(root).trash

    def build() -> float:
        remove_tree(prefix, trash)  # the cache (root/pkgs) stays warm
        os.sync()  # no write-back of earlier runs' files during this one
        return timed(hubstock_argv(site, "build"))

    def link() -> float:
        copy = prefix.with_name(prefix.name + ".cp")
        os.sync()
        took = timed(["cp", "-al", str(prefix), str(copy)])
        remove_tree(copy, trash)
        return took

    files = count_files(prefix)
    builds, links = b.interleaved(build, link)
    remove_tree(prefix, trash)
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
    and the rest from PyPI: ~27,000 files), against ``rm -rf`` + ``cp -al`` of the same tree.

    Each run moves the finished build into the root's trash (a rename, untimed) and times
    ``hubstock build server``, which empties the trash first: the removal of the old tree is
    in both figures. Every package is in the root's caches (conda packages, and the wheel cache
    the first build of the site filled)."""
    site = b.hub_site()
    root = site.parent / "root"
    trash = Root(root).trash
    prefix = current_build(root, "server")
    copy = prefix.with_name(prefix.name + ".cp")
    parts: dict[str, list[float]] = {"rm -rf": [], "cp -al": []}

    def build() -> float:
        move_to_trash(prefix, trash)
        os.sync()  # no write-back of earlier runs' files during this one
        return timed(hubstock_argv(site, "build", "server"))

    def replace_copy() -> float:
        subprocess.run(["cp", "-al", str(prefix), str(copy)], check=True)  # the tree rm -rf removes
        os.sync()
        # as hubstock empties its trash: folders made writable (a build's are read-only), then rm -rf
        rm = timed(
            ["sh", "-c", 'find "$1" -type d ! -perm -u+w -exec chmod u+w {} + && rm -rf "$1"', "-", str(copy)]
        )
        cp = timed(["cp", "-al", str(prefix), str(copy)])
        remove_tree(copy, trash)
        parts["rm -rf"].append(rm)
        parts["cp -al"].append(cp)
        return rm + cp

    files = count_files(prefix)
    prov = json.loads((prefix / ".hubstock-build.json").read_text())
    managers = [p["manager"] for p in prov["packages"]]
    builds, copies = b.interleaved(build, replace_copy)
    move_to_trash(prefix, trash)
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
            baseline_parts_s={k: _round(median(v)) for k, v in parts.items()},
            phases_s=phases,
            **timings(builds, copies),
        )
    ]


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
            locks_read_value=_round(median(colds)),
            locks_read_ratio=_round(median(colds) / base, 3),
            locks_read_samples=[round(x, 4) for x in colds],
            pydantic_yaml_value=_round(median(floors)),
            pydantic_yaml_ratio=_round(median(floors) / base, 3),
            **timings(statuses, passes),
        )
    ]


# --------------------------------------------------------------------------- 3. cold_build

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


# --------------------------------------------------------------------------- 4. disk_five_builds


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


# --------------------------------------------------------------------------- kernels


def write_kernels(site: Path, n: int, label: str) -> list[str]:
    """Kernel templates k01..kNN on env ``py`` (others removed); ``label`` goes in the display names."""
    kdir = site / "kernels"
    shutil.rmtree(kdir, ignore_errors=True)
    names = [f"k{i:02d}" for i in range(1, n + 1)]
    for name in names:
        (kdir / name).mkdir(parents=True)
        spec = {
            "argv": KERNEL_ARGV,
            "display_name": f"Bench {name} ({label})",
            "language": "python",
            "metadata": {"hubstock": {"env": "py", "check": "import demo_c"}},
        }
        (kdir / name / "kernel.json").write_text(json.dumps(spec))
    return names


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

site = load_site(sys.argv[1])
kernels = [render_template(t, build_ref(site, t.env)) for t in load_kernel_templates(site)]
with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
    kdir = Path(tmp) / "share" / "jupyter" / "kernels"
    for k in kernels:
        write_kernel(kdir, k)
    t0 = time.perf_counter()
    smoke_test(kernels, kdir, site.settings.publish.smoke_timeout)
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

    pubs, smokes = b.interleaved(publish_once, smoke_alone)
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


# --------------------------------------------------------------------------- 7. hook


def hook(b: Bench) -> list[dict[str, Any]]:
    """The pre-spawn hook per call on a real SlurmSpawner, against that spawner's own ``get_env()``."""
    from types import SimpleNamespace

    from jupyterhub.objects import Hub

    from hubstock.hub.hooks import post_stop_hook, pre_spawn_hook
    from hubstock.hub.spawner import SlurmSpawner

    root = b.hub_site().parent / "root"
    user = SimpleNamespace(name="nobody", url="/user/nobody/", escaped_name="nobody")  # get_env reads pwd
    spawner = SlurmSpawner(user=user, hub=Hub(), name="")
    spawner.api_token = secrets.token_hex(16)
    calls = 20 if b.tiny else 200

    def per_call_ms(fn: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) / calls * 1000

        return run

    hooks, envs = b.interleaved(
        per_call_ms(lambda: pre_spawn_hook(spawner, root)), per_call_ms(spawner.get_env)
    )
    held, envs_held = b.interleaved(_hook_on_loop_ms(spawner, root, calls), per_call_ms(spawner.get_env))
    post_stop_hook(spawner, root)
    return [
        result(
            "hook",
            median(hooks),
            "ms",
            "SlurmSpawner.get_env()",
            median(envs),
            "report both (no target)",
            calls_per_run=calls,
            **timings(hooks, envs),
        ),
        result(
            "hook",
            median(held),
            "ms",
            "SlurmSpawner.get_env()",
            median(envs_held),
            "report: the disk work off the loop",
            name="hook_on_loop",
            calls_per_run=calls,
            **timings(held, envs_held),
        ),
    ]


def _hook_on_loop_ms(spawner: Any, root: Path, calls: int) -> Callable[[], float]:
    """Per call, the time JupyterHub's event loop is held by ``PreSpawnHook`` (awaited as the hub
    awaits it: its reading of the generation, the record's fsync and the audit line run in threads)."""
    import asyncio

    from bench.loop import held_on_loop
    from hubstock.hub.hooks import PreSpawnHook

    hook = PreSpawnHook(root)

    async def all_calls() -> float:
        return sum([await held_on_loop(hook(spawner)) for _ in range(calls)])

    return lambda: asyncio.run(all_calls()) / calls * 1000


# --------------------------------------------------------------------------- 8. spawn_to_ready


def spawn_to_ready(b: Bench) -> list[dict[str, Any]]:
    """From the spawn request to a ready server through the local Slurm, for 1 and N users at once,
    against the same servers started by JupyterHub's LocalProcessSpawner (as root, as each user).

    Two hubs run side by side on the same published site (one per spawner) and the rounds
    alternate between them; one untimed round of every user first warms the users' homes.
    Where the time goes: the median of each phase the Slurm spawner logs per start (``phases_s``),
    and JupyterHub's own time to start of both spawners (``hub_took_s``, ``hub_took_local_s``).
    """
    counts = (1, 2) if b.tiny else (1, 10)
    base, goal = "the same with the local-process spawner", "report (no target)"
    if os.geteuid() != 0:
        reason = "needs root (the Slurm rig, PAM users and a hub that switches users)"
        return [skipped("spawn_to_ready", f"spawn_to_ready_{n}", "s", base, goal, reason) for n in counts]
    require_binaries()
    site = b.hub_site()
    run = secrets.token_hex(2)
    users = {f"hsbench{run}u{i}": secrets.token_urlsafe(12) for i in range(max(counts))}
    times: dict[tuple[str, int], list[list[float]]] = {}
    logs: dict[tuple[str, int], str] = {}
    checks: dict[str, Any] = {}
    rig = OversubscribedRig(site.parent / "slurm", share=max(counts))
    rig.start()
    try:
        for name, pw in users.items():
            create_user(name, pw, site.parent / "homes")
        with running_hub(site, "slurm", rig) as slurm, running_hub(site, "local", rig) as local:
            hubs = {"slurm": (slurm, _tokens(slurm, users)), "local": (local, _tokens(local, users))}
            for scheduler, (hub, tokens) in hubs.items():
                checks[f"first_round_{scheduler}_s"] = _round(max(spawn_round(hub, rig, tokens)))
            for n in counts:
                for _ in range(b.repeat if n == 1 else max(1, min(b.repeat, 3))):
                    for scheduler, (hub, tokens) in hubs.items():
                        some = dict(list(tokens.items())[:n])
                        took, logged = logged_round(hub, rig, some)
                        times.setdefault((scheduler, n), []).append(took)
                        logs[(scheduler, n)] = logs.get((scheduler, n), "") + logged
        checks["active_jobs_after"] = len(rig.jobs(active_only=True))
    finally:
        for name in users:
            remove_user(name)
        rig.stop()
    checks["rig_processes_after"] = len(rig.stray_processes())
    out = []
    for n in counts:
        slurm_all, local_all = times[("slurm", n)], times[("local", n)]
        slurm_s, local_s = [max(t) for t in slurm_all], [max(t) for t in local_all]
        out.append(
            result(
                "spawn_to_ready",
                median(slurm_s),
                "s",
                base,
                median(local_s),
                goal,
                name=f"spawn_to_ready_{n}",
                users=n,
                measure="until the last of the users' servers is ready" if n > 1 else "one user",
                per_user_median_s=_round(median([x for t in slurm_all for x in t])),
                per_user_median_local_s=_round(median([x for t in local_all for x in t])),
                **spawn_log_figures(logs[("slurm", n)], logs[("local", n)]),
                **checks,
                **timings(slurm_s, local_s),
            )
        )
    return out


#: the line the batch spawners log per start (hubstock.hub.job_status.phase_line), and JupyterHub's own
_PHASE_LINE = re.compile(r"Spawn phases of \S+'s server, job \S+ \(s\): ([^\n]*)")
_TOOK_LINE = re.compile(r"User \S+ took ([0-9.]+) seconds to start")


def spawn_log_figures(batch_log: str, local_log: str) -> dict[str, Any]:
    """Where the time of the starts went, from the hubs' logs: the median of each phase of the batch
    spawner's starts (``phases_s``, from its one line per start) and JupyterHub's own time to start
    (from the spawn request to the proxy route: ``hub_took_s``, and the local-process spawner's
    ``hub_took_local_s``)."""
    starts = [
        {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", m.group(1))}
        for m in _PHASE_LINE.finditer(batch_log)
        if "failed" not in m.group(1)
    ]
    out: dict[str, Any] = {"phased_starts": len(starts)}
    if starts:
        out["phases_s"] = {k: _round(median([s[k] for s in starts if k in s])) for k in starts[0]}
    for key, text in (("hub_took_s", batch_log), ("hub_took_local_s", local_log)):
        took = [float(x) for x in _TOOK_LINE.findall(text)]
        out[key] = _round(median(took)) if took else None
    return out


def logged_round(hub: Hub, rig: SlurmRig | Cluster, tokens: dict[str, str]) -> tuple[list[float], str]:
    """:func:`spawn_round`, and what the hub logged meanwhile."""
    start = hub.log_path.stat().st_size if hub.log_path.exists() else 0
    took = spawn_round(hub, rig, tokens)
    with open(hub.log_path, "rb") as f:
        f.seek(start)
        return took, f.read().decode(errors="replace")


def _tokens(hub: Hub, users: dict[str, str]) -> dict[str, str]:
    """An API token per user, from a PAM login with the user's password."""
    tokens = {}
    for name, pw in users.items():
        status, token = hub.token_for(name, pw)
        if status != 201 or not token:
            raise RuntimeError(f"no token for {name}: {status}\n{hub.log_tail()}")
        tokens[name] = token
    return tokens


def spawn_to_ready_pbs(b: Bench) -> list[dict[str, Any]]:
    """``spawn_to_ready_1`` on the private OpenPBS (PBS Pro): from the spawn request to a ready server
    for one user, against the same server started by the local-process spawner. Both hubs, their
    proxies and the client run in the OpenPBS rig's network namespace; rounds alternate between them.
    Not in the tiny run (it builds OpenPBS the first time); skipped without root or OpenPBS."""
    if b.tiny:
        return []
    name, base = "spawn_to_ready_1_pbs", "the same with the local-process spawner (in the rig's namespace)"
    goal = "report (no target)"
    if os.geteuid() != 0:
        return [
            skipped("spawn_to_ready_pbs", name, "s", base, goal, "needs root (the OpenPBS rig, PAM users)")
        ]
    from rigs.openpbs_rig import OpenPBSMissing, OpenPBSRig, locate_openpbs

    try:
        prefix, built = locate_openpbs(log=b.say)
    except OpenPBSMissing as e:
        return [skipped("spawn_to_ready_pbs", name, "s", base, goal, str(e))]
    site = b.hub_site()
    user = f"hsbench{secrets.token_hex(2)}p"
    users = {user: secrets.token_urlsafe(12)}
    times: dict[str, list[float]] = {"pbs": [], "local": []}
    logs = {"pbs": "", "local": ""}
    checks: dict[str, Any] = {}
    rig = OpenPBSRig(site.parent / "openpbs", prefix=prefix)
    rig.start()
    checks["openpbs_start_s"] = _round(rig.timings.get("start"))
    if built is not None:
        checks["openpbs_build_s"] = _round(built)
    cluster = PBSCluster(rig)
    try:
        create_user(user, users[user], site.parent / "homes")
        with (
            running_hub(site, "pbs", rig, cluster) as pbs,
            running_hub(site, "local", rig, cluster) as local,
        ):
            hubs = {"pbs": (pbs, _tokens(pbs, users)), "local": (local, _tokens(local, users))}
            for scheduler, (hub, tokens) in hubs.items():  # warms the user's home
                checks[f"first_round_{scheduler}_s"] = _round(max(spawn_round(hub, cluster, tokens)))
            for _ in range(b.repeat):
                for scheduler, (hub, tokens) in hubs.items():
                    took, logged = logged_round(hub, cluster, tokens)
                    times[scheduler] += took
                    logs[scheduler] += logged
        checks["active_jobs_after"] = len(cluster.jobs(active_only=True))
    finally:
        remove_user(user)
        cluster.close()
        rig.stop()
    checks["rig_processes_after"] = len(rig.stray_processes())
    return [
        result(
            "spawn_to_ready_pbs",
            median(times["pbs"]),
            "s",
            base,
            median(times["local"]),
            goal,
            name=name,
            users=1,
            measure="one user, OpenPBS (PBS Pro) job",
            **spawn_log_figures(logs["pbs"], logs["local"]),
            **checks,
            **timings(times["pbs"], times["local"]),
        )
    ]


def spawn_round(hub: Hub, rig: SlurmRig | Cluster, tokens: dict[str, str]) -> list[float]:
    """Start the users' servers at once, then stop them (and wait for their jobs to end)."""
    took = spawn_all(hub, tokens)
    stop_all(hub, tokens)
    rig.wait_no_jobs(timeout=120, active_only=True)
    return took


class OversubscribedRig(SlurmRig):
    """The tests' Slurm rig, with its cores shared by up to ``share`` jobs (ten servers on two cores)."""

    def __init__(self, workdir: Path, share: int) -> None:
        self.share = share
        super().__init__(workdir)

    def _slurm_conf_text(self) -> str:
        return (
            super()._slurm_conf_text().replace("State=UP\n", f"State=UP OverSubscribe=FORCE:{self.share}\n")
        )


@contextmanager
def running_hub(site: Path, scheduler: str, rig: Any, cluster: Cluster | None = None) -> Iterator[Hub]:
    """JupyterHub on the hub site with ``scheduler`` (slurm, pbs or local); stopped by PID afterwards.
    With ``cluster`` (the OpenPBS rig's), the hub and its client run in the rig's network namespace."""
    hub_dir = site.parent
    ports = [free_port() for _ in range(3)]
    label = scheduler if cluster is None else f"{scheduler}-{cluster.name}"
    if cluster is not None and scheduler != "local":
        settings, env = cluster.settings(), cluster.hub_env()
    else:
        conf = rig.slurm_conf if scheduler == "slurm" else None
        settings = {"scheduler": scheduler, "slurm_conf": conf}
        env = rig.env if scheduler == "slurm" else None
    (site / "hubstock.toml").write_text(
        hub_settings(hub_dir / "root", cached_channel(), hub_dir / f"state-{label}", ports=ports, **settings)
    )
    hub = start_hub(
        site,
        ports[0],
        hub_dir / f"hub-{label}.log",
        extra_env=env,
        launcher=cluster.launcher if cluster else None,
        netns=cluster.netns if cluster else None,
    )
    try:
        yield hub
    finally:
        hub.stop()
        if scheduler != "local":
            (cluster or rig).wait_no_jobs(timeout=120, active_only=True)


def spawn_all(hub: Hub, tokens: dict[str, str]) -> list[float]:
    """Ask for every user's server at the same moment; seconds until each one is ready."""
    took: dict[str, float] = {}
    errors: list[str] = []
    gate = threading.Barrier(len(tokens))

    def one(user: str, token: str) -> None:
        try:
            gate.wait()
            t0 = time.perf_counter()
            status, body = hub.request(
                "POST", f"/hub/api/users/{user}/server", token=token, body={}, timeout=300
            )
            if status == 202:  # still starting after slow_spawn_timeout: follow its progress
                hub.progress(user, token, timeout=300)
            elif status != 201:
                raise RuntimeError(f"spawn of {user}: {status} {body}")
            took[user] = time.perf_counter() - t0
            hub.wait_for_server(user, token, timeout=10)  # it is ready (not failed)
        except Exception as e:  # reported below, with the hub's log
            errors.append(f"{user}: {e}")

    threads = [threading.Thread(target=one, args=item) for item in tokens.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors) + "\n" + hub.log_tail())
    return [took[u] for u in tokens]


def stop_all(hub: Hub, tokens: dict[str, str]) -> None:
    for user, token in tokens.items():
        hub.request("DELETE", f"/hub/api/users/{user}/server", token=token, timeout=120)
    for user, token in tokens.items():
        hub.wait_stopped(user, token, timeout=120)


# --------------------------------------------------------------------------- 9. status_rpcs_per_interval


def status_rpcs_per_interval(b: Bench) -> list[dict[str, Any]]:
    """The status RPCs slurmctld serves per poll interval (``sdiag``, by message type) with N servers
    running, against batchspawner's own per-job polling of the same N jobs (``SlurmSpawner.poll``
    once per interval for each, as JupyterHub calls it), measured in the same run; and with 1 server.

    The servers are real (JupyterHub, PAM users, the Slurm rig with its cores shared); the hub's
    ``status_interval`` is 5 s (2 s in the tiny run). The baseline runs while the hub is down,
    so that only batchspawner's queries are counted.
    """
    n, interval, windows = (2, 2, 2) if b.tiny else (20, 5, 4)
    unit, base = "RPCs", "batchspawner's per-job polling of the same servers"
    goal = "the same as with 1 server (one query per interval, whatever N)"
    if os.geteuid() != 0:
        reason = "needs root (the Slurm rig, PAM users and a hub that switches users)"
        return [skipped("status_rpcs_per_interval", "status_rpcs_per_interval", unit, base, goal, reason)]
    require_binaries()
    site = b.hub_site()
    run = secrets.token_hex(2)
    users = {f"hsrpc{run}u{i:02d}": secrets.token_urlsafe(12) for i in range(n)}
    rig = SlurmRig(site.parent / "slurm-rpcs", oversubscribe=max(n, 2))
    rig.start()
    hub: Hub | None = None
    try:
        for name, pw in users.items():
            create_user(name, pw, site.parent / "homes")
        ports = [free_port() for _ in range(3)]
        text = hub_settings(
            site.parent / "root", cached_channel(), site.parent / "state-rpcs", "slurm", ports, rig.slurm_conf
        )
        (site / "hubstock.toml").write_text(
            text.replace("[spawner]\n", f"[spawner]\nstatus_interval = {interval}\n", 1)
        )
        hub = start_hub(
            site, ports[0], site.parent / "hub-rpcs.log", extra_env=rig.env, cleanup_servers=False
        )
        tokens = list(_tokens(hub, users).items())
        spawn_all(hub, dict(tokens[:1]))
        with_one, one_counts = _status_rpcs(rig, interval, windows)
        for i in range(1, n, 5):  # a few at a time: the machine may have two cores
            spawn_all(hub, dict(tokens[i : i + 5]))
        with_n, n_counts = _status_rpcs(rig, interval, windows)
        jobs = dict(line.split() for line in rig.run(["squeue", "-h", "-o", "%i %u"]).stdout.splitlines())
        if len(jobs) != n:
            raise RuntimeError(f"{len(jobs)} jobs for {n} servers: {jobs}")
        hub.stop()  # the jobs stay (cleanup_servers off), and only batchspawner asks about them now
        baseline, base_counts = _batchspawner_rpcs(rig, jobs, interval, windows)
        hub.cleanup_servers = True  # start it once more to stop the servers as the hub does
        hub.start()
    finally:
        if hub is not None:
            hub.stop()
        rig.cancel_all()
        for name in users:
            remove_user(name)
        rig.stop()
    return [
        result(
            "status_rpcs_per_interval",
            with_n,
            unit,
            base,
            baseline,
            goal,
            met=with_n <= with_one,
            servers=n,
            with_1_server=with_one,
            interval_s=interval,
            intervals=windows,
            rpcs_by_type={"1": one_counts, str(n): n_counts, "baseline": base_counts},
            runs=1,
        )
    ]


def _status_rpcs(rig: SlurmRig, interval: float, windows: int) -> tuple[float, dict[str, int]]:
    """Status RPCs per interval over ``windows`` intervals, after one interval of quiet; and by type."""
    time.sleep(interval)
    rig.reset_rpc_counts()
    time.sleep(interval * windows)
    counts = {k: v for k, v in rig.rpc_counts().items() if k in rig.STATUS_RPCS}
    return sum(counts.values()) / windows, counts


def _batchspawner_rpcs(
    rig: SlurmRig, jobs: dict[str, str], interval: float, windows: int
) -> tuple[float, dict[str, int]]:
    """What batchspawner's own SlurmSpawner costs: each job's ``poll()`` once per interval, as the
    hub's user (``runuser -u USER --``, as the hub runs it)."""
    import asyncio
    from types import SimpleNamespace

    import batchspawner
    from jupyterhub.objects import Hub as JupyterHubHub

    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    spawners = []
    for job_id, user in jobs.items():
        who = SimpleNamespace(name=user, url=f"/user/{user}/", escaped_name=user)
        sp = batchspawner.SlurmSpawner(user=who, hub=JupyterHubHub(), name="")
        sp.exec_prefix = f"{runuser} -u {{username}} --"
        sp.api_token = secrets.token_hex(16)
        sp.job_id = job_id
        spawners.append(sp)

    async def rounds() -> None:
        for _ in range(windows):
            t0 = time.monotonic()
            states = await asyncio.gather(*(sp.poll() for sp in spawners))
            if any(s is not None for s in states):
                raise RuntimeError(f"batchspawner saw a server end: {states}")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(rig.slurm_conf)  # batchspawner queries with the hub's environment
    try:
        rig.reset_rpc_counts()
        asyncio.run(rounds())
        counts = {k: v for k, v in rig.rpc_counts().items() if k in rig.STATUS_RPCS}
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    return sum(counts.values()) / windows, counts


# --------------------------------------------------------------------------- the suite

#: (benchmark, function) in the order they run
CASES: list[tuple[str, Callable[[Bench], list[dict[str, Any]]]]] = [
    ("noop_build", noop_build),
    ("warm_build", warm_build),
    ("warm_build_large", warm_build_large),
    ("cli_overhead", cli_overhead),
    ("cold_build", cold_build),
    ("disk_five_builds", disk_five_builds),
    ("kernel_start_readonly", kernel_start_readonly),
    ("publish", publish),
    ("hook", hook),
    ("spawn_to_ready", spawn_to_ready),
    ("spawn_to_ready_pbs", spawn_to_ready_pbs),
    ("status_rpcs_per_interval", status_rpcs_per_interval),
]


def world_tmp(prefix: str = "hubstock-bench-") -> Path:
    """A fresh 0755 directory in /tmp (other users run what is built below it)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def remove_work(work: Path) -> None:
    """Remove the scratch folder, read-only builds and generations included."""
    subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
    shutil.rmtree(work, ignore_errors=True)
