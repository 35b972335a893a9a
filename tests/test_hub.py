"""The hub on a real scheduler: Slurm and PBS (Torque-compatible) spawners, PAM users, the proxy.

Everything is real: a private single-node Slurm with its PBS commands, PAM users
with passwords, configurable-http-proxy, JupyterHub running the site's own
``spawner/jupyterhub_config.py``, and servers that run as batch jobs from the
published server build.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import jupyterhub
import pytest
from tests.support.channel import file_url
from tests.support.hub_rig import Hub, ensure_chp, run_code
from tests.support.slurm_rig import SlurmRig, create_user, remove_user, require_binaries

from hubstock.layout import Root

pytestmark = pytest.mark.hub

REPO = Path(__file__).resolve().parent.parent
USERS = {"hsalice": "Wonderland-42", "hsbob": "Builder-7"}
STOCK_CODE = (
    "import os, sys, pwd, demo_c\n"
    "print(pwd.getpwuid(os.getuid()).pw_name)\n"
    "print(sys.prefix)\n"
    "print(os.path.realpath('/proc/%d/exe' % os.getppid()))\n"
    "print(demo_c.VERSION)\n"
)


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the hub tests need root (CI runs as root)")
        pytest.skip("the hub tests need root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="hubstock-hub-"))
    d.chmod(0o755)
    yield d
    if not os.environ.get("HUBSTOCK_KEEP_TEST_DIRS"):  # keep them to read the hub's and jobs' logs
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def rig(workdir):
    _need_root()
    require_binaries()
    r = SlurmRig(workdir / "slurm").start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def users(workdir):
    _need_root()
    homes = workdir / "homes"
    homes.mkdir(mode=0o755)
    for name, pw in USERS.items():
        create_user(name, pw, homes)
    yield USERS
    for name in USERS:
        remove_user(name)


def _cli(site: Path, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "hubstock", "--site", str(site), *args], capture_output=True, text=True
    )
    assert res.returncode == 0, f"hubstock {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def py_env(version: str) -> str:
    return f"dependencies:\n  - python\n  - demo-c {version}\n  - pip:\n    - ipykernel\n"


@pytest.fixture(scope="module")
def site(workdir, channel):
    """A site repository: the repo's spawner/ and hooks/, a server env and a stock kernel, published."""
    s = workdir / "site"
    for part in ("spawner", "hooks"):
        shutil.copytree(REPO / part, s / part)
    (s / "envs" / "server").mkdir(parents=True)
    (s / "envs" / "server" / "environment.yml").write_text(
        "dependencies:\n  - python\n  - pip:\n"
        f"    - jupyterhub=={jupyterhub.__version__}\n    - jupyterlab\n    - batchspawner==1.3.0\n"
    )
    (s / "envs" / "py").mkdir(parents=True)
    (s / "envs" / "py" / "environment.yml").write_text(py_env("0.1"))
    (s / "kernels" / "stock").mkdir(parents=True)
    (s / "kernels" / "stock" / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python (stock)",
                "language": "python",
                "metadata": {"hubstock": {"env": "py", "check": "import demo_c"}},
            }
        )
    )
    (s / "hubstock.toml").write_text(f'root = "{workdir / "root"}"\nchannels = ["{file_url(channel)}"]\n')
    _cli(s, "lock")
    _cli(s, "build")
    _cli(s, "publish")
    return s


def _settings(
    workdir: Path, site: Path, channel: Path, rig: SlurmRig, scheduler: str, ports: list[int]
) -> str:
    chp = ensure_chp(Path(os.environ.get("HUBSTOCK_TEST_CACHE") or Path.home() / ".cache" / "hubstock-tests"))
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    submit = 'submit_cmd = "{site}/spawner/qsub-stdin"\n' if scheduler == "torque" else ""
    return f"""\
root = "{workdir / "root"}"
channels = ["{file_url(channel)}"]

[hub]
ip = "127.0.0.1"
port = {ports[0]}
hub_ip = "127.0.0.1"
hub_port = {ports[1]}
proxy_api_port = {ports[2]}
proxy_command = ["{chp}"]
state_dir = "{workdir / ("state-" + scheduler)}"
idle_timeout = 0

[spawner]
scheduler = "{scheduler}"
exec_prefix = "{runuser} -u {{username}} --"
{submit}environment = {{SLURM_CONF = "{rig.slurm_conf}"}}
start_timeout = 120
http_timeout = 120

[[spawner.queues]]
name = "debug"
description = "Short sessions"
max_cpus = 2
max_memory = "2G"
max_walltime = "01:00:00"

[[spawner.queues]]
name = "batch"
max_cpus = 1
max_memory = "1G"
max_walltime = "00:30:00"

[spawner.defaults]
queue = "debug"
memory = "1G"
walltime = "00:30:00"
"""


@pytest.fixture(scope="module", params=["slurm", "torque"])
def hub(request, workdir, site, channel, rig, users):
    scheduler = request.param
    ports = [_free_port() for _ in range(3)]
    (site / "hubstock.toml").write_text(_settings(workdir, site, channel, rig, scheduler, ports))
    # batchspawner runs the status and cancel commands with the hub's own environment:
    # on a real hub node SLURM_CONF is set for the service (or /etc/slurm is used)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        **rig.env,
    }
    env.pop("HUBSTOCK_ROOT", None)
    h = Hub(site, ports[0], env, workdir / f"hub-{scheduler}.log").start()
    h.scheduler = scheduler
    yield h
    h.stop()
    rig.wait_no_jobs(timeout=60, active_only=True)  # the hub cancelled every job it started


def _token(hub: Hub, user: str) -> str:
    status, token = hub.token_for(user, USERS[user])
    assert status == 201 and token, (status, hub.log_tail())
    return token


def _start(hub: Hub, user: str, token: str, options: dict | None = None) -> list[str]:
    """Start the user's server; return its progress messages."""
    status, body = hub.request("POST", f"/hub/api/users/{user}/server", token=token, body=options or {})
    assert status in (201, 202), (status, body, hub.log_tail())
    messages = hub.progress(user, token) if status == 202 else []
    hub.wait_for_server(user, token)
    return messages


def _stop(hub: Hub, rig: SlurmRig, user: str, token: str) -> None:
    status, _ = hub.request("DELETE", f"/hub/api/users/{user}/server", token=token)
    assert status in (202, 204)
    hub.wait_stopped(user, token)
    rig.wait_no_jobs(timeout=60, active_only=True)


def test_pam_login(hub):
    status, token = hub.token_for("hsalice", USERS["hsalice"])
    assert status == 201 and token, hub.log_tail()
    status, token = hub.token_for("hsalice", "not-the-password")
    assert status == 403 and token is None
    status, _ = hub.request("GET", "/hub/api/users/hsalice")  # no token: no access
    assert status == 403


def test_a_server_is_a_batch_job_of_the_user_on_the_published_builds(hub, rig, site):
    token = _token(hub, "hsalice")
    messages = _start(hub, "hsalice", token)
    running = rig.run(["squeue", "-h", "-o", "%i %u %T %P"]).stdout.split()
    assert running[1:] == ["hsalice", "RUNNING", "debug"], running
    # the user is told what is happening: the job, where it runs (or that it is queued)
    assert any(f"Job {running[0]} is running on localhost" in m or f"Job {running[0]} is queued" in m
               for m in messages), messages

    status, specs = hub.request("GET", "/user/hsalice/api/kernelspecs", token=token)
    assert status == 200
    manifest = json.loads((Root(site.parent / "root").current / "manifest.json").read_text())
    # exactly the published stock kernels (with a pinned previous build once one was replaced),
    # and not the server environment's own python3
    assert (
        set(specs["kernelspecs"]) == {k["name"] for k in manifest["kernels"]} and specs["default"] == "stock"
    )
    assert "stock" in specs["kernelspecs"] and "python3" not in specs["kernelspecs"]
    kernel = next(k for k in manifest["kernels"] if k["name"] == "stock")
    stock_prefix = str(Root(site.parent / "root").build("py", kernel["build"]))
    server_prefix = manifest["server"]["prefix"]

    user, prefix, server_exe, version = run_code(hub, "hsalice", token, "stock", STOCK_CODE).split()
    assert user == "hsalice"
    assert prefix == stock_prefix
    assert server_exe.startswith(server_prefix + "/")  # the kernel's parent: the server, from its build
    record = json.loads((site.parent / "root" / "sessions" / "hsalice.default.json").read_text())
    assert record["generation"] == manifest["generation"] and record["job_id"] == running[0]

    _stop(hub, rig, "hsalice", token)
    assert not (site.parent / "root" / "sessions" / "hsalice.default.json").exists()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"cpus": "1; touch /tmp/hubstock-pwned"}, "cpus"),
        ({"queue": "$(reboot)"}, "queue"),
        ({"queue": "debug", "command": "sh"}, "'command'"),
        ({"cpus": 64}, "cpus"),
        ({"memory": "999G"}, "memory"),
        ({"walltime": "99:00:00"}, "walltime"),
        ({"queue": "batch", "cpus": 2}, "cpus"),
        ({"cpus": {"$gt": 1}}, "cpus"),
    ],
)
def test_bad_options_are_refused_before_anything_is_submitted(hub, rig, options, says):
    token = _token(hub, "hsbob")
    before = rig.jobs()
    status, body = hub.request("POST", "/hub/api/users/hsbob/server", token=token, body=options)
    assert status == 400, (status, body)
    assert says in body["message"], body
    assert "Traceback" not in body["message"]
    assert set(rig.jobs()) - set(before) == set()  # no job was submitted
    assert not Path("/tmp/hubstock-pwned").exists()
    _, model = hub.request("GET", "/hub/api/users/hsbob", token=token)
    assert not model.get("servers")


def test_a_publish_during_a_session_does_not_change_it(hub, rig, site):
    root = Root(site.parent / "root")
    token = _token(hub, "hsalice")
    _start(hub, "hsalice", token)
    gen_before = os.readlink(root.current)
    old_out = run_code(hub, "hsalice", token, "stock", STOCK_CODE).split()
    _, specs = hub.request("GET", "/user/hsalice/api/kernelspecs", token=token)
    kernels_before = set(specs["kernelspecs"])

    spec = site / "envs" / "py" / "environment.yml"
    new_version = "0.2" if old_out[3] == "0.1" else "0.1"  # this runs once per scheduler
    spec.write_text(py_env(new_version))
    _cli(site, "lock")
    _cli(site, "build")
    _cli(site, "publish")
    assert os.readlink(root.current) != gen_before

    # the running session keeps its generation: same kernels, same build
    _, specs = hub.request("GET", "/user/hsalice/api/kernelspecs", token=token)
    assert set(specs["kernelspecs"]) == kernels_before
    assert run_code(hub, "hsalice", token, "stock", STOCK_CODE).split() == old_out
    _stop(hub, rig, "hsalice", token)

    # the next spawn gets the new generation
    _start(hub, "hsalice", token)
    new_out = run_code(hub, "hsalice", token, "stock", STOCK_CODE).split()
    assert new_out[3] == new_version and new_out[1] != old_out[1]
    _, specs = hub.request("GET", "/user/hsalice/api/kernelspecs", token=token)
    assert set(specs["kernelspecs"]) != kernels_before  # the new generation's set
    _stop(hub, rig, "hsalice", token)
    spawns = [json.loads(line) for line in root.audit_log.read_text().splitlines()]
    gens = [a["generation"] for a in spawns if a["action"] == "spawn" and a["user"] == "hsalice"]
    assert gens[-2:] == [os.path.basename(gen_before), os.path.basename(os.readlink(root.current))]
    submitted = [a for a in spawns if a["action"] == "submitted" and a["user"] == "hsalice"]
    assert submitted and all(a["job_id"] for a in submitted)
