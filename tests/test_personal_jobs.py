"""Users' own environments on the Slurm rig (issue 24): ``hubstock mine create`` as a PAM user
submits the build as that user's batch job; the job locks on the stock, installs only what the
stock lacks, smoke-tests the kernel, then publishes it in the user's folder; the pre-spawn hook
offers it; another user can read none of it; every bad input is one sentence and leaves nothing.

One module-scoped site (a copy of ``hub_site`` set up for the rig's scheduler) serves every test;
the builds are of the venv env (ipykernel on the rig's ``python/3.11`` module)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rigs.hubsite import VENV_KERNEL, base_settings, tools_python, tree_bytes
from tests.helpers import kernel_script, until

from hubstock.hub.hooks import personal_kernels
from hubstock.personal.job import PASSED_ON
from hubstock.store.root import Root

pytestmark = [pytest.mark.hub, pytest.mark.integration]

ANN, BOB = "hsmineann", "hsminebob"
PKGS = ("tabulate", "humanize", "six")
MINE_DIR = "{home}/.hubstock/envs"


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tools(hub_workdir: Path) -> Path:
    """``[personal] tools`` (``rigs.hubsite.tools_python``) on the shared storage."""
    return tools_python(hub_workdir / "hubstock-tools")


@pytest.fixture(scope="module")
def mine_site(hub_site: Path, slurm_rig, hub_workdir: Path, tools: Path, channel: Path):
    """``(site, root)``: hub_site's envs and root, its jobs on the Slurm rig, two PAM users."""
    from rigs.slurm_rig import create_user, remove_user

    site = hub_workdir / "site-mine"
    if not site.exists():
        shutil.copytree(hub_site, site, symlinks=True)
    # hub_site's own settings: other modules' hubs rewrite its hubstock.toml with sections of theirs
    text = base_settings(hub_workdir / "root", channel)
    text += (
        f'\n[spawner]\nscheduler = "slurm"\nenvironment = {{ SLURM_CONF = "{slurm_rig.slurm_conf}" }}\n'
        '\n[[spawner.queues]]\nname = "debug"\nmax_cpus = 2\nmax_memory = "2G"\nmax_walltime = "01:00:00"\n'
        '\n[spawner.defaults]\nqueue = "debug"\nmemory = "1G"\nwalltime = "00:30:00"\n'
        f'\n[personal]\ntools = "{tools}"\nmax_envs = 3\ndeny = ["tensorflow"]\n'
    )
    (site / "hubstock.toml").write_text(text)
    homes = hub_workdir / "mine-homes"
    for user in (ANN, BOB):
        create_user(user, "not-a-secret-1", homes)
    yield site, Root(hub_workdir / "root"), tools
    for user in (ANN, BOB):
        remove_user(user)


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` on a login node: its own environment, none of root's."""
    pw = pwd.getpwnam(user)
    env = {"HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in PASSED_ON if k in os.environ})  # as a login session has them
    cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
    cmd += ["/bin/sh", "-c", 'exec "$@"', "sh", *argv]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=pw.pw_dir, check=False, timeout=900
    )


def mine(site: Path, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return as_user(
        user,
        str(site.parent / "hubstock-tools" / "bin" / "python"),
        "-m",
        "hubstock",
        "--site",
        str(site),
        "mine",
        *args,
    )


def envs_dir(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir) / ".hubstock" / "envs"


def one_sentence(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("hubstock:")]
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def built(mine_site):
    """Ann's environment 'analysis' (three small packages on the venv kernel), built once."""
    site, _root, _tools = mine_site
    res = mine(site, ANN, "create", "analysis", "--from", VENV_KERNEL, *PKGS, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_a_users_environment_is_built_as_their_job_and_its_kernel_runs_both_stock_and_added(mine_site, built):
    site, root, tools = mine_site
    assert built["state"] == "ready" and built["kernel"] == "mine-analysis", built
    env = envs_dir(ANN) / "analysis"
    ann = pwd.getpwnam(ANN)
    # everything is Ann's, in her folder, closed to others; the build is read-only
    for p in (envs_dir(ANN), env, env / "builds" / built["build"], env / "pylock.toml"):
        assert p.stat().st_uid == ann.pw_uid, p
    assert envs_dir(ANN).stat().st_mode & 0o077 == 0
    assert not os.access(env / "builds" / built["build"] / "bin", os.W_OK) or os.geteuid() == 0
    assert (env / "builds" / built["build"] / "bin").stat().st_mode & 0o222 == 0
    # the job ran as Ann under Slurm (its log says which job) and left its output in build.log only
    log = (env / "build.log").read_text()
    assert "kernel 'mine-analysis' ready" in log, log
    assert not list(Path(ann.pw_dir).glob("jupyterhub_slurmspawner_*.log")), os.listdir(ann.pw_dir)
    # the lock: what was asked for and what it needs, each file with its sha256, on the stock build it names
    lock = mine(site, ANN, "lock", "analysis")
    assert lock.returncode == 0 and 'name = "tabulate"' in lock.stdout and "sha256 = " in lock.stdout
    assert "(build venv/" in lock.stdout
    # only what the stock lacks was installed: megabytes, under 5% of the stock build
    manifest = json.loads((root.current / "manifest.json").read_text())
    stock = Path(manifest["builds"]["venv"]["prefix"])
    own, base = tree_bytes(env / "builds" / built["build"]), tree_bytes(stock)
    assert own < 0.05 * base, (own, base)
    print(
        f"personal build {own / 1e6:.2f} MB, stock venv build {base / 1e6:.1f} MB ({100 * own / base:.1f}%)"
    )
    # the kernel, started as a server would from the hook's JUPYTER_PATH, imports both
    found = personal_kernels(MINE_DIR, ANN, mine_site[1])
    assert found.paths == (str(env / "jupyter"),) and found.bases == (
        f"venv/{manifest['builds']['venv']['build']}",
    )
    code = "import tabulate, humanize, ipykernel; print(tabulate.__file__, ipykernel.__file__)"
    script = kernel_script(Path(found.paths[0]), "mine-analysis", code)
    out = as_user(ANN, str(tools), "-c", script)
    mine_file, stock_file = out.stdout.split()
    assert mine_file.startswith(f"{env}/builds/{built['build']}/"), out
    assert stock_file.startswith(f"{stock}/"), out
    spec = json.loads((env / "jupyter" / "kernels" / "mine-analysis" / "kernel.json").read_text())
    [stock_kernel] = [k for k in manifest["kernels"] if k["name"] == VENV_KERNEL]
    assert spec["display_name"] == f"{stock_kernel['display_name']} + mine: analysis"  # other tests rename it
    # list and verify
    listed = json.loads(mine(site, ANN, "list", "--json").stdout)["envs"]
    assert [(e["name"], e["state"], e["notes"]) for e in listed] == [("analysis", "ready", [])]
    assert mine(site, ANN, "verify", "analysis").returncode == 0


def test_another_user_sees_none_of_it(mine_site, built):
    site, _root, _tools = mine_site
    env = envs_dir(ANN) / "analysis"
    for argv in (
        ["ls", str(env)],
        ["cat", str(env / "pylock.toml")],
        [f"{env}/builds/{built['build']}/bin/python", "-c", "1"],
    ):
        res = as_user(BOB, *argv)
        assert res.returncode != 0 and "Permission denied" in res.stderr, (argv, res)
    assert personal_kernels(MINE_DIR, BOB, mine_site[1]).paths == ()
    assert json.loads(mine(site, BOB, "list", "--json").stdout)["envs"] == []


def test_creating_it_again_does_no_extra_work(mine_site, built):
    site, _root, _tools = mine_site
    res = mine(site, ANN, "create", "analysis", "--from", VENV_KERNEL, *PKGS, "--replace", "--json")
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout)
    assert again["build"] == built["build"]
    assert "already complete" in (envs_dir(ANN) / "analysis" / "build.log").read_text()
    assert os.listdir(envs_dir(ANN) / "analysis" / "builds") == [built["build"]]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["../x", "tabulate"], "cannot name your environment"),
        (["bad", "x" * 1000], "1000 characters long"),
        (["bad", "tensorflow"], "may not be installed"),
        (["bad", "tabulate @ https://example.org/t.whl"], "names a URL"),
        (["bad", "--from", "nothere", "tabulate"], "no stock kernel or environment 'nothere'"),
    ],
)
def test_what_is_refused_before_a_job_is_one_sentence_and_leaves_nothing(mine_site, args, says):
    site, _root, _tools = mine_site
    res = mine(site, BOB, "create", *args)
    assert says in one_sentence(res)
    assert not (envs_dir(BOB) / "bad").exists()


@pytest.mark.parametrize(
    ("pkgs", "says"),
    [
        (["hubstock-no-such-package-anywhere"], "not in the package index"),
        (["traitlets==5.0.0"], "conflict with the stock environment 'venv'"),
    ],
)
def test_what_the_job_refuses_is_one_sentence_and_no_kernel(mine_site, pkgs, says):
    site, _root, _tools = mine_site
    res = mine(site, BOB, "create", "broken", "--from", VENV_KERNEL, *pkgs)
    assert says in one_sentence(res)
    env = envs_dir(BOB) / "broken"
    assert not (env / "jupyter").exists() and not list((env / "builds").glob("*")) if env.exists() else True
    listed = json.loads(mine(site, BOB, "list", "--json").stdout)["envs"]
    assert [(e["name"], e["state"]) for e in listed] == [("broken", "failed")] and says in listed[0][
        "message"
    ]
    assert personal_kernels(MINE_DIR, BOB, mine_site[1]).paths == ()
    assert mine(site, BOB, "remove", "broken").returncode == 0 and not env.exists()


def test_a_killed_build_job_leaves_nothing_and_says_so(mine_site, slurm_rig):
    site, _root, _tools = mine_site
    res = mine(site, BOB, "create", "killed", "--from", VENV_KERNEL, "tabulate", "--no-wait", "--json")
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout)["job"]
    env = envs_dir(BOB) / "killed"

    def running() -> bool:
        try:
            return json.loads((env / "state.json").read_text())["state"] == "running"
        except (OSError, ValueError):
            return False

    until("the build job to start", running, timeout=120)
    subprocess.run(
        ["scancel", "--signal=KILL", "--full", job], env={**os.environ, **slurm_rig.env}, check=True
    )
    until("the job to leave Slurm", lambda: job not in subprocess.run(
        ["squeue", "-h", "-o", "%i"], env={**os.environ, **slurm_rig.env}, capture_output=True, text=True).stdout,
        timeout=60)  # fmt: skip
    listed = json.loads(mine(site, BOB, "list", "--json").stdout)["envs"]
    [e] = [e for e in listed if e["name"] == "killed"]
    assert e["state"] == "failed" and "ended before it finished" in e["message"], e
    assert not (env / "jupyter").exists() and not any(
        (env / "builds").glob("*") if (env / "builds").exists() else []
    )
    assert mine(site, BOB, "remove", "killed").returncode == 0


def test_root_is_told_to_use_their_own_account(mine_site):
    site, _root, _tools = mine_site
    res = subprocess.run(
        [sys.executable, "-m", "hubstock", "--site", str(site), "mine", "list"],
        capture_output=True,
        text=True,
    )
    assert "run it as your own account, not as root" in one_sentence(res)


def test_gc_of_the_stock_build_under_a_personal_one_is_told_and_its_kernel_withdrawn(
    mine_site, slurm_rig, hub_workdir
):
    """The documented behaviour: a republished stock leaves a personal build working ("base
    changed: rebuild"); gc does not look into users' folders, and once it removed that stock
    build, `mine list` says "base removed" and the hook no longer offers the kernel. A site and a
    root of this test's own, so that the shared hub site is not republished."""
    from rigs.hubsite import cli

    _site, _root, tools = mine_site
    site = hub_workdir / "site-mine-gc"
    env = site / "envs" / "py"
    env.mkdir(parents=True, exist_ok=True)
    (env / "env.toml").write_text('kind = "venv"\n\n[python]\npath = "/usr/bin/python3"\n')
    (env / "requirements.in").write_text("ipykernel\nsix==1.16.0\n")
    kdir = site / "kernels" / "py"
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python (gc)",
                "language": "python",
                "metadata": {"hubstock": {"env": "py", "check": "import six"}},
            }
        )
    )
    server = site / "envs" / "server"
    server.mkdir(parents=True, exist_ok=True)
    (server / "environment.yml").write_text((_site / "envs" / "server" / "environment.yml").read_text())
    text = (_site / "hubstock.toml").read_text().replace(str(_root.path), str(hub_workdir / "root-gc"))
    text = text.replace("[personal]\n", '[personal]\ndir = "{home}/.hubstock/gc-envs"\n')
    # no pinned kernel of the previous build: gc may then remove it once no generation has it
    (site / "hubstock.toml").write_text(text + "\n[gc]\nkeep = 1\n\n[publish]\nkeep_previous_builds = 0\n")
    cli(site, "init-root")
    for step in ("lock", "build", "publish"):
        cli(site, step)
    root = Root(hub_workdir / "root-gc")
    old = json.loads((root.current / "manifest.json").read_text())["builds"]["py"]["build"]
    res = mine(site, ANN, "create", "layered", "tabulate", "--json")
    assert res.returncode == 0, res.stderr
    template = "{home}/.hubstock/gc-envs"
    assert len(personal_kernels(template, ANN, root).paths) == 1

    (env / "requirements.in").write_text("ipykernel\nsix==1.17.0\n")
    for step in ("lock", "build", "publish"):
        cli(site, step)
    [e] = json.loads(mine(site, ANN, "list", "--json").stdout)["envs"]
    assert e["state"] == "ready" and [n.split(":")[0] for n in e["notes"]] == ["base changed"], e
    assert personal_kernels(template, ANN, root).bases == (f"py/{old}",)  # still offered, on its old base

    gc = json.loads(cli(site, "gc", "--json"))
    assert f"py/{old}" in json.dumps(gc), gc
    assert not (root.path / "envs" / "py" / old).exists()
    [e] = json.loads(mine(site, ANN, "list", "--json").stdout)["envs"]
    assert [n.split(":")[0] for n in e["notes"]] == ["base removed"] and "--replace tabulate" in e["notes"][
        0
    ], e
    assert personal_kernels(template, ANN, root).paths == ()
    # rebuilt on today's stock, it is offered again
    res = mine(site, ANN, "create", "layered", "tabulate", "--replace", "--json")
    assert res.returncode == 0, res.stderr
    new = json.loads((root.current / "manifest.json").read_text())["builds"]["py"]["build"]
    assert personal_kernels(template, ANN, root).bases == (f"py/{new}",)


CAROL = "hsminecarol"
#: the site's wheelhouse for compute nodes with no way out (the OpenPBS rig's): PyPI's files, by sha256
WHEELS = {
    "tabulate-0.10.0-py3-none-any.whl": (
        "https://files.pythonhosted.org/packages/99/55/db07de81b5c630da5cbf5c7df646580ca26dfaefa593667fc6f2fe016d2e/",
        "f0b0622e567335c8fabaaa659f1b33bcb6ddfe2e496071b743aa113f8774f2d3",
    ),
    "humanize-4.17.0-py3-none-any.whl": (
        "https://files.pythonhosted.org/packages/0c/74/bb970f876202aa0e8c4a1e9904f0b3482e73c752512962b7e957091d5acf/",
        "02d0899527760efe18011944f882df4970943b4cdff7b5a0ba7fed43a576ef98",
    ),
}


@pytest.fixture(scope="module")
def wheelhouse(hub_workdir: Path) -> Path:
    """A folder of wheels (``WHEELS``, each checked against its sha256): ``[personal] find_links``
    of a site whose compute nodes reach no index."""
    import urllib.request

    d = hub_workdir / "wheelhouse"
    d.mkdir(exist_ok=True)
    for name, (base, sha) in WHEELS.items():
        wheel = d / name
        if not wheel.exists():
            urllib.request.urlretrieve(base + name, d / f".{name}.part")
            os.replace(d / f".{name}.part", wheel)
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sha, name
    return d


@pytest.mark.pbs
def test_on_openpbs_the_build_is_the_users_job_from_the_sites_wheelhouse(
    mine_site, openpbs_rig, hub_workdir, wheelhouse
):
    """The same build on OpenPBS, whose node has no way out (the rig's network namespace), as on
    a cluster whose compute nodes reach no index: the site's wheelhouse (``[personal] find_links``,
    ``no_index``) is all the job has. The user runs ``mine create`` inside the rig's namespace."""
    from rigs.slurm_rig import create_user, remove_user

    site0, _root, tools = mine_site
    rig = openpbs_rig
    site = hub_workdir / "site-mine-pbs"
    if not site.exists():
        shutil.copytree(site0, site, symlinks=True)
    base = (site0 / "hubstock.toml").read_text().split("\n[spawner]\n")[0]
    bin_dir = Path(rig.exec_dir) / "bin"
    (site / "hubstock.toml").write_text(
        base
        + f'\n[spawner]\nscheduler = "pbs"\nsubmit_cmd = "{bin_dir}/qsub -f"\n'
        + f'environment = {{ PBS_CONF_FILE = "{rig.conf}" }}\n'
        + '\n[[spawner.queues]]\nname = "debug"\nmax_cpus = 2\nmax_memory = "2G"\nmax_walltime = "01:00:00"\n'
        + '\n[spawner.defaults]\nqueue = "debug"\nmemory = "1G"\nwalltime = "00:30:00"\n'
        + f'\n[personal]\ntools = "{tools}"\nfind_links = ["{wheelhouse}"]\nno_index = true\n'
    )
    create_user(CAROL, "not-a-secret-1", hub_workdir / "mine-homes")
    try:
        pw = pwd.getpwnam(CAROL)
        env = {"HOME": pw.pw_dir, "USER": CAROL, "LOGNAME": CAROL, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        argv = [
            str(tools),
            "-m",
            "hubstock",
            "--site",
            str(site),
            "mine",
            "create",
            "tab",
            "--from",
            VENV_KERNEL,
        ]
        res = rig.run([*argv, "tabulate", "--json"], user=CAROL, env=env, timeout=600, check=False)
        assert res.returncode == 0, res.stderr
        done = json.loads(res.stdout)
        assert done["state"] == "ready", done
        mine_env = envs_dir(CAROL) / "tab"
        assert "file://" in (mine_env / "pylock.toml").read_text()  # from the wheelhouse, with its sha256
        found = personal_kernels(MINE_DIR, CAROL, mine_site[1])
        assert found.paths == (str(mine_env / "jupyter"),)
        script = kernel_script(
            Path(found.paths[0]), "mine-tab", "import tabulate, ipykernel; print(tabulate.__file__)"
        )
        out = as_user(CAROL, str(tools), "-c", script)
        assert out.stdout.strip().startswith(f"{mine_env}/builds/{done['build']}/"), out
        # a package the wheelhouse lacks: one sentence, no kernel
        res = rig.run(
            [*argv[:-3], "nope", "--from", VENV_KERNEL, "tqdm"],
            user=CAROL,
            env=env,
            timeout=600,
            check=False,
        )
        assert "not in the package index" in one_sentence(res)
        assert not (envs_dir(CAROL) / "nope" / "jupyter").exists()
    finally:
        remove_user(CAROL)


def test_a_full_quota_is_one_sentence_and_leaves_no_kernel(mine_site, hub_workdir):
    """The user's folder on a filesystem with room for little more than the records (a tmpfs of
    256 KiB, as a quota would be): the job fails on the space, says so, and no kernel appears."""
    site0, _root, _tools = mine_site
    tiny = hub_workdir / "tiny"
    tiny.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(tiny)], check=True)
    try:
        bob = pwd.getpwnam(BOB)
        mine_dir = tiny / BOB
        mine_dir.mkdir()
        os.chown(mine_dir, bob.pw_uid, bob.pw_gid)
        site = hub_workdir / "site-mine-tiny"
        if not site.exists():
            shutil.copytree(site0, site, symlinks=True)
        text = (
            (site0 / "hubstock.toml")
            .read_text()
            .replace("[personal]\n", f'[personal]\ndir = "{tiny}/{{user}}"\n')
        )
        (site / "hubstock.toml").write_text(text)
        res = mine(site, BOB, "create", "big", "--from", VENV_KERNEL, "humanize", "tabulate")
        assert "is full" in one_sentence(res), res.stderr
        env = mine_dir / "big"
        assert not (env / "jupyter").exists()
        assert not (env / "builds").exists() or not any((env / "builds").iterdir())
    finally:
        subprocess.run(["umount", "-l", str(tiny)], check=False)
