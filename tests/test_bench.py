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
    "netfs",
}
KEYS = {"name", "value", "unit", "baseline", "baseline_value", "ratio", "goal"}
NEEDS_ROOT = {"kernel_start_readonly", "spawn_to_ready", "status_rpcs_per_interval"}
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
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"], rel=1e-2), r
        assert r["runs"] >= 1 and r["goal"], r
    rpcs = next(r for r in results if r["name"] == "status_rpcs_per_interval")
    if not rpcs.get("skipped"):
        # four servers cost slurmctld no more than one (one batched query per interval); batchspawner
        # asks once per server: at least twice as many
        assert rpcs["servers"] == 4 and rpcs["met"], rpcs
        assert rpcs["value"] * 2 <= rpcs["baseline_value"], rpcs
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
