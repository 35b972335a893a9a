"""Users' own environments (issue 24), the parts that need no scheduler: what a user may ask for,
the personal kernel and batch script rendered by value, and what the pre-spawn hook offers.
The whole path on the Slurm and OpenPBS rigs is in test_personal_jobs.py."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

from hubstock.errors import PersonalError
from hubstock.hub.hooks import personal_kernels
from hubstock.personal.layout import MARKER, PROVENANCE, Mine
from hubstock.personal.request import check_name, check_requirements, kernel_spec
from hubstock.site import PersonalSettings, Settings
from hubstock.store.records import LockedPackage, PersonalBase, PersonalBuild
from hubstock.store.root import Root

BID = "0123456789abcdef"
BASE = PersonalBase(
    kernel="python-venv",
    display_name="Python 3 (venv)",
    env="venv",
    build="b1",
    prefix="/sw/envs/venv/b1",
    generation="0003",
    spec={
        "argv": ["/sw/envs/venv/b1/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (venv)",
        "language": "python",
        "metadata": {"hubstock": {"env": "venv", "check": "import ipykernel"}},
    },
    check="import ipykernel",
)


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "", "Analysis", "-x", "x" * 33, "a b", "x" * 1000, ".hidden"],
)
def test_a_bad_name_is_one_sentence(name):
    with pytest.raises(PersonalError) as e:
        check_name(name)
    msg = str(e.value)
    assert "cannot name your environment" in msg and msg.count("\n") == 0 and len(msg) < 300


def test_good_names_pass():
    assert [check_name(n) for n in ("analysis", "a", "x_1-2")] == ["analysis", "a", "x_1-2"]


@pytest.mark.parametrize(
    ("reqs", "says"),
    [
        (["x" * 1000], "1000 characters long"),
        (["tabulate @ https://example.org/t.whl"], "names a URL"),
        (["--index-url=https://evil.example"], "is an option"),
        (["-e ."], "is an option"),
        (["not a requirement!"], "is not a package requirement"),
        (["nbgrader"], "may not be installed"),  # [server] forbidden is inherited
        (["tensorflow>=2"], "may not be installed"),  # [personal] deny
        ([], "no package given"),
        (["tabulate", "Tabulate>=0.9"], "named twice"),
        ([f"p{i}" for i in range(4)], "more than the 3"),
    ],
)
def test_bad_requirements_are_one_sentence(reqs, says):
    settings = Settings.model_validate({"personal": {"deny": ["tensorflow"], "max_packages": 3}})
    with pytest.raises(PersonalError) as e:
        check_requirements(reqs, settings)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_an_allow_list_allows_only_its_packages():
    settings = Settings.model_validate({"personal": {"allow": ["tabulate"]}})
    assert check_requirements([" tabulate>=0.9 "], settings) == ["tabulate>=0.9"]
    with pytest.raises(PersonalError, match="not among the packages this site allows"):
        check_requirements(["humanize"], settings)


@pytest.mark.parametrize("bad", ["relative/{user}", "{home}/../x", "/x/{nope}", "/x/{0}"])
def test_the_personal_dir_setting_is_checked(bad):
    with pytest.raises(ValueError):
        PersonalSettings(dir=bad)


def test_the_personal_dir_is_per_user():
    assert PersonalSettings().dir_for("ann", "/home/ann") == Path("/home/ann/.hubstock/envs")
    assert PersonalSettings(dir="/scratch/{user}/envs").dir_for("ann", "/home/ann") == Path(
        "/scratch/ann/envs"
    )


def test_the_personal_kernel_is_the_stock_one_on_the_personal_build():
    spec = kernel_spec(BASE, "analysis", Path("/home/ann/.hubstock/envs/analysis/builds/p1"))
    assert spec == {
        "argv": [
            "/home/ann/.hubstock/envs/analysis/builds/p1/bin/python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
        "display_name": "Python 3 (venv) + mine: analysis",
        "language": "python",
        "env": {"PATH": "/home/ann/.hubstock/envs/analysis/builds/p1/bin:${PATH}"},
        "metadata": {
            "hubstock": {
                "env": "venv",
                "check": "import ipykernel",
                "personal": "analysis",
                "base_kernel": "python-venv",
                "base_build": "venv/b1",
            }
        },
    }
    assert BASE.spec["argv"][0] == "/sw/envs/venv/b1/bin/python"  # the base's own is not changed


def test_the_build_job_is_the_sites_batch_script_running_the_build(tmp_path):
    from hubstock.personal.job import job_shell, render_build_job
    from hubstock.personal.layout import MineEnv
    from hubstock.site import load_site

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "hubstock.toml").write_text(
        'root = "/sw/root"\n[spawner]\nscheduler = "slurm"\nenvironment = { SLURM_CONF = "/etc/slurm/x.conf" }\n'
        "[personal]\nwalltime_minutes = 20\n"
    )
    site = load_site(str(site_dir), None)
    env = MineEnv("analysis", Path("/home/ann/.hubstock/envs/analysis"))
    job = render_build_job(site, env, "ann", "/home/ann")
    assert "#SBATCH --time=00:20:00" in job.script
    # the build runs in the batch step itself (no srun step: its launch would add to the wait)
    assert "\n/bin/sh /home/ann/.hubstock/envs/analysis/job.sh\n" in job.script
    assert job.env["SLURM_CONF"] == "/etc/slurm/x.conf" and job.env["HOME"] == "/home/ann"
    assert f"--export={','.join(job.env)}" in job.script
    sh = job_shell(site, env, "/sw/tools/bin/python")
    assert (
        f"exec /sw/tools/bin/python -m hubstock --site {site_dir} --root /sw/root mine build-job analysis "
        "> /home/ann/.hubstock/envs/analysis/build.log 2>&1"
    ) in sh


def _fake_env(top: Path, name: str, base_prefix: Path, complete: bool = True, bid: str = BID) -> None:
    env = top / name
    build = env / "builds" / "p1"
    (build / "bin").mkdir(parents=True)
    (env / "spec.json").write_text("{}")
    kdir = env / "jupyter" / "kernels" / f"mine-{name}"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(
        json.dumps({"argv": [f"{build}/bin/python", "-m", "ipykernel_launcher"]})
    )
    prov = PersonalBuild(
        build_id="p1",
        name=name,
        user="me",
        base_env="venv",
        base_build=bid,
        base_prefix=str(base_prefix),
        packages=[LockedPackage(manager="pip", name="tabulate", version="0.10.0", url="u", sha256="0" * 64)],
        created="now",
        builder="test",
    )
    (build / PROVENANCE).write_text(prov.to_json())
    if complete:
        (build / MARKER).write_text("p1\n")


def test_the_hook_offers_the_users_complete_kernels_whose_base_is_there(tmp_path):
    """The pre-spawn hook's part: complete builds on a base still on the root; a half-made build,
    and one whose stock base was garbage-collected, are not offered (and the base of each offered
    one goes into the session's record, so gc keeps it while the session runs)."""
    me = pwd.getpwuid(os.getuid()).pw_name
    root = Root(tmp_path / "root")
    base = root.build("venv", BID)
    base.mkdir(parents=True)
    (base / ".hubstock-complete").write_text(f"{BID}\n")
    mine = tmp_path / "mine"
    _fake_env(mine, "good", base)
    _fake_env(mine, "half", base, complete=False)
    _fake_env(mine, "orphan", base, bid="fedcba9876543210")  # its base was garbage-collected
    _fake_env(
        mine, "elsewhere", tmp_path / "other-root" / "envs" / "venv" / BID
    )  # its record names another root: the base is looked for on this one
    fifo = mine / "fifo"
    _fake_env(mine, "fifo", base)
    (fifo / "jupyter" / "kernels" / "mine-fifo" / "kernel.json").unlink()
    os.mkfifo(fifo / "jupyter" / "kernels" / "mine-fifo" / "kernel.json")  # would block a reader: skipped
    found = personal_kernels(f"{mine}", me, root)
    assert found.paths == (str(mine / "elsewhere" / "jupyter"), str(mine / "good" / "jupyter")), found
    assert found.bases == (f"venv/{BID}",)
    assert personal_kernels(None, me, root).paths == ()
    assert personal_kernels(str(tmp_path / "nothing-here"), me, root).paths == ()
    assert [e.name for e in Mine(me, mine).envs()] == ["elsewhere", "fifo", "good", "half", "orphan"]


# --- the stock page's helper (hubstock.hub.mine_helper) ---------------------------------------------


def _cmd():
    from hubstock.hub.mine_helper import MineCommand

    return MineCommand(
        exec_prefix="sudo -E -u {username}",
        tools="/sw/tools/bin/python",
        site="/sw/site",
        root="/sw/root",
        environment={"SLURM_CONF": "/etc/slurm/x.conf"},
    )


@pytest.mark.parametrize(
    "req",
    [
        None,
        {"user": "nobody"},
        {"user": "nobody", "args": ["build-job", "x"]},
        {"user": "nobody", "args": ["create", "x" * 3000]},
        {"user": "nobody", "args": ["create", "a\0b"]},
        {"user": "root", "args": ["list"]},
        {"user": "no-such-user-here", "args": ["list"]},
        {"user": "nobody", "args": ["list"], "extra": 1},
        {"user": "nobody", "args": []},
    ],
)
def test_the_helper_refuses_what_the_page_may_not_ask(req):
    from hubstock.hub.mine_helper import run_request

    out = run_request(_cmd(), req)
    assert out["code"] == 2 and out["stderr"].startswith("hubstock: refused:"), out


def test_the_helper_runs_mine_as_the_user_with_a_clean_environment(monkeypatch):
    from hubstock.hub.mine_helper import command_line, user_environment

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret-token")
    monkeypatch.setenv("CONFIGPROXY_AUTH_TOKEN", "secret-proxy")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca.pem")
    line = command_line(_cmd(), "nobody", ["create", "--no-wait", "--", "analysis", "tabulate; rm -rf /"])
    assert line == (
        "sudo -E -u nobody /sw/tools/bin/python -m hubstock --site /sw/site --root /sw/root -q mine create "
        "--json --no-wait -- analysis 'tabulate; rm -rf /'"
    )
    env = user_environment(_cmd(), "nobody")
    assert "secret" not in json.dumps(env)
    assert env["SLURM_CONF"] == "/etc/slurm/x.conf" and env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca.pem"
    assert env["USER"] == "nobody" and env["HOME"] == pwd.getpwnam("nobody").pw_dir


def test_the_helper_answers_one_line_per_request_and_ends_with_the_page(tmp_path):
    """A real fork and socket pair: an allowed request runs (here through an exec_prefix that only
    prints what it would run), a refused one does not, and closing the page's side ends the helper."""
    from hubstock.hub.mine_helper import MineCommand, MineHelper

    cmd = MineCommand(exec_prefix="echo as {username}:", tools="py", site="s", root="r", environment={})
    helper = MineHelper.start(cmd)
    try:
        ok = helper.ask("nobody", ["list"])
        assert (
            ok["code"] == 0
            and ok["stdout"].strip() == "as nobody: py -m hubstock --site s --root r -q mine list --json"
        )
        assert helper.ask("root", ["list"])["code"] == 2
    finally:
        helper.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(helper.pid, 0)
