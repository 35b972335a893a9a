"""The hub on a real scheduler: Slurm, PBS (Torque-compatible) and PBS Pro spawners, PAM users, the proxy.

Everything is real: a private single-node Slurm with its PBS commands, a private single-node
OpenPBS (PBS Pro) in its own network namespace, PAM users with passwords,
configurable-http-proxy, JupyterHub running the site's own ``spawner/jupyterhub_config.py``,
and servers that run as batch jobs from the published server build.

Every test runs once per hub: ``slurm-postgresql`` (Slurm, the hub's database in PostgreSQL),
``torque`` (Slurm's PBS wrappers) and ``pbs`` (OpenPBS; marked ``pbs``). On OpenPBS the hub,
its proxy, the servers and the test's requests all stay inside the rig's namespace. The tests
ask the scheduler through one face (:class:`rigs.clusters.Cluster`, the ``rig`` fixture).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import secrets
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rigs.clusters import Cluster, PBSCluster, SlurmCluster
from rigs.hub_rig import Hub, run_code
from rigs.hubsite import KERNEL_NAME as KERNEL
from rigs.hubsite import (
    LICENSED_KERNEL,
    R_KERNEL,
    VENV_KERNEL,
    cli,
    free_port,
    hub_settings,
    py_env,
    restricted_kernel,
    start_hub,
)
from rigs.slurm_rig import create_user, remove_user
from tests.helpers import audit, need_root, session_jobs, stop_during_an_outage, until

from hubstock.store.cancels import cancels_path, read_cancels
from hubstock.store.hubinfo import note_hub_versions, read_hub_versions
from hubstock.store.root import Root

pytestmark = pytest.mark.hub
#: the hubs every test runs on: scheduler[-database]
#: Slurm's hub keeps its database in PostgreSQL here; every other hub of the suite (outages,
#: lifecycle, doctor, the stock page, the browser) in SQLite, the default
HUBS = ["slurm-postgresql", "torque", pytest.param("pbs", marks=pytest.mark.pbs)]

REPO = Path(__file__).resolve().parent.parent
RUN = secrets.token_hex(2)  # fresh user names each run: never a leftover or another run's user
ALICE, BOB = f"hsalice{RUN}", f"hsbob{RUN}"
CAROL, DAVE = f"hscarol{RUN}", f"hsdave{RUN}"  # the killed hub's third server and its queued spawn
USERS = {ALICE: "Wonderland-42", BOB: "Builder-7", CAROL: "Carousel-3", DAVE: "Daylight-5"}
STOCK_CODE = (
    "import os, sys, pwd, demo_c\n"
    "print(pwd.getpwuid(os.getuid()).pw_name)\n"
    "print(sys.prefix)\n"
    "print(os.path.realpath('/proc/%d/exe' % os.getppid()))\n"
    "print(demo_c.VERSION)\n"
)


@pytest.fixture(scope="module")
def users(hub_workdir):
    need_root("the hub tests")
    homes = hub_workdir / "homes"
    homes.mkdir(mode=0o755, exist_ok=True)
    for name, pw in USERS.items():
        create_user(name, pw, homes)
    yield USERS
    for name in USERS:
        remove_user(name)


@pytest.fixture(scope="module")
def site(hub_site):
    return hub_site


def cluster_for(request: pytest.FixtureRequest, scheduler: str) -> Cluster:
    """The scheduler rig of a hub parameter, seen through :class:`rigs.clusters.Cluster`."""
    if scheduler == "pbs":
        return PBSCluster(request.getfixturevalue("openpbs_rig"))
    return SlurmCluster(request.getfixturevalue("slurm_rig"), scheduler)


@pytest.fixture(scope="module", params=HUBS)
def hub(request, hub_workdir, site, channel, users):
    """The hub on each scheduler (Slurm's with PostgreSQL as its database, the others' SQLite)."""
    workdir = hub_workdir
    scheduler, _, database = request.param.partition("-")
    cluster = cluster_for(request, scheduler)
    extra_hub = []
    if database:
        db_url = request.getfixturevalue("postgres_rig").create_database("jupyterhub")
        extra_hub.append(f'db_url = "{db_url}"')
    ports = [free_port() for _ in range(3)]
    (site / "hubstock.toml").write_text(
        hub_settings(
            workdir / "root",
            channel,
            workdir / f"state-{request.param}",
            ports=ports,
            idle_timeout=3600,  # the culler runs (it stops servers idle for an hour: none in these tests)
            extra_hub=extra_hub,
            **cluster.settings(),
        )
    )
    h = start_hub(
        site,
        ports[0],
        workdir / f"hub-{request.param}.log",
        extra_env=cluster.hub_env(),
        launcher=cluster.launcher,
        netns=cluster.netns,
    )
    h.scheduler = scheduler
    h.cluster = cluster
    yield h
    h.stop()
    cluster.wait_no_jobs(timeout=60)  # the hub cancelled every job it started
    cluster.close()


@pytest.fixture(scope="module")
def rig(hub) -> Cluster:
    """The hub's scheduler."""
    return hub.cluster


def _token(hub: Hub, user: str) -> str:
    status, token = hub.token_for(user, USERS[user])
    assert status == 201 and token, (status, hub.log_tail())
    return token


def _start(hub: Hub, user: str, token: str, options: dict | None = None) -> list[str]:
    """Start the user's server; return the progress messages the user would have seen."""
    result: dict = {}

    def post() -> None:
        result["response"] = hub.request(
            "POST", f"/hub/api/users/{user}/server", token=token, body=options or {}
        )

    poster = threading.Thread(target=post)
    poster.start()
    messages: list[str] = []
    while poster.is_alive() and not messages:  # follow the progress while the request is answered
        try:
            messages = hub.progress(user, token)
        except OSError:
            time.sleep(0.1)
    poster.join()
    status, body = result["response"]
    assert status in (201, 202), (status, body, hub.log_tail())
    hub.wait_for_server(user, token)
    return messages


def _stop(hub: Hub, rig: Cluster, user: str, token: str) -> None:
    status, _ = hub.request("DELETE", f"/hub/api/users/{user}/server", token=token)
    assert status in (202, 204)
    hub.wait_stopped(user, token)
    rig.wait_no_jobs(timeout=60)


def test_the_idle_culler_runs_as_a_hub_service(hub):
    log = hub.log_tail(400)
    assert "Starting managed service idle-culler" in log and "Service idle-culler exited" not in log, log


def test_pam_login(hub):
    status, token = hub.token_for(ALICE, USERS[ALICE])
    assert status == 201 and token, hub.log_tail()
    status, token = hub.token_for(ALICE, "not-the-password")
    assert status == 403 and token is None
    status, _ = hub.request("GET", f"/hub/api/users/{ALICE}")  # no token: no access
    assert status == 403


def test_the_hub_tells_the_root_its_versions_and_publish_checks_the_server_build(hub, site, hub_workdir):
    """The hub says on the root what it runs; a publish whose server build would not match it is
    refused before anything is staged (here: as if the hub had been upgraded to JupyterHub 99)."""
    root = Root(hub_workdir / "root")
    said = read_hub_versions(root)
    assert said is not None and said.versions["jupyterhub"] == importlib.metadata.version("jupyterhub"), said
    gens = sorted(p.name for p in root.generations.iterdir())
    try:
        note_hub_versions(
            root, said.model_copy(update={"versions": {**said.versions, "jupyterhub": "99.0.0"}})
        )
        with pytest.raises(RuntimeError) as e:
            cli(site, "publish")
        assert "but the hub on" in str(e.value) and "runs 99.0.0" in str(e.value), e.value
        assert "Traceback" not in str(e.value)
    finally:
        note_hub_versions(root, said)
    assert sorted(p.name for p in root.generations.iterdir()) == gens  # nothing staged or published


def test_a_server_is_a_batch_job_of_the_user_on_the_published_builds(hub, rig, site):
    token = _token(hub, ALICE)
    messages = _start(hub, ALICE, token)
    job = rig.user_job(ALICE)
    assert (job.user, job.running, job.queue, job.node) == (ALICE, True, "debug", rig.node), job
    # the user is told what is happening: the job, where it runs (or that it is queued)
    assert any(
        f"Job {job.id} is running on {rig.node}; starting JupyterLab..." in m
        or f"Job {job.id} is queued in queue 'debug'" in m
        for m in messages
    ), messages
    assert not any("None" in m for m in messages), messages
    status, page = hub.request("GET", f"/user/{ALICE}/lab", token=token)
    assert status == 200 and "JupyterLab" in str(page), status

    status, specs = hub.request("GET", f"/user/{ALICE}/api/kernelspecs", token=token)
    assert status == 200
    manifest = json.loads((Root(site.parent / "root").current / "manifest.json").read_text())
    # exactly the published stock kernels (with a pinned previous build once one was replaced) but
    # those for groups she is not in, and not the server environment's own python3
    assert (
        set(specs["kernelspecs"]) == {k["name"] for k in manifest["kernels"] if not k.get("groups")}
        and specs["default"] == KERNEL
    )
    assert KERNEL in specs["kernelspecs"] and "python3" not in specs["kernelspecs"]
    kernel = next(k for k in manifest["kernels"] if k["name"] == KERNEL)
    stock_prefix = str(Root(site.parent / "root").build("python", kernel["build"]))
    server_prefix = manifest["server"]["prefix"]

    user, prefix, server_exe, version = run_code(hub, ALICE, token, KERNEL, STOCK_CODE).split()
    assert user == ALICE
    assert prefix == stock_prefix
    assert server_exe.startswith(server_prefix + "/")  # the kernel's parent: the server, from its build
    record = json.loads((site.parent / "root" / "sessions" / f"{ALICE}.default.json").read_text())
    assert record["generation"] == manifest["generation"] and record["job_id"] == job.id

    _stop(hub, rig, ALICE, token)
    assert not (site.parent / "root" / "sessions" / f"{ALICE}.default.json").exists()


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
    token = _token(hub, BOB)
    before = rig.jobs(active_only=False)
    status, body = hub.request("POST", f"/hub/api/users/{BOB}/server", token=token, body=options)
    assert status == 400, (status, body)
    assert says in body["message"], body
    assert "Traceback" not in body["message"]
    assert set(rig.jobs(active_only=False)) - set(before) == set()  # no job was submitted
    assert not Path("/tmp/hubstock-pwned").exists()
    _, model = hub.request("GET", f"/hub/api/users/{BOB}", token=token)
    assert not model.get("servers")


def test_a_publish_during_a_session_does_not_change_it(hub, rig, site):
    root = Root(site.parent / "root")
    token = _token(hub, ALICE)
    _start(hub, ALICE, token)
    gen_before = os.readlink(root.current)
    old_out = run_code(hub, ALICE, token, KERNEL, STOCK_CODE).split()
    _, specs = hub.request("GET", f"/user/{ALICE}/api/kernelspecs", token=token)
    kernels_before = set(specs["kernelspecs"])

    spec = site / "envs" / "python" / "environment.yml"
    new_version = "0.2" if old_out[3] == "0.1" else "0.1"  # this runs once per scheduler
    spec.write_text(py_env(new_version))
    cli(site, "lock")
    cli(site, "build")
    cli(site, "publish")
    assert os.readlink(root.current) != gen_before

    # the running session keeps its generation: same kernels, same build
    _, specs = hub.request("GET", f"/user/{ALICE}/api/kernelspecs", token=token)
    assert set(specs["kernelspecs"]) == kernels_before
    assert run_code(hub, ALICE, token, KERNEL, STOCK_CODE).split() == old_out
    _stop(hub, rig, ALICE, token)

    # the next spawn gets the new generation
    _start(hub, ALICE, token)
    new_out = run_code(hub, ALICE, token, KERNEL, STOCK_CODE).split()
    assert new_out[3] == new_version and new_out[1] != old_out[1]
    _, specs = hub.request("GET", f"/user/{ALICE}/api/kernelspecs", token=token)
    assert set(specs["kernelspecs"]) != kernels_before  # the new generation's set
    _stop(hub, rig, ALICE, token)
    spawns = [json.loads(line) for line in root.audit_log.read_text().splitlines()]
    gens = [a["generation"] for a in spawns if a["action"] == "spawn" and a["user"] == ALICE]
    assert gens[-2:] == [os.path.basename(gen_before), os.path.basename(os.readlink(root.current))]
    submitted = [a for a in spawns if a["action"] == "submitted" and a["user"] == ALICE]
    assert submitted and all(a["job_id"] for a in submitted)


VENV_CODE = (
    "import os, sys, pwd\n"
    "print(pwd.getpwuid(os.getuid()).pw_name)\n"
    "print(sys.prefix)\n"
    "print(os.environ.get('LOADEDMODULES'))\n"
)
R_CODE = 'cat(1+1, Sys.info()[["effective_user"]], Sys.getenv("LOADEDMODULES"), R.home(), "\\n")'


def _toggle_display_name(kernel_json: Path) -> str:
    """Give the site's kernel template a new display name (this runs once per hub); the new name."""
    spec = json.loads(kernel_json.read_text())
    base, _, _ = spec["display_name"].partition(" #")
    n = int(spec["display_name"].rpartition(" #")[2]) + 1 if " #" in spec["display_name"] else 2
    spec["display_name"] = f"{base} #{n}"
    kernel_json.write_text(json.dumps(spec, indent=1) + "\n")
    return spec["display_name"]


def test_a_new_user_gets_the_venv_and_module_kernels_pinned_across_a_publish(
    hub, rig, site, hub_workdir, lmod_tree
):
    """A venv build and a module kernel through the whole path: a new PAM user's first login and
    spawn, the server lists both kernels, each runs code in the user's job (the venv build's
    Python through its python module, Debian's R through the R module), and a publish while the
    server runs leaves the session on its generation; the next spawn gets the new one."""
    _, tree = lmod_tree
    root = Root(site.parent / "root")
    user, password = f"hskind{secrets.token_hex(3)}", f"Kinds-{secrets.token_hex(4)}"
    create_user(user, password, hub_workdir / "homes")
    token = None
    try:
        status, token = hub.token_for(user, password)  # the first login creates the hub's user
        assert status == 201 and token, (status, hub.log_tail())
        _start(hub, user, token)
        job = rig.user_job(user)
        assert (job.user, job.running) == (user, True), job

        gen_before = os.readlink(root.current)
        manifest = json.loads((root.current / "manifest.json").read_text())
        published = {k["name"]: k for k in manifest["kernels"]}
        venv, r = published[VENV_KERNEL], published[R_KERNEL]
        assert (venv["env"], r["env"]) == ("venv", "r"), manifest["kernels"]
        venv_prefix = str(root.build("venv", venv["build"]))

        # what the launcher shows: the server's kernelspecs, with both kernels as published
        _, specs = hub.request("GET", f"/user/{user}/api/kernelspecs", token=token)
        shown = {name: k["spec"] for name, k in specs["kernelspecs"].items()}
        everybodys = {n for n, k in published.items() if not k.get("groups")}
        assert set(shown) == everybodys and specs["default"] == KERNEL, shown
        assert {n: shown[n]["display_name"] for n in (VENV_KERNEL, R_KERNEL)} == {
            VENV_KERNEL: venv["display_name"],
            R_KERNEL: r["display_name"],
        }
        # each starts through Lmod: its argv loads the tree's module, then execs the kernel
        assert f"module load {tree.python_module}" in shown[VENV_KERNEL]["argv"][4]
        assert f"{venv_prefix}/bin/python" in shown[VENV_KERNEL]["argv"]
        assert f"module load {tree.r_module}" in shown[R_KERNEL]["argv"][4]

        # a notebook runs code in each, as the user, in the job
        venv_out = run_code(hub, user, token, VENV_KERNEL, VENV_CODE).split()
        assert venv_out == [user, venv_prefix, tree.python_module], venv_out
        r_out = run_code(hub, user, token, R_KERNEL, R_CODE, timeout=180).split()
        assert r_out[:3] == ["2", user, tree.r_module], r_out

        # a publish while the server runs: new display names for both kernels, a new generation
        new_names = {
            name: _toggle_display_name(site / "kernels" / name / "kernel.json")
            for name in (VENV_KERNEL, R_KERNEL)
        }
        cli(site, "publish")
        assert os.readlink(root.current) != gen_before
        now = {k["name"]: k for k in json.loads((root.current / "manifest.json").read_text())["kernels"]}
        assert {n: now[n]["display_name"] for n in new_names} == new_names
        assert (now[VENV_KERNEL]["build"], now[R_KERNEL]["build"]) == (venv["build"], r["build"])

        # the running session keeps its generation: the same kernels, named as before, and both run
        _, specs = hub.request("GET", f"/user/{user}/api/kernelspecs", token=token)
        assert {n: k["spec"]["display_name"] for n, k in specs["kernelspecs"].items()} == {
            n: k["display_name"] for n, k in published.items() if n in everybodys
        }
        record = json.loads((root.sessions / f"{user}.default.json").read_text())
        assert record["generation"] == manifest["generation"] and record["job_id"] == job.id
        assert run_code(hub, user, token, VENV_KERNEL, VENV_CODE).split() == venv_out
        assert run_code(hub, user, token, R_KERNEL, R_CODE, timeout=180).split() == r_out
        _stop(hub, rig, user, token)

        # the next spawn gets the new generation
        _start(hub, user, token)
        _, specs = hub.request("GET", f"/user/{user}/api/kernelspecs", token=token)
        assert {n: specs["kernelspecs"][n]["spec"]["display_name"] for n in new_names} == new_names
        assert run_code(hub, user, token, VENV_KERNEL, VENV_CODE).split() == venv_out
        record = json.loads((root.sessions / f"{user}.default.json").read_text())
        assert record["generation"] == json.loads((root.current / "manifest.json").read_text())["generation"]
        _stop(hub, rig, user, token)
    finally:
        if token:  # a failure above may leave the server running: stop it before the user goes
            with contextlib.suppress(Exception):
                _stop(hub, rig, user, token)
        remove_user(user)


@pytest.fixture(scope="module")
def licensed(site, users):
    """A kernel for one group only, published on the site (env ``licensed``, closed to the group):
    Carol is in the group, Alice is not. Afterwards the site is published again without it."""
    group = f"hslic{RUN}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        subprocess.run(["gpasswd", "-a", CAROL, group], check=True, capture_output=True)
        with restricted_kernel(site, group) as gen:
            yield SimpleNamespace(group=group, generation=gen)
    finally:
        subprocess.run(["groupdel", group], check=False, capture_output=True)


WHO_AND_WHERE = "import os, sys, pwd\nprint(pwd.getpwuid(os.getuid()).pw_name)\nprint(sys.prefix)\n"


def _kernelspecs(hub: Hub, user: str, token: str) -> set[str]:
    status, specs = hub.request("GET", f"/user/{user}/api/kernelspecs", token=token)
    assert status == 200, specs
    return set(specs["kernelspecs"])


@pytest.mark.parametrize(
    "hub", ["slurm-postgresql", pytest.param("pbs", marks=pytest.mark.pbs)], indirect=True
)
def test_a_kernel_for_a_group_is_for_its_members_alone(hub, rig, site, licensed):
    """On Slurm and OpenPBS (the torque hub is Slurm's again): a member's launcher shows the group's
    kernel and a notebook runs in it, in her job; removed
    from the group while her server runs, that session keeps it (its processes keep the groups
    they started with) and her next spawn no longer has it. A non-member's launcher never shows
    it, and her own job cannot run the kernel's program, read its build or its kernel.json."""
    root = Root(site.parent / "root")
    gen = root.generations / licensed.generation
    manifest = json.loads((gen / "manifest.json").read_text())
    entry = next(k for k in manifest["kernels"] if k["name"] == LICENSED_KERNEL)
    assert entry["groups"] == [licensed.group]
    prefix = root.build(entry["env"], entry["build"])
    carol = _token(hub, CAROL)
    _start(hub, CAROL, carol)
    try:
        assert LICENSED_KERNEL in _kernelspecs(hub, CAROL, carol)
        out = run_code(hub, CAROL, carol, LICENSED_KERNEL, WHO_AND_WHERE).split()
        assert out == [CAROL, str(prefix)], out
        subprocess.run(["gpasswd", "-d", CAROL, licensed.group], check=True, capture_output=True)
        assert run_code(hub, CAROL, carol, LICENSED_KERNEL, WHO_AND_WHERE).split() == out
        _stop(hub, rig, CAROL, carol)
        _start(hub, CAROL, carol)
        assert LICENSED_KERNEL not in _kernelspecs(hub, CAROL, carol)
        _stop(hub, rig, CAROL, carol)
    finally:
        subprocess.run(["gpasswd", "-a", CAROL, licensed.group], check=False, capture_output=True)
    audit_lines = [json.loads(line) for line in root.audit_log.read_text().splitlines()]
    spawns = [a for a in audit_lines if a["action"] == "spawn" and a["user"] == CAROL]
    assert spawns[-2].get("restricted") == [LICENSED_KERNEL] and "restricted" not in spawns[-1]

    alice = _token(hub, ALICE)
    _start(hub, ALICE, alice)
    specs = _kernelspecs(hub, ALICE, alice)
    assert LICENSED_KERNEL not in specs and KERNEL in specs
    kernel_json = gen / "restricted" / LICENSED_KERNEL / "kernels" / LICENSED_KERNEL / "kernel.json"
    by_hand = (
        "import subprocess\n"
        "for what, act in [\n"
        f"    ('run', lambda: subprocess.run([{str(prefix / 'bin' / 'python')!r}, '-c', 'pass'])),\n"
        f"    ('list', lambda: __import__('os').listdir({str(prefix)!r})),\n"
        f"    ('read', lambda: open({str(kernel_json)!r}).read()),\n"
        "]:\n"
        "    try:\n"
        "        act()\n"
        "        print(what, 'allowed')\n"
        "    except OSError as e:\n"
        "        print(what, e.strerror.replace(' ', '-'))\n"
    )
    out = run_code(hub, ALICE, alice, KERNEL, by_hand).split()
    assert out == ["run", "Permission-denied", "list", "Permission-denied", "read", "Permission-denied"], out
    _stop(hub, rig, ALICE, alice)


def test_the_spawn_form_and_what_the_scheduler_gives_the_job(hub, rig):
    """A user logs in, opens the spawn form, asks for 2 CPUs, 2G and 45 minutes: the job has
    exactly that, as the scheduler itself shows it."""
    browser = hub.browser(BOB, USERS[BOB])
    status, _, page = browser.open("/hub/spawn")
    assert status == 200 and 'name="cpus"' in page and '<option value="debug"' in page, page[:2000]
    form = {"queue": "debug", "cpus": "2", "memory": "2G", "walltime": "00:45:00"}
    status, url, page = browser.open(f"/hub/spawn/{BOB}", form=form)
    assert status == 200, (status, url, page[:2000])
    token = _token(hub, BOB)
    hub.wait_for_server(BOB, token)
    job = rig.user_job(BOB)
    got = rig.resources(job.id)
    if rig.name == "pbs":  # qstat -fx
        want = {
            "queue": "debug",
            "Resource_List.select": "1:ncpus=2:mem=2048mb",
            "Resource_List.ncpus": "2",
            "Resource_List.mem": "2048mb",
            "Resource_List.walltime": "00:45:00",
            "job_state": "R",
        }
    else:  # scontrol show job
        want = {
            "Partition": "debug",
            "NumCPUs": "2",
            "MinMemoryNode": "2G",
            "TimeLimit": "00:45:00",
            "JobState": "RUNNING",
        }
    assert {k: got.get(k) for k in want} == want, got
    _stop(hub, rig, BOB, token)


def test_a_job_that_waits_says_where_it_waits_then_where_it_runs(hub, rig, hub_workdir):
    token = _token(hub, ALICE)
    blocker = rig.occupy(BOB, "debug")  # the whole node, for a job of someone else
    try:
        deadline = time.monotonic() + 60
        while not rig.active_jobs().get(blocker, None) or not rig.active_jobs()[blocker].running:
            assert time.monotonic() < deadline, rig.active_jobs()
            time.sleep(0.5)
        result: dict = {}
        starter = threading.Thread(target=lambda: result.update(messages=_start(hub, ALICE, token)))
        starter.start()
        deadline = time.monotonic() + 60
        while not [j for j in rig.active_jobs().values() if j.user == ALICE]:
            assert time.monotonic() < deadline, rig.active_jobs()
            time.sleep(0.5)
        time.sleep(3)  # the spawn page says it at least once
        assert not rig.user_job(ALICE).running
    finally:
        rig.delete(blocker)
    starter.join(300)
    messages = result["messages"]
    job = rig.user_job(ALICE)
    assert f"Job {job.id} is queued in queue 'debug', waiting for a node..." in messages, messages
    assert f"Job {job.id} is running on {rig.node}; starting JupyterLab..." in messages, messages
    _stop(hub, rig, ALICE, token)
    if rig.name == "pbs":  # on Slurm, test_hub_outages kills a hub with 3 servers running and 1 queued
        _a_killed_hub_accounts_for_every_job(hub, rig, Root(hub_workdir / "root"))


def _a_killed_hub_accounts_for_every_job(hub: Hub, rig: Cluster, root: Root) -> None:
    """SIGKILL the hub (with its proxy and services) with three servers running and one spawn
    queued, then restart it twice: the hub re-attaches the three and cancels the queued job it no
    longer tracks; once the node has room, no job of that user is left. Counted by asking the
    scheduler, not the hub. The rig's one node has 2 CPUs: it is given 3 for the test, so that
    the three servers run and the fourth waits."""
    pbs = rig.rig
    cpus = re.search(r"resources_available\.ncpus = (\d+)", pbs.run(["pbsnodes", "-v", pbs.host]).stdout)
    assert cpus, "pbsnodes gives no ncpus"
    pbs.run(["qmgr", "-c", f"set node {pbs.host} resources_available.ncpus = 3"])
    running = [ALICE, BOB, CAROL]
    tokens = {u: _token(hub, u) for u in [*running, DAVE]}
    try:
        threads = [threading.Thread(target=_start, args=(hub, u, tokens[u])) for u in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kept = {u: rig.user_job(u).id for u in running}
        status, answer = hub.request("POST", f"/hub/api/users/{DAVE}/server", token=tokens[DAVE], body={})
        assert status == 202, answer
        until("the job to be queued", lambda: [j for j in rig.active_jobs().values() if j.user == DAVE])
        queued = rig.user_job(DAVE)
        assert not queued.running
        record = root.sessions / f"{DAVE}.default.json"
        until("the session record to name the job", lambda: queued.id in record.read_text())
        hub.kill()
        assert set(rig.active_jobs()) == {*kept.values(), queued.id}  # the hub went, every job stayed
        hub.cleanup_servers = False  # the site's default: servers outlive the hub's restarts
        hub.start()
        hub.stop()  # and a second restart, as an upgrade would do
        hub.start()
        hub.cleanup_servers = True  # (for its next start)
        until(f"job {queued.id} to end", lambda: queued.id not in rig.active_jobs())
        for u in running:
            hub.wait_for_server(u, tokens[u])
            assert rig.user_job(u).id == kept[u]  # the same job serves the user
        assert set(rig.active_jobs()) == set(kept.values()) == session_jobs(root)  # every job accounted for
        assert "cancel-lost" in [ln["action"] for ln in audit(root) if ln.get("user") == DAVE]
        for u in running:
            hub.request("DELETE", f"/hub/api/users/{u}/server", token=tokens[u], timeout=60)
        for u in running:
            hub.wait_stopped(u, tokens[u], timeout=120)
    finally:
        pbs.run(["qmgr", "-c", f"set node {pbs.host} resources_available.ncpus = {cpus.group(1)}"])
    rig.wait_no_jobs(timeout=60)  # not one job of anybody: the queued one did not start either


def test_a_stop_during_a_server_outage_then_a_hub_restart_still_cancels_the_job(hub, rig, hub_workdir):
    """Stop while pbs_server is down: the cancel waits on the hub's list on disk; the hub restarts
    (its memory gone); once pbs_server answers again the job is deleted. On OpenPBS only: Slurm's
    (slurmctld down) is in test_hub_outages.py, on that module's hub."""
    if rig.name != "pbs":
        return
    token = _token(hub, ALICE)
    _start(hub, ALICE, token)
    job = rig.user_job(ALICE)
    stop_during_an_outage(hub, rig.rig, ALICE, token, job.id, hub_workdir / "state-pbs")
    assert job.id in rig.active_jobs()  # the outage left it running
    hub.start()
    until(f"job {job.id} to end", lambda: job.id not in rig.active_jobs(), timeout=120)
    rig.wait_no_jobs(timeout=60)
    path = cancels_path(hub_workdir / "state-pbs")
    until(
        "the hub's list to let the job go", lambda: job.id not in [j.job_id for j in read_cancels(path).jobs]
    )


def test_a_job_deleted_outside_the_hub_is_noticed(hub, rig, site):
    token = _token(hub, ALICE)
    _start(hub, ALICE, token)
    job = rig.user_job(ALICE)
    rig.delete(job.id)  # an administrator's scancel or qdel
    hub.wait_stopped(ALICE, token, timeout=90)
    rig.wait_no_jobs(timeout=60)
    assert not (site.parent / "root" / "sessions" / f"{ALICE}.default.json").exists()
    # and the user can start a server again
    _start(hub, ALICE, token)
    assert rig.user_job(ALICE).id != job.id
    _stop(hub, rig, ALICE, token)
