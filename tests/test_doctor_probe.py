"""``hubstock doctor`` from the compute node's side, with fakes: the probe's report read as checks,
the probe itself, and the probe job's life (submit, wait, report, cancel) against stand-in
``sbatch``/``squeue``/``scancel`` scripts that run the job script in the background, as the user
running the tests. ``tests/test_doctor_hub.py`` runs it on the Slurm rig.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hubstock.batchjob import (
    JobCommands,
    job_commands,
    job_logs,
    job_state,
    output_file,
    parse_job_id,
    render_probe_script,
)
from hubstock.hub.doctor import node_probe
from hubstock.hub.doctor.envs import GenerationEnvs, InterpreterUse, ModuleSet
from hubstock.hub.doctor.job import ProbeJob, ProbePlan
from hubstock.hub.doctor.jobscript import probe_options, probe_shell
from hubstock.hub.doctor.model import Check, format_check
from hubstock.hub.doctor.node import NodeExpect, node_checks, version_tuple
from hubstock.hub.doctor.node_probe import main as probe_main
from hubstock.limits import Limits, MiB, Queue, Seconds
from hubstock.site import load_site

REPO = Path(__file__).resolve().parent.parent


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


# ---------------------------------------------------------------------------------------------- the node

EXPECT = NodeExpect(
    root="/sw/root", server_prefix="/sw/root/envs/server/s1", glibc="2.28", linux="5.10", cuda=None,
    gpu=False, hub_url="http://hub01:8081/hub/api", hub_running=True, user="hubtest",
)  # fmt: skip
REPORT = {
    "started": 1.0, "host": "node042", "user": "hubtest", "python": "3.12.1",
    "root": {"visible": True, "unreadable": []},
    "singleuser": {"ok": True, "version": "5.2.1"},
    "glibc": "2.36", "linux": "6.1.0-13-amd64", "cuda": None,
    "hub_api": {"status": 200, "version": "5.2.1"},
}  # fmt: skip


def test_a_good_report_is_all_ok():
    assert version_tuple("6.1.0-13-amd64") == (6, 1, 0) and version_tuple("x") == ()
    assert set(statuses(node_checks(REPORT, EXPECT)).values()) == {"ok"}


@pytest.mark.parametrize(
    ("change", "expect", "failing", "says"),
    [
        ({"root": {"visible": True, "unreadable": [{"path": "/sw/root/envs/python/p1/lib", "error": "Permission denied"}]}},
         {}, "node.root", "chmod -R a+rX /sw/root/envs/python/p1/lib"),
        ({"root": {"visible": False, "unreadable": []}}, {}, "node.root", "mount the shared root"),
        ({"singleuser": {"ok": False, "error": "ImportError"}}, {}, "node.python", "run it on a compute node"),
        ({}, {"glibc": "2.99"}, "node.glibc", "glibc = '2.36'"),
        ({"hub_api": {"status": 0, "error": "Connection refused"}}, {}, "node.hub_api", "[hub] hub_connect_ip"),
        ({"cuda": {"version": None, "error": "no driver"}}, {"gpu": True}, "node.cuda", "NVIDIA driver"),
        ({"cuda": {"version": "12.2"}}, {"gpu": True, "cuda": "12.4"}, "node.cuda", "cuda = '12.2'"),
    ],
)  # fmt: skip
def test_each_problem_on_the_node_is_its_own_fail(change, expect, failing, says):
    from dataclasses import replace

    checks = node_checks({**REPORT, **change}, replace(EXPECT, **expect))
    bad = [c for c in checks if c.status != "ok"]
    assert [c.name for c in bad] == [failing] and bad[0].status == "FAIL"
    assert says in bad[0].fix


def test_no_hub_api_when_the_hub_is_down_is_only_a_warning():
    from dataclasses import replace

    checks = node_checks(
        {**REPORT, "hub_api": {"status": 0, "error": "refused"}}, replace(EXPECT, hub_running=False)
    )
    assert statuses(checks)["node.hub_api"] == "warn"


def test_a_python_that_cannot_run_still_says_whether_the_root_is_there():
    report = {
        "probe_failed": 126,
        "host": "n1",
        "started": 1.0,
        "root_readable": True,
        "python_executable": False,
    }
    s = statuses(node_checks(report, EXPECT))
    assert s == {"node.root": "ok", "node.python": "FAIL", "node.glibc": "warn", "node.hub_api": "warn"}


def test_the_probe_reports_what_it_sees(tmp_path):
    prefix = tmp_path / "root" / "envs" / "server" / "s1"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "jupyterhub-singleuser").write_text("#!/bin/sh\necho 9.9.9\n")
    (prefix / "bin" / "jupyterhub-singleuser").chmod(0o755)
    hidden = tmp_path / "root" / "envs" / "python"
    hidden.mkdir()
    (hidden / "inside").mkdir()

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"version": "9.9.9"}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args = {
        "dirs": [str(tmp_path / "root")], "trees": [str(prefix), str(hidden)], "files": [str(tmp_path / "nope")],
        "server_prefix": str(prefix), "hub_api": f"http://127.0.0.1:{server.server_address[1]}/hub/api",
    }  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(args))
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from hubstock.hub.doctor.node_probe import main; sys.exit(main(sys.argv))",
         str(tmp_path / "args.json"), "12.5"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    server.shutdown()
    report = json.loads(out)
    assert report["started"] == 12.5 and report["root"]["visible"]
    assert [p["path"] for p in report["root"]["unreadable"]] == [str(tmp_path / "nope")]
    assert report["singleuser"] == {"ok": True, "version": "9.9.9"}
    assert report["hub_api"] == {"status": 200, "version": "9.9.9"}
    assert report["glibc"] and report["cuda"] is None
    assert callable(probe_main)


# ------------------------------------------------------------------ the node: interpreters and modules

SHA_A, SHA_B = "a" * 64, "b" * 64
PY = "/sw/python/3.11/bin/python3"
ENVS = GenerationEnvs(
    interpreters=(
        InterpreterUse("server", "s1", "/usr/bin/python3", SHA_A, "3.11.2"),
        InterpreterUse("python", "p1abcdef99", PY, SHA_A, "3.11.2", "python/3.11", ("python/3.11",)),
    ),
    module_sets=(
        ModuleSet(("python/3.11",), ("python-stock",)),
        ModuleSet(("R/4.2",), ("r", "r-4b03c0ba")),
    ),
)
LOADED = {"ok": True, "code": 0, "init": "/usr/share/lmod/lmod/init/bash", "output": ""}
ENV_REPORT = {
    "interpreters": [
        {"path": "/usr/bin/python3", "exists": True, "real": "/usr/bin/python3.11", "sha256": SHA_A},
        {"path": PY, "load": LOADED, "on_path": PY, "exists": True, "real": "/sw/python/3.11/bin/python3.11",
         "sha256": SHA_A},
    ],
    "modules": [LOADED, LOADED],
}  # fmt: skip
UNKNOWN_R = (
    'Lmod has detected the following error:  The following module(s) are unknown:\n"R/4.2"\n\n'
    'Please check the spelling or version number. Also try "module spider ..."\n'
)


def _env_checks(**changes: object) -> dict[str, Check]:
    from dataclasses import replace

    report = {**REPORT, **ENV_REPORT, **changes}
    return {c.name: c for c in node_checks(report, replace(EXPECT, envs=ENVS))}


def test_venv_interpreters_and_kernel_modules_that_the_node_has_are_ok():
    checks = _env_checks()
    assert {n: c.status for n, c in checks.items()} == dict.fromkeys(
        [
            "node.root",
            "node.python",
            "node.glibc",
            "node.linux",
            "node.hub_api",
            "node.interpreter",
            "node.modules",
        ],
        "ok",
    )
    assert checks["node.interpreter"].detail == (
        f"the venv builds' interpreters are on node042 and unchanged: /usr/bin/python3 (server), {PY} (python)"
    )
    assert checks["node.modules"].detail == (
        "every kernel's modules load on node042: python/3.11 (python-stock); R/4.2 (r, r-4b03c0ba)"
    )


def test_a_generation_without_venv_or_module_builds_gives_no_such_lines():
    names = {c.name for c in node_checks({**REPORT, **ENV_REPORT}, EXPECT)}
    assert "node.interpreter" not in names and "node.modules" not in names


def test_a_changed_interpreter_on_the_node_fails_naming_it_and_both_hashes():
    changed = [ENV_REPORT["interpreters"][0], {**ENV_REPORT["interpreters"][1], "sha256": SHA_B}]
    checks = _env_checks(interpreters=changed)
    bad = [c for c in checks.values() if c.status != "ok"]
    assert [c.name for c in bad] == ["node.interpreter"] and bad[0].status == "FAIL"
    assert bad[0].detail == (
        f"the interpreter {PY} of env 'python' build p1abcdef differs on node042 (its real binary "
        "/sw/python/3.11/bin/python3.11 has sha256 bbbbbbbbbbbb..., not aaaaaaaaaaaa...): the site changed its Python"
    )
    assert bad[0].fix == "rebuild with `hubstock build python` and publish, or restore the interpreter."


def test_a_missing_interpreter_says_what_its_module_gives_now():
    moved = {"path": PY, "load": LOADED, "on_path": "/sw/python/3.12/bin/python3", "exists": False}
    check = _env_checks(interpreters=[ENV_REPORT["interpreters"][0], moved])["node.interpreter"]
    assert check.status == "FAIL"
    assert check.detail.startswith(
        f"the interpreter {PY} of env 'python' build p1abcdef is missing on node042; "
        "module python/3.11 gives /sw/python/3.12/bin/python3 there"
    )


def test_an_interpreter_whose_module_does_not_load_is_a_warning_beside_the_kernels_fail():
    unknown = {
        "ok": False,
        "code": 1,
        "init": LOADED["init"],
        "output": UNKNOWN_R.replace("R/4.2", "python/3.11"),
    }
    there = {**ENV_REPORT["interpreters"][1], "load": unknown}
    del there["on_path"]
    checks = _env_checks(interpreters=[ENV_REPORT["interpreters"][0], there], modules=[unknown, LOADED])
    assert checks["node.interpreter"].status == "warn"
    assert "module python/3.11 of env 'python' does not load there" in checks["node.interpreter"].detail
    assert checks["node.modules"].status == "FAIL"
    assert checks["node.modules"].detail.startswith("kernel 'python-stock' cannot start on node042")


def test_a_module_missing_on_the_node_fails_naming_the_kernels_the_module_and_lmods_message():
    failed = {"ok": False, "code": 1, "init": LOADED["init"], "output": UNKNOWN_R}
    checks = _env_checks(modules=[LOADED, failed])
    bad = [c for c in checks.values() if c.status != "ok"]
    assert [c.name for c in bad] == ["node.modules"] and bad[0].status == "FAIL"
    assert bad[0].detail == (
        "kernels 'r', 'r-4b03c0ba' cannot start on node042: module R/4.2 is unknown there "
        '(Lmod: The following module(s) are unknown: "R/4.2")'
    )
    assert bad[0].fix.startswith("install the module on the compute nodes, or fix [modules] use")
    assert "\n" not in format_check(bad[0])


def test_a_node_without_the_sites_lmod_fails_with_where_to_set_it():
    none = {"ok": False, "code": 4, "init": "/opt/lmod/init/bash",
            "output": "hubstock-probe: line 2: /opt/lmod/init/bash: No such file or directory\n"}  # fmt: skip
    check = _env_checks(modules=[none, none])["node.modules"]
    assert check.status == "FAIL" and "[modules] init" in check.fix
    assert check.detail.startswith(
        "kernel 'python-stock' cannot start on node042: Lmod's init /opt/lmod/init/bash is missing there or is "
        "not Lmod (hubstock-probe: line 2: /opt/lmod/init/bash: No such file or directory); kernels 'r', "
    )


def test_without_the_probes_answer_the_interpreters_and_modules_are_not_checked():
    from dataclasses import replace

    failed = {
        "probe_failed": 126,
        "host": "n1",
        "started": 1.0,
        "root_readable": True,
        "python_executable": False,
    }
    s = statuses(node_checks(failed, replace(EXPECT, envs=ENVS)))
    assert s["node.interpreter"] == "warn" and s["node.modules"] == "warn"
    s = statuses(node_checks({**REPORT, "modules": [LOADED]}, replace(EXPECT, envs=ENVS)))  # an older probe
    assert s["node.interpreter"] == "warn" and s["node.modules"] == "warn"


# A stand-in for Lmod's bash init: `module use DIR` sets MODULEPATH; `module load M` "loads" M when
# DIR/M.lua exists (putting DIR/../sw/M/bin on PATH), else fails with Lmod's message.
FAKE_LMOD = """\
module() {
  case "$1" in
    use) shift; export MODULEPATH="$1";;
    purge) unset LOADEDMODULES _LMFILES_;;
    load) shift
      for m in "$@"; do
        if [ ! -f "$MODULEPATH/$m.lua" ]; then
          printf 'Lmod has detected the following error: The following module(s) are unknown:\\n"%s"\\n\\n' "$m" >&2
          return 1
        fi
        LOADEDMODULES="${LOADEDMODULES:+$LOADEDMODULES:}$m"
        _LMFILES_="${_LMFILES_:+$_LMFILES_:}$MODULEPATH/$m.lua"
        PATH="$MODULEPATH/../sw/$m/bin:$PATH"
      done
      export LOADEDMODULES _LMFILES_ PATH;;
  esac
}
"""


def write_fake_lmod(d: Path) -> tuple[Path, Path, Path]:
    """(init, module directory, interpreter): a stand-in Lmod whose module python/3.11 puts
    ``sw/python/3.11/bin/python3`` (a symlink to the interpreter, a file of its own) on PATH."""
    init = d / "lmod" / "init" / "bash"
    init.parent.mkdir(parents=True)
    init.write_text(FAKE_LMOD)
    mods = d / "modules"
    (mods / "python").mkdir(parents=True)
    (mods / "python" / "3.11.lua").write_text('prepend_path("PATH", "...")\n')
    interp = d / "real" / "python3.11"
    interp.parent.mkdir()
    interp.write_bytes(b"\x7fELF not really a python")
    interp.chmod(0o755)
    bindir = d / "sw" / "python" / "3.11" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python3").symlink_to(interp)
    return init, mods, interp


def test_the_probe_loads_modules_through_bash_as_a_kernel_does(tmp_path, monkeypatch):
    init, mods, _ = write_fake_lmod(tmp_path)
    lmod = {"init": str(init), "use": [str(mods)]}
    loaded = node_probe.load_modules(lmod, ["python/3.11"], 30)
    assert loaded["ok"] and loaded["code"] == 0 and loaded["init"] == str(init)
    assert str(loaded["path"]).startswith(f"{mods}/../sw/python/3.11/bin:")
    assert "path" not in node_probe.module_set({"modules": ["python/3.11"]}, lmod, 30)
    own = {"modules": ["python/3.11"], "init": str(init), "use": [str(mods)]}  # its kernels' own Lmod
    assert node_probe.module_set(own, {"init": str(tmp_path / "none"), "use": []}, 30)["ok"]
    evil = "$(touch " + str(tmp_path / "pwned") + ")"
    failed = node_probe.load_modules(lmod, ["python/3.11", evil], 30)
    assert not failed["ok"] and failed["code"] == 1 and f'unknown:\n"{evil}"' in str(failed["output"])
    assert not (tmp_path / "pwned").exists()  # names are arguments, never code
    assert node_probe.load_modules({"init": str(tmp_path / "none")}, ["x"], 30)["code"] == 4
    monkeypatch.delenv("LMOD_PKG", raising=False)
    monkeypatch.setattr(node_probe, "INIT_PLACES", (str(tmp_path / "nowhere" / "bash"),))
    assert node_probe.load_modules({}, ["x"], 30) == {
        "ok": False, "code": None, "init": None, "output": "no Lmod init/bash found on this node",
    }  # fmt: skip
    monkeypatch.setenv("LMOD_PKG", str(init.parent.parent))
    assert node_probe.lmod_init(None) == str(init)


def test_the_probe_hashes_each_interpreters_real_binary_after_loading_its_module(tmp_path):
    init, mods, interp = write_fake_lmod(tmp_path)
    link = tmp_path / "sw" / "python" / "3.11" / "bin" / "python3"
    wanted = [
        {"path": str(link), "modules": ["python/3.11"]},
        {"path": str(tmp_path / "gone"), "modules": []},
    ]
    found = node_probe.interpreters(wanted, {"init": str(init), "use": [str(mods)]}, 30)
    assert found[0]["exists"] and found[0]["real"] == str(interp) and found[0]["load"]["ok"]
    assert found[0]["sha256"] == hashlib.sha256(interp.read_bytes()).hexdigest()
    assert os.path.realpath(str(found[0]["on_path"])) == str(interp)
    assert found[1] == {"path": str(tmp_path / "gone"), "exists": False}


# ---------------------------------------------------------------------------------------------- the job


def test_the_probe_script_is_the_sites_batch_script_with_the_probe_as_its_command(tmp_path):
    site_dir = tmp_path / "site"
    (site_dir / "spawner").mkdir(parents=True)
    (site_dir / "spawner" / "slurm.sh").write_text((REPO / "spawner" / "slurm.sh").read_text())
    (site_dir / "hubstock.toml").write_text(
        '[spawner]\nprologue = "module load x"\naccount = "proj1"\n'
        '[[spawner.queues]]\nname = "gpu"\nmax_cpus = 4\nmax_memory = "8G"\nmax_gpus = 2\nmax_walltime = "24:00:00"\n'
        '[spawner.defaults]\nwalltime = "08:00:00"\n'
    )
    site = load_site(site_dir)
    cmds = job_commands(site)
    assert cmds.submit == "sbatch --parsable" and cmds.srun == "srun" and cmds.prologue == "module load x"
    opts = probe_options(site.settings.spawner, "gpu")
    assert opts.gpus == 1 and opts.walltime == 600  # at most ten minutes for the probe
    script = render_probe_script(
        cmds, site.settings.spawner, opts, "hubtest", "/home/hubtest", "PATH,USER", "/bin/sh /p/probe.sh"
    )
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --account=proj1" in script and "#SBATCH --time=00:10:00" in script
    assert "module load x" in script and "srun /bin/sh /p/probe.sh" in script
    assert "#SBATCH --export=PATH,USER" in script
    assert job_logs(script, "77", tmp_path) == [Path("/home/hubtest/.jupyterhub-slurm-77.log")]
    assert output_file("#PBS -o /home/u/.jupyterhub-pbs.log\n", "3.vm") == Path("/home/u/.jupyterhub-pbs.log")
    assert output_file("#SBATCH --output=%u-%j.log\n", "3") is None
    (site_dir / "hubstock.toml").write_text(
        '[spawner]\nscheduler = "torque"\nsubmit_cmd = "{site}/spawner/qsub-stdin"\n'
    )
    torque = job_commands(load_site(site_dir))
    assert torque.submit == f"{site_dir}/spawner/qsub-stdin" and torque.query == "qstat -f {job_id}"


def test_job_ids_and_states_are_read_as_batchspawner_reads_them():
    slurm = JobCommands(
        "slurm", "", "", "", "", r"^(?:PENDING|CONFIGURING)", r"^(?:RUNNING|COMPLETING)", "", "", ""
    )
    assert parse_job_id("slurm", "Submitted\n4242;cluster\n") == "4242"
    assert parse_job_id("pbs", "17.pbs01\n") == "17.pbs01"
    with pytest.raises(ValueError):
        parse_job_id("slurm", "sbatch: error: invalid partition")
    assert job_state(slurm, 0, "RUNNING node1", "") == "running"
    assert job_state(slurm, 0, "PENDING n/a", "") == "pending"
    assert job_state(slurm, 0, "COMPLETED node1", "") == "gone"
    pbs = JobCommands("pbs", "", "", "", "", r"job_state = [QHW]", r"job_state = R", "", "", "")
    assert job_state(pbs, 0, "Job Id: 3.vm\n    job_state = E\n", "") == "ending"  # exiting: still there
    assert job_state(pbs, 0, "Job Id: 3.vm\n    job_state = F\n", "") == "gone"
    assert job_state(slurm, 1, "", "slurm_load_jobs error: Invalid job id specified") == "gone"
    assert job_state(slurm, 1, "", "Unable to contact slurm controller") == "unknown"


# stand-ins for sbatch / squeue / scancel: the job runs in the background, as the test's user
SBATCH = """#!/bin/sh
cat > "$STATE/job.sh"
echo RUNNING > "$STATE/state"
setsid sh -c 'bash "$STATE/job.sh" > "$STATE/job.out" 2>&1; echo COMPLETED > "$STATE/state"' </dev/null >/dev/null 2>&1 &
echo $! > "$STATE/pid"
echo 4242
"""
SQUEUE = """#!/bin/sh
echo "$(cat "$STATE/state") node1"
"""
SCANCEL = """#!/bin/sh
echo "$@" >> "$STATE/cancelled"
kill -TERM -- "-$(cat "$STATE/pid")" 2>/dev/null
echo CANCELLED > "$STATE/state"
"""


def _plan(tmp_path: Path, prologue: str = "", timeout: float = 30) -> ProbePlan:
    bindir, state, home = tmp_path / "bin", tmp_path / "state", tmp_path / "home"
    for d in (bindir, state, home):
        d.mkdir(exist_ok=True)
    for name, text in (("sbatch", SBATCH), ("squeue", SQUEUE), ("scancel", SCANCEL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    prefix = tmp_path / "server"
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    if not (prefix / "bin" / "python").exists():
        (prefix / "bin" / "python").symlink_to(sys.executable)
        (prefix / "bin" / "jupyterhub-singleuser").write_text("#!/bin/sh\necho 9.9.9\n")
        (prefix / "bin" / "jupyterhub-singleuser").chmod(0o755)
    cmds = JobCommands(
        "slurm", "", "sbatch --parsable", "squeue -h -j {job_id} -o '%T %B'", "scancel {job_id}",
        r"^(?:PENDING|CONFIGURING)", r"^(?:RUNNING|COMPLETING)",
        (REPO / "spawner" / "slurm.sh").read_text(), "", prologue,
    )  # fmt: skip
    limits = Limits(
        queues=(Queue(name="debug", max_cpus=1, max_memory=MiB(8192), max_walltime=Seconds(3600)),)
    )
    probe_dir = home / ".hubstock-doctor-test"
    args = {
        "dirs": [str(tmp_path)],
        "trees": [str(prefix / "bin")],
        "files": [],
        "server_prefix": str(prefix),
    }
    me = os.getuid()
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "STATE": str(state)}
    script = render_probe_script(
        cmds,
        limits,
        limits.defaults_for(limits.queues[0]),
        "me",
        str(home),
        "PATH",
        f"/bin/sh {probe_dir}/probe.sh",
    )
    return ProbePlan(
        cmds=cmds, user="me", uid=me, home=home, dir=probe_dir,
        files={
            "probe.sh": probe_shell(probe_dir, str(prefix / "bin" / "python"), str(tmp_path)),
            "node_probe.py": (REPO / "src" / "hubstock" / "hub" / "doctor" / "node_probe.py").read_text(),
            "args.json": json.dumps(args),
        },
        script=script, submit_env=env, query_env=env, cwd=tmp_path, queue="debug", timeout=timeout,
    )  # fmt: skip


def test_the_probe_job_reports_and_leaves_nothing_behind(tmp_path):
    result = ProbeJob(_plan(tmp_path)).run()
    assert result.check.status == "ok", result.check
    assert result.job == "4242" and result.report["singleuser"] == {"ok": True, "version": "9.9.9"}
    assert "job 4242 as me in queue 'debug' ran on" in result.check.detail
    assert not (tmp_path / "home" / ".hubstock-doctor-test").exists()
    assert not (tmp_path / "state" / "cancelled").exists()  # it ended by itself


def test_a_probe_job_that_does_not_report_in_time_is_cancelled(tmp_path):
    result = ProbeJob(_plan(tmp_path, prologue="sleep 30", timeout=2)).run()
    assert result.check.status == "FAIL" and "did not report within 2 s" in result.check.detail
    assert (tmp_path / "state" / "cancelled").read_text().split() == ["4242"]
    assert (tmp_path / "state" / "state").read_text().strip() == "CANCELLED"
    assert not (tmp_path / "home" / ".hubstock-doctor-test").exists()


def test_a_probe_job_is_cancelled_when_doctor_is_interrupted(tmp_path):
    """SIGTERM (as from systemd or a monitoring system's timeout) while the job runs: it is cancelled."""
    job = ProbeJob(_plan(tmp_path, prologue="sleep 30"))
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            job.run()
    finally:
        timer.cancel()
    assert (tmp_path / "state" / "cancelled").read_text().split() == ["4242"]
    assert (tmp_path / "state" / "state").read_text().strip() == "CANCELLED"
    assert not (tmp_path / "home" / ".hubstock-doctor-test").exists()
    assert signal.getsignal(signal.SIGTERM) is before
