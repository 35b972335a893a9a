"""The benchmark suite's code runs (``python -m bench.run --tiny``); the benchmarks themselves never run here.

``nox -s bench`` runs the real suite (see BENCHMARKS.md). This test runs its tiny
case, one run of each figure at the smallest sizes, and checks that every
benchmark reports a figure with its baseline (or, without root, says why
``spawn_to_ready`` and ``kernel_start_readonly`` were skipped; without Lmod and R, why
``module_kernel_start`` was).

One figure is also a check of the hub, on the servers the bench starts anyway:
``status_rpcs_per_interval`` (4 real servers through the hub, the Slurm rig's ``sdiag``) must
show the status RPCs per interval not growing with the servers (counts, not times).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = {
    "noop_build",
    "warm_build",
    "warm_build_large",
    "cli_overhead",
    "cold_build",
    "disk_five_builds",
    "venv_build_cold",
    "venv_build_warm",
    "kernel_start_readonly",
    "module_kernel_start",
    "publish",
    "hook",
    "spawn_to_ready",
    "status_rpcs_per_interval",
    "status_fallback",
    "personal_build",
    "netfs",
}
KEYS = {"name", "value", "unit", "baseline", "baseline_value", "ratio", "goal"}
NEEDS_ROOT = {"kernel_start_readonly", "spawn_to_ready", "status_rpcs_per_interval", "personal_build"}
#: skipped on a machine without what they start, with a reason that says (benchmark -> part of it)
NEEDS_SOFTWARE = {
    "venv_build_cold": "/usr/bin/python3",
    "venv_build_warm": "/usr/bin/python3",
    "module_kernel_start": "needs",  # Lmod and R, or IRkernel
}


def test_the_tiny_benchmark_run_reports_every_figure(tmp_path):
    out = tmp_path / "r.json"
    res = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads(out.read_text())
    assert isinstance(results, list)
    assert {r["benchmark"] for r in results} == BENCHMARKS
    names = {r["name"] for r in results}
    assert {"noop_build", "noop_build_10x_files", "publish_1", "publish_2", "hook", "hook_on_loop"} <= names
    assert {"spawn_to_ready_1", "spawn_to_ready_2"} <= names
    for r in results:
        assert set(r) >= KEYS, r
        assert "error" not in r, r
        if r.get("skipped"):
            if r["benchmark"] == "netfs":  # a tiny run leaves the network filesystem to test_netfs.py
                assert "tiny run leaves out" in r["skipped"], r
            elif r["benchmark"] in NEEDS_SOFTWARE:
                assert NEEDS_SOFTWARE[r["benchmark"]] in r["skipped"], r
            else:
                assert os.geteuid() != 0 and r["benchmark"] in NEEDS_ROOT, r
            continue
        assert r["value"] > 0 and r["baseline_value"] > 0, r
        if "ratio_spread" in r:  # paired runs: the median of the pairs' ratios, inside their spread
            low, mid, high = r["ratio_spread"]
            assert r["ratio"] == mid and low <= mid <= high, r
            assert len(r["samples"]) == len(r["baseline_samples"]) == r["runs"], r
        else:
            assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"], rel=1e-2), r
        assert r["runs"] >= 1 and r["goal"], r
    rpcs = next(r for r in results if r["name"] == "status_rpcs_per_interval")
    if not rpcs.get("skipped"):
        # four servers cost slurmctld no more than one (one batched query per interval); batchspawner
        # asks once per server: at least twice as many
        assert rpcs["servers"] == 4 and rpcs["met"], rpcs
        assert rpcs["value"] * 2 <= rpcs["baseline_value"], rpcs
    personal = next(r for r in results if r["name"] == "personal_build")
    if not personal.get("skipped"):  # a user's three packages cost megabytes, not the stock's gigabytes
        assert personal["size_ratio"] < 0.05, personal
    readonly = next(r for r in results if r["name"] == "kernel_start_readonly")
    if not readonly.get("skipped"):
        assert readonly["files_written"] == 0, readonly
    module = next(r for r in results if r["name"] == "module_kernel_start")
    if not module.get("skipped"):  # the load alone, and what it adds to a start, are reported
        assert module["module_load_alone_s"] > 0 and "lmod_cost_s" in module, module
    spawn = [r for r in results if r["benchmark"] == "spawn_to_ready" and not r.get("skipped")]
    assert all(r["active_jobs_after"] == 0 and r["rig_processes_after"] == 0 for r in spawn), spawn
    rpcs = next(r for r in results if r["name"] == "status_rpcs_per_interval")
    if not rpcs.get("skipped"):  # one status query per interval, whatever the number of servers
        assert rpcs["met"] and rpcs["value"] < rpcs["baseline_value"], rpcs
    fallback = {r["name"]: r for r in results if r["benchmark"] == "status_fallback"}
    assert (
        fallback["status_fallback_calls"]["value"] <= 21 < fallback["status_fallback_calls"]["baseline_value"]
    )
    assert {n for n in fallback if n.startswith("status_loop_stall_")} == {
        "status_loop_stall_200",
        "status_loop_stall_500",
    }
    # the table: a header, then one row per figure
    table = res.stdout[res.stdout.index("name ") :]
    assert "baseline value" in table and "met?" in table
    assert all(name in table for name in names)


def test_what_the_bench_started_and_left_running_is_found_and_stopped(tmp_path):
    """The bench's end check (issue 26): a process still running in its scratch folder (here a
    stand-in for a proxy left behind, its folder already removed) is named and stopped, by PID."""
    sys.path.insert(0, str(REPO))
    from bench.cases.common import left_behind, stop_left_behind

    work = tmp_path / "hubstock-bench-x"
    (work / "hub").mkdir(parents=True)
    # the stand-in says it is up once its command line is in place (a process between vfork and
    # the end of its exec shows an empty one)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(300)"],
        cwd=work / "hub",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        (work / "hub").rmdir()  # the scratch folder goes first; the process keeps its deleted cwd
        assert [pid for pid, _ in left_behind(work)] == [proc.pid]
        said: list[str] = []
        assert [pid for pid, _ in stop_left_behind(work, said.append)] == [proc.pid]
        assert proc.wait(15) == -15 and f"pid {proc.pid}: {sys.executable} -c" in said[0], said
        assert left_behind(work) == []
    finally:
        proc.kill()
        proc.wait()


def _figure(name: str, samples: list[float], baseline: list[float]) -> dict:
    sys.path.insert(0, str(REPO))
    from bench.cases.common import median, result, timings

    return result(
        name, median(samples), "s", "b", median(baseline), "ratio <= 1.2", 1.2, **timings(samples, baseline)
    )


def test_a_figure_has_the_spread_of_its_pairs_and_is_met_on_their_median():
    r = _figure("x", [1.0, 1.3, 1.1], [1.0, 1.0, 1.0])
    assert r["ratio_spread"] == [1.0, 1.1, 1.3] and r["ratio"] == 1.1 and r["met"] is True
    sys.path.insert(0, str(REPO))
    from bench.run import table

    assert "1.1 [1-1.3]" in table([r])


def test_compare_names_exactly_the_figure_that_moved(tmp_path):
    """``--compare``: two runs of the same work name nothing, not even a figure that drifted outside
    both spreads by less than the band (c: 1.29 -> 1.37, as publish_1 did between two real runs);
    a heavier workload in one figure names that figure alone (faster or slower), with both
    spreads; exit 1 then."""
    drift_a, drift_b = _figure("c", [1.25, 1.29, 1.35], [1.0] * 3), _figure("c", [1.3, 1.37, 1.42], [1.0] * 3)
    before = [_figure("a", [1.0, 1.1, 1.05], [1.0] * 3), _figure("b", [2.0, 2.2, 2.1], [1.0] * 3), drift_a]
    same = [_figure("a", [1.08, 1.02, 1.06], [1.0] * 3), _figure("b", [2.1, 2.15, 2.05], [1.0] * 3), drift_b]
    heavier = [_figure("a", [1.0, 1.04, 1.1], [1.0] * 3), _figure("b", [2.6, 2.8, 2.7], [1.0] * 3), drift_a]
    files = {}
    for label, run in (("before", before), ("same", same), ("heavier", heavier)):
        files[label] = tmp_path / f"{label}.json"
        files[label].write_text(json.dumps(run))

    def compare(a: str, b: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bench.compare", str(files[a]), str(files[b])],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip

    res = compare("before", "same")
    assert res.returncode == 0 and "0 of 3 figure(s) moved beyond their spread and 10%" in res.stdout, (
        res.stdout
    )
    res = compare("before", "heavier")
    assert res.returncode == 1, res.stdout
    assert [line.strip() for line in res.stdout.splitlines() if "MOVED" in line] == [
        "MOVED b: slower: ratio 2.1 [2-2.2] -> 2.7 [2.6-2.8]"
    ], res.stdout
    res = compare("heavier", "before")
    assert "MOVED b: faster" in res.stdout
    (tmp_path / "bad.json").write_text("{")
    files["bad"] = tmp_path / "bad.json"
    res = compare("bad", "same")
    assert res.returncode == 2 and "cannot be read as a results file" in res.stdout


def test_runs_go_on_until_the_figure_is_steady_or_the_cap_says_how_far_it_was(tmp_path):
    from bench.cases.common import CAP_TIMES, Bench, relative_spread

    assert relative_spread([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]) == 0.0
    assert relative_spread([1.0, 2.0], [1.0, 1.0]) == pytest.approx(2 / 3)

    b = Bench(work=tmp_path, repeat=3, say=lambda _: None)
    figure = iter([1.0, 2.0, 1.0] + [1.0] * 50)  # one slow round among the first three, then steady
    ours, base = b.interleaved(lambda: next(figure), lambda: 1.0, steady=(0, 1))
    assert 3 < len(ours) == len(base) < CAP_TIMES * 3 and not b.unsteady
    assert relative_spread(ours, base) <= 0.10

    noisy = iter([1.0, 2.0] * 50)  # never steady: stops at the cap, and says so
    ours, base = b.interleaved(lambda: next(noisy), lambda: 1.0, steady=(0, 1))
    assert len(ours) == CAP_TIMES * 3 and "rounds: the ratios' spread is" in b.unsteady[0]

    tiny = Bench(work=tmp_path, repeat=1, tiny=True, say=lambda _: None)
    assert len(tiny.interleaved(lambda: next(noisy), lambda: 1.0, steady=(0, 1))[0]) == 1
