"""Integration: publish real kernels from real builds; rollback; gc; read-only for users."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.helpers import kernel_script, processes_with

from hubstock.store.records import SessionRecord
from hubstock.store.root import Root
from hubstock.store.sessions import register

pytestmark = pytest.mark.integration

KERNEL = {
    "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python (stock)",
    "language": "python",
    "env": {"STOCK_PREFIX": "{env_prefix}"},
    "metadata": {"hubstock": {"env": "py", "check": "import demo_c"}},
}


def py_env(demo_c: str = "0.1") -> str:
    return f"dependencies:\n  - python\n  - demo-c {demo_c}\n  - pip:\n    - ipykernel\n"


def add_kernel(site, name: str, spec: dict, logo: bytes | None = b"\x89PNG fake logo") -> None:
    d = site.dir / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernel.json").write_text(json.dumps(spec))
    if logo:
        (d / "logo-64x64.png").write_bytes(logo)


def run_in_kernel(jupyter_path: Path, name: str, code: str) -> str:
    """Start kernel ``name`` the way a server would (from JUPYTER_PATH) and run ``code``."""
    script = kernel_script(jupyter_path, name, code)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.fixture
def kernel_site(make_site, hubstock):
    site = make_site({"py": py_env("0.1")})
    add_kernel(site, "stock", KERNEL)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    return site


def _status(hubstock, site) -> dict:
    return json.loads(hubstock(site, "status", "--json", check=True).stdout)


def _rebuild(hubstock, site, demo_c: str) -> None:
    (site.envs_dir / "py" / "environment.yml").write_text(py_env(demo_c))
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)


def test_publish_then_a_kernel_runs_in_its_build(kernel_site, hubstock):
    site = kernel_site
    root = Root(site.root)
    assert hubstock(site, "publish", check=True).stdout.strip() == "generation 0001 (published)"
    st = _status(hubstock, site)
    bid = st["envs"]["py"]["current"]
    assert st["published"]["generation"] == "0001"
    assert st["published"]["kernels"] == [
        {"name": "stock", "display_name": "Python (stock)", "env": "py", "build": bid, "groups": []}
    ]
    kdir = root.current / "share" / "jupyter" / "kernels" / "stock"
    spec = json.loads((kdir / "kernel.json").read_text())
    prefix = root.build("py", bid)
    assert spec["argv"][0] == f"{prefix}/bin/python"
    assert spec["env"] == {"STOCK_PREFIX": str(prefix)}
    assert spec["metadata"]["hubstock"]["build"] == bid
    assert (
        spec["metadata"]["hubstock"]["lock_hash"]
        == json.loads((prefix / ".hubstock-build.json").read_text())["lock_platform_hash"]
    )
    assert (kdir / "logo-64x64.png").read_bytes() == b"\x89PNG fake logo"

    out = run_in_kernel(
        root.current / "share" / "jupyter",
        "stock",
        "import sys, demo_c; print(sys.prefix); print(demo_c.VERSION)",
    )
    assert out.split() == [str(prefix), "0.1"]

    # the server side: stock kernels shown, default set, lab settings from the generation
    cfg = (root.current / "etc" / "jupyter" / "jupyter_server_config.py").read_text()
    assert "STOCK_KERNELS = ['stock']" in cfg and "default_kernel_name = 'stock'" in cfg
    assert (root.current / "etc" / "jupyter" / "labconfig" / "page_config.json").exists()

    # publishing an unchanged set makes no new generation
    assert hubstock(site, "publish", check=True).stdout.strip() == "generation 0001 (unchanged)"
    assert sorted(os.listdir(root.generations)) == ["0001"]


def test_a_kernel_that_cannot_start_leaves_current_alone(kernel_site, hubstock):
    site = kernel_site
    hubstock(site, "publish", check=True)
    root = Root(site.root)
    add_kernel(
        site,
        "broken",
        {
            **KERNEL,
            "display_name": "Broken",
            "metadata": {"hubstock": {"env": "py", "check": "import numpy"}},
        },
    )
    res = hubstock(site, "publish")
    assert res.returncode != 0 and "Traceback (most recent call last)" not in res.stderr.splitlines()[0]
    first = res.stderr.splitlines()[0]
    assert "kernel 'broken'" in first and "import numpy" in first and "current kernels stay" in first
    assert "ModuleNotFoundError: No module named 'numpy'" in res.stderr  # the kernel's own output
    add_kernel(
        site,
        "broken",
        {**KERNEL, "argv": ["{env_prefix}/bin/python", "-m", "no_such_launcher", "-f", "{connection_file}"]},
    )
    res = hubstock(site, "publish")
    assert (
        res.returncode != 0
        and "kernel 'broken'" in res.stderr
        and "No module named no_such_launcher" in res.stderr
    )
    assert os.readlink(root.current) == "generations/0001"
    assert sorted(os.listdir(root.generations)) == ["0001"]  # no staging left behind


def test_new_build_new_generation_pinned_previous_and_rollback(kernel_site, hubstock):
    site = kernel_site
    root = Root(site.root)
    hubstock(site, "publish", check=True)
    old = _status(hubstock, site)["envs"]["py"]["current"]
    _rebuild(hubstock, site, "0.2")
    new = _status(hubstock, site)["envs"]["py"]["current"]
    assert new != old
    assert hubstock(site, "publish", check=True).stdout.strip() == "generation 0002 (published)"
    kernels = {k["name"]: k for k in _status(hubstock, site)["published"]["kernels"]}
    pinned = f"stock-{old[:8]}"
    assert kernels["stock"]["build"] == new and kernels[pinned]["build"] == old
    assert kernels[pinned]["display_name"] == f"Python (stock) (previous build {old[:8]})"
    share = root.current / "share" / "jupyter"
    assert run_in_kernel(share, "stock", "import demo_c; print(demo_c.VERSION)") == "0.2"
    assert run_in_kernel(share, pinned, "import demo_c; print(demo_c.VERSION)") == "0.1"

    assert hubstock(site, "rollback", check=True).stdout.strip() == "generation 0001 is current"
    assert _status(hubstock, site)["published"]["generation"] == "0001"
    assert (
        run_in_kernel(root.current / "share" / "jupyter", "stock", "import demo_c; print(demo_c.VERSION)")
        == "0.1"
    )
    hubstock(site, "rollback", "2", check=True)
    assert os.readlink(root.current) == "generations/0002"
    bad = hubstock(site, "rollback", "7")
    assert bad.returncode != 0 and "generation '0007' does not exist" in bad.stderr
    audit = [json.loads(line) for line in root.audit_log.read_text().splitlines()]
    assert [a["action"] for a in audit if a["action"] in ("publish", "rollback")] == [
        "publish",
        "publish",
        "rollback",
        "rollback",
    ]


READER = r"""
import json, os, sys, time
root, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
seen, bad, n = set(), [], 0
while not os.path.exists(stop):
    gen = os.path.realpath(os.path.join(root, "current"))  # resolve once, as a server does
    try:
        manifest = json.load(open(os.path.join(gen, "manifest.json")))
        kdir = os.path.join(gen, "share", "jupyter", "kernels")
        kernels = {k: json.load(open(os.path.join(kdir, k, "kernel.json")))["metadata"]["hubstock"]["build"]
                   for k in sorted(os.listdir(kdir))}
    except OSError as e:
        bad.append(f"unreadable: {e}")
        continue
    want = {k["name"]: k["build"] for k in manifest["kernels"]}
    if kernels != want:
        bad.append(f"mixed: {kernels} vs {want}")
    seen.add(manifest["generation"]); n += 1
json.dump({"seen": sorted(seen), "bad": bad, "reads": n}, open(out, "w"))
"""


def test_a_reader_never_sees_a_mix_of_two_generations(kernel_site, hubstock, world_tmp):
    site = kernel_site
    add_kernel(site, "second", {**KERNEL, "display_name": "Second"})
    hubstock(site, "publish", check=True)
    _rebuild(hubstock, site, "0.2")
    stop, out = world_tmp / "stop", world_tmp / "reader.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(site.root), str(out), str(stop)])
    try:
        time.sleep(0.3)
        hubstock(site, "publish", check=True)
        time.sleep(0.3)
    finally:
        stop.touch()
        reader.wait(30)
    result = json.loads(out.read_text())
    assert result["bad"] == []
    assert result["seen"] == ["0001", "0002"] and result["reads"] > 10


def test_gc_keeps_what_is_in_use(make_site, hubstock):
    site = make_site({"py": py_env("0.1")}, settings=None)
    (site.dir / "hubstock.toml").write_text(
        (site.dir / "hubstock.toml").read_text() + "[publish]\nkeep_previous_builds = 0\n"
    )
    add_kernel(site, "stock", KERNEL)
    root = Root(site.root)
    builds = []
    for v in ("0.1", "0.2", "0.1"):
        _rebuild(hubstock, site, v)
        builds.append(_status(hubstock, site)["envs"]["py"]["current"])
        hubstock(site, "publish", check=True)
    # generation 3 reuses the build of generation 1: only generation 2's build is unique
    assert builds[0] == builds[2] != builds[1]
    assert sorted(os.listdir(root.generations)) == ["0001", "0002", "0003"]
    register(root, SessionRecord(user="alice", server="", generation="0002", builds=[f"py/{builds[1]}"]))

    dry = hubstock(site, "gc", "--keep", "1", "--dry-run", check=True).stdout
    assert "would remove generation 0001" in dry
    assert sorted(os.listdir(root.generations)) == ["0001", "0002", "0003"]

    hubstock(site, "gc", "--keep", "1", check=True)
    assert sorted(os.listdir(root.generations)) == ["0002", "0003"]  # 0002: a session uses it
    assert root.build("py", builds[1]).is_dir()

    # once the session's record is old, it protects nothing
    rec = next(root.sessions.glob("*.json"))
    old = time.time() - 200 * 3600
    os.utime(rec, (old, old))
    out = hubstock(site, "gc", "--keep", "1", check=True).stdout
    assert sorted(os.listdir(root.generations)) == ["0003"]
    assert not root.build("py", builds[1]).exists() and root.build("py", builds[0]).is_dir()
    assert f"removed build py/{builds[1]}" in out
    assert not list(root.pkgs.glob("demo-c-0.2-*")) and list(root.pkgs.glob("demo-c-0.1-*"))
    assert (
        run_in_kernel(root.current / "share" / "jupyter", "stock", "import demo_c; print(demo_c.VERSION)")
        == "0.1"
    )


def test_published_kernels_as_an_ordinary_user(kernel_site, hubstock, as_nobody, world_tmp):
    site = kernel_site
    hubstock(site, "publish", check=True)
    root = Root(site.root)
    bid = _status(hubstock, site)["envs"]["py"]["current"]
    before = {(d, tuple(sorted(fs))) for d, _, fs in os.walk(site.root)}
    home = world_tmp / "nobody-home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    client = textwrap.dedent("""
        import os, sys
        from jupyter_client.manager import start_new_kernel
        km, kc = start_new_kernel(kernel_name="stock", startup_timeout=90)
        out = []
        kc.execute_interactive("import sys, demo_c, json; print(sys.prefix)",
                               output_hook=lambda m: out.append(m["content"].get("text", "")), timeout=60)
        kc.stop_channels(); km.shutdown_kernel(now=True)
        print("".join(out).strip())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(HOME=str(home), JUPYTER_PATH=str(root.current / "share" / "jupyter"))
    # the client is the kernel env's own python: hubstock's own may live under a private home
    res = subprocess.run(
        [*as_nobody, str(root.build("py", bid) / "bin" / "python"), "-c", client],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(home),
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(root.build("py", bid))
    assert {(d, tuple(sorted(fs))) for d, _, fs in os.walk(site.root)} == before
    writable = subprocess.run(
        [*as_nobody, "find", str(site.root), "-writable"], capture_output=True, text=True
    )
    assert writable.stdout == ""


def test_a_server_env_that_breaks_the_policy_is_refused(make_site, hubstock):
    site = make_site({"server": "dependencies:\n  - python\n  - nbgrader\n"})
    hubstock(site, "lock", check=True)
    res = hubstock(site, "build")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "'nbgrader'" in res.stderr and "forbids" in res.stderr
    assert not Root(site.root).env("server").exists()
    (site.envs_dir / "server" / "environment.yml").write_text("dependencies:\n  - python\n  - demo-a\n")
    hubstock(site, "lock", check=True)
    res = hubstock(site, "build")
    assert res.returncode != 0 and "lacks 'jupyterlab'" in res.stderr


def test_a_site_whose_named_server_env_does_not_exist_publishes_nothing(make_site, hubstock):
    """[server] env set in hubstock.toml but not in envs/: refused before anything is built or staged."""
    site = make_site({"py": py_env("0.1")})
    add_kernel(site, "stock", KERNEL)
    settings = site.dir / "hubstock.toml"
    settings.write_text(settings.read_text() + '\n[server]\nenv = "jupyter-server"\n')
    res = hubstock(site, "publish")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "[server] env = 'jupyter-server' is not an environment in envs/" in res.stderr, res.stderr
    assert "Add envs/jupyter-server/" in res.stderr
    assert not Root(site.root).generations.exists() or not any(Root(site.root).generations.iterdir())


def test_ctrl_c_during_the_smoke_tests_stops_their_kernels_and_publishes_nothing(kernel_site, hubstock):
    site = kernel_site
    hubstock(site, "publish", check=True)
    root = Root(site.root)
    add_kernel(
        site,
        "slow",
        {**KERNEL, "metadata": {"hubstock": {"env": "py", "check": "import time; time.sleep(600)"}}},
    )
    build = os.readlink(root.env_current("py"))
    kernel_python = str(root.build("py", build) / "bin" / "python")
    # its own session, as a terminal's foreground job: Ctrl-C reaches the command and its worker
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubstock", "--site", str(site.dir), "publish"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(processes_with(f"{kernel_python} -m ipykernel_launcher")) < 2:  # both kernels started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        time.sleep(1)  # the slow check is running
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert err.splitlines()[-1].startswith("hubstock: interrupted"), err
    assert "Traceback" not in err
    deadline = time.monotonic() + 15  # the kernels run in sessions of their own: the worker stops them
    while processes_with(f"{kernel_python} -m ipykernel_launcher") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_with(f"{kernel_python} -m ipykernel_launcher")
    assert not processes_with("hubstock.admin.publish.smoke")
    assert not processes_with(f"--site {site.dir} publish")  # the command, and the worker it forked
    assert os.readlink(root.current) == "generations/0001"
    assert sorted(os.listdir(root.generations)) == ["0001"]  # no staging left behind


def test_the_smoke_worker_ignores_the_working_directory_and_an_unchanged_publish_leaves_none(
    kernel_site, hubstock, tmp_path
):
    site = kernel_site
    (tmp_path / "jupyter_client.py").write_text("raise SystemExit('the wrong jupyter_client')\n")
    hubstock(site, "publish", check=True, cwd=tmp_path)
    res = hubstock(site, "publish", check=True, cwd=tmp_path)
    assert "unchanged" in res.stdout
    assert not processes_with("hubstock.admin.publish.smoke")
    assert not processes_with(f"--site {site.dir} publish")  # a forked worker keeps the command's line


def test_a_smoke_test_worker_that_fails_is_one_sentence(tmp_path):
    from hubstock.admin.publish.smoke import SmokeJob, SmokeWorker
    from hubstock.errors import PublishError

    # a stand-in for the worker: it dies the way a broken install would
    script = "import sys; sys.stdin.read(); sys.exit('ModuleNotFoundError: No module named jupyter_client')"
    worker = SmokeWorker(
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )
    with worker, pytest.raises(PublishError) as e:
        worker.run([SmokeJob("k", str(tmp_path), "", "python")], tmp_path, 5)
    assert "smoke-test worker failed (ModuleNotFoundError: No module named jupyter_client)" in str(e.value)
    assert "nothing was published" in str(e.value)


def test_a_forked_smoke_worker_answers_and_leaves_no_process(tmp_path):
    """The worker ``hubstock publish`` forks: a kernel that cannot start is its one outcome, and a
    worker closed without a request is stopped and reaped."""
    from hubstock.admin.publish.smoke import SmokeJob, SmokeWorker, _Forked

    kdir = tmp_path / "kernels"
    (kdir / "k").mkdir(parents=True)
    missing = str(tmp_path / "no-such-python")
    (kdir / "k" / "kernel.json").write_text(
        json.dumps({"argv": [missing, "-f", "{connection_file}"], "display_name": "k", "language": "python"})
    )
    with SmokeWorker(_Forked.start()) as worker:
        [outcome] = worker.run([SmokeJob("k", str(tmp_path), "", missing)], kdir, 30)
    assert outcome is not None and "does not exist" in outcome[0], outcome
    unused = _Forked.start()
    SmokeWorker(unused).close()
    assert unused.returncode is not None
    with pytest.raises(ChildProcessError):
        os.waitpid(unused.pid, os.WNOHANG)  # reaped: no zombie left
