"""What every benchmark shares: result entries, the :class:`Bench` context (scratch folder,
channel, built sites), running the real ``hubstock`` command and timing commands.

A result entry::

    {"name": "warm_build", "value": 1.02, "unit": "s", "baseline": "cp -al of the build",
     "baseline_value": 0.11, "ratio": 9.3, "goal": "ratio <= 1.5", "met": false,
     "benchmark": "warm_build", "runs": 5, "samples": [...], "baseline_samples": [...], ...}

Extra fields explain a figure (file counts, phases of a build, files written).
A benchmark that cannot run here (``spawn_to_ready`` without root) has
``"value": null`` and says why in ``"skipped"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rigs.channel import add_package, cached_channel
from rigs.hubsite import base_settings, build_site, py_env

from hubstock.store.root import Root

from ..compare import BAND

#: the repository's root (``python -m bench.phases`` runs from there)
REPO = Path(__file__).resolve().parents[2]
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
    """One entry of results.json; ``met`` is ``ratio <= limit`` unless given.

    With paired ``samples`` and ``baseline_samples`` (:func:`timings`: run i of each side taken
    one after the other), ``ratio`` is the median of the pairs' ratios and ``ratio_spread`` their
    ``[min, median, max]``: ``met`` is decided on that median."""
    ratio = value / baseline_value if value is not None and baseline_value else None
    spread = ratio_spread(extra.get("samples"), extra.get("baseline_samples"))
    if spread is not None and value is not None:
        ratio = spread[1]
    if met is None and limit is not None and ratio is not None:
        met = ratio <= limit
    return {
        "name": name or benchmark,
        "value": rounded(value),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": rounded(baseline_value),
        "ratio": rounded(ratio, 3),
        "goal": goal,
        "met": met,
        "benchmark": benchmark,
        **(
            {"ratio_spread": [rounded(x, 3) for x in spread]}
            if spread is not None and value is not None
            else {}
        ),
        **extra,
    }


def ratio_spread(samples: Any, baseline_samples: Any) -> tuple[float, float, float] | None:
    """``(min, median, max)`` of ``samples[i] / baseline_samples[i]``; None unless they pair up."""
    if not isinstance(samples, list) or not isinstance(baseline_samples, list):
        return None
    if not samples or len(samples) != len(baseline_samples) or not all(b for b in baseline_samples):
        return None
    ratios = [a / b for a, b in zip(samples, baseline_samples, strict=True)]
    return min(ratios), statistics.median(ratios), max(ratios)


def rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def skipped(benchmark: str, name: str, unit: str, baseline: str, goal: str, reason: str) -> dict[str, Any]:
    return {**result(benchmark, None, unit, baseline, None, goal, name=name), "skipped": reason}


def timings(a: list[float], b: list[float]) -> dict[str, Any]:
    """The extra fields that show the runs behind a median."""
    return {"runs": len(a), "samples": [round(x, 4) for x in a], "baseline_samples": [round(x, 4) for x in b]}


median = statistics.median

# BAND (bench.compare's): a figure is steady when its rounds' ratios spread (interquartile range)
# within this fraction of their median; adaptive runs go on until it is, up to CAP_TIMES x repeat
# rounds or CAP_SECONDS
CAP_TIMES = 3
CAP_SECONDS = 300.0


def relative_spread(a: list[float], b: list[float]) -> float:
    """The spread of the paired ratios ``a[k] / b[k]`` relative to their median: the interquartile
    range from four pairs on, max - min below that (0 for fewer than two pairs)."""
    ratios = sorted(x / y for x, y in zip(a, b, strict=False) if y)
    if len(ratios) < 2:
        return 0.0
    mid = statistics.median(ratios)
    if len(ratios) >= 4:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        width = q3 - q1
    else:
        width = ratios[-1] - ratios[0]
    return width / mid if mid else 0.0


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
    #: figures whose ratio stayed outside the band at the cap (reset by the runner for each benchmark)
    unsteady: list[str] = field(default_factory=list)

    def interleaved(
        self,
        *runs: Callable[[], float],
        times: int | None = None,
        steady: tuple[int, int] | None = None,
    ) -> list[list[float]]:
        """Call each of ``runs`` in turn, ``times`` (default ``repeat``) times; the samples of each.

        A run that fails is recorded in ``failures`` and run once more (a second
        failure ends the benchmark): one flaky start must not hide a figure, nor pass unseen.

        ``steady=(i, j)``: the figure is the ratio of ``runs[i]`` to ``runs[j]``, and more rounds
        are run until it is steady: the interquartile range of the rounds' ratios within
        :data:`BAND` of their median (max - min, under four rounds), up to :data:`CAP_TIMES` x
        ``repeat`` rounds or :data:`CAP_SECONDS` of extra rounds; past the cap, ``unsteady``
        says how far it was (the table marks the figure). Not with ``--tiny`` or ``times``.
        """
        samples: list[list[float]] = [[] for _ in runs]
        for _ in range(times or self.repeat):
            self._round(runs, samples)
        if steady is None or self.tiny or times is not None:
            return samples
        i, j = steady
        started = time.monotonic()
        while (spread := relative_spread(samples[i], samples[j])) > BAND:
            if len(samples[i]) >= CAP_TIMES * self.repeat or time.monotonic() - started > CAP_SECONDS:
                self.unsteady.append(
                    f"{len(samples[i])} rounds: the ratios' spread is {spread:.0%} of their median (band {BAND:.0%})"
                )
                break
            self._round(runs, samples)
        return samples

    def _round(self, runs: tuple[Callable[[], float], ...], samples: list[list[float]]) -> None:
        for i, run in enumerate(runs):
            try:
                samples[i].append(run())
            except RuntimeError as e:
                self.failures.append(" ".join(str(e).split())[:400])
                self.say(f"a run failed, running it again: {self.failures[-1][:200]}")
                samples[i].append(run())

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
        hubstock(site, "init-root")
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


def shadow_copy(prefix: Path) -> Path:
    """A full copy of a build beside it, for the baselines that link or remove "the same tree":
    links of the build itself are links of the caches' files, which move their change times, and
    hubstock's next build would check those packages in full (see ``admin/build/seals.py``)."""
    shadow = prefix.with_name(prefix.name + ".shadow")
    subprocess.run(["cp", "-a", str(prefix), str(shadow)], check=True)
    return shadow


def remove_build(root: Path, prefix: Path) -> None:
    """Remove a build the way ``hubstock gc`` does: deleted under the root's lock, then the caches'
    fingerprints taken again (its unlinks moved their files' change times)."""
    from hubstock.admin.build import cache, wheels
    from hubstock.admin.build.seals import pkg_watermarks
    from hubstock.store.fs import remove_tree

    r = Root(root)
    with r.locked():
        pkg_marks, wheel_marks = pkg_watermarks(r), wheels.wheel_watermarks(r)
        intact_pkgs, intact_wheels = cache.intact_entries(r, pkg_marks), wheels.intact_entries(r, wheel_marks)
        remove_tree(prefix, r.trash)
        pkg_marks.advance(intact_pkgs)
        wheel_marks.advance(intact_wheels)


def count_files(top: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(top))


def build_phases(site: Path, root: Path, env: str, environ: dict[str, str] | None = None) -> dict[str, float]:
    """The phases of one build of ``env`` into the (empty of it) ``root``, via bench.phases
    (``environ``: its environment, else this process's)."""
    argv = [sys.executable, "-m", "bench.phases", str(site), str(root), env]
    wall, out = run_checked(argv, cwd=REPO, env=environ)
    phases = json.loads(out.strip().splitlines()[-1])
    phases["interpreter, imports, exit"] = round(wall - phases["build total"], 4)
    return phases


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


# --------------------------------------------------------------------------- the scratch folder


def world_tmp(prefix: str = "hubstock-bench-") -> Path:
    """A fresh 0755 directory in /tmp (other users run what is built below it)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def remove_work(work: Path) -> None:
    """Remove the scratch folder, read-only builds and generations included."""
    subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
    shutil.rmtree(work, ignore_errors=True)


def left_behind(work: Path) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every process still running in, or from, the scratch folder
    ``work`` (its working folder or its command line there, the folder removed or not): what the
    bench started and did not stop (a proxy, a hub, a server, a rig's daemon). This process aside."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd").removesuffix(" (deleted)")
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
            if not cmdline.strip():  # in the middle of an exec, or a zombie: its name at least
                cmdline = f"[{Path(f'/proc/{entry}/comm').read_text().strip()}]"
        except OSError:
            continue
        if cwd == str(work) or cwd.startswith(f"{work}/") or str(work) in cmdline:
            left.append((int(entry), cmdline.strip()))
    return sorted(left)


def stop_left_behind(work: Path, say: Say) -> list[tuple[int, str]]:
    """Stop (by PID: SIGTERM, then SIGKILL after 10 s) what :func:`left_behind` finds; what it found."""
    left = left_behind(work)
    for pid, cmd in left:
        say(f"still running after the bench: pid {pid}: {cmd[:200]}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid, _ in left):
        time.sleep(0.2)
    for pid, _ in left:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return left


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
