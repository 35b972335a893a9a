"""The command line's conventions: -q/-v anywhere, a closed stdout ends quietly, one table of exit
statuses (0 success, 1 failure, 2 usage or site configuration), and --json on every command that
changes the root, saying what was done."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

KERNEL = {
    "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python (stock)",
    "language": "python",
    "metadata": {"hubstock": {"env": "py", "check": "import demo_c"}},
}


def py_env(demo_c: str) -> str:
    return f"dependencies:\n  - python\n  - demo-c {demo_c}\n  - pip:\n    - ipykernel\n"


def test_verbose_and_quiet_go_before_or_after_the_command(make_site, hubstock):
    site = make_site({"demo": "dependencies:\n  - python\n"})
    hubstock(site, "lock", check=True)
    for argv in (["-v", "build"], ["build", "-v"], ["build", "demo", "--verbose"]):
        res = hubstock(site, *argv, check=True)
        assert "hubstock [" in res.stderr, argv  # progress lines, shown with -v
    for argv in (["-q", "status"], ["status", "-q"], ["gc", "--quiet", "--dry-run"]):
        res = hubstock(site, *argv, check=True)
        assert res.stderr == "", argv


def test_a_closed_stdout_ends_quietly(make_site):
    site = make_site({"demo": "dependencies:\n  - python\n"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubstock", "--site", str(site.dir), "status", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # `hubstock status | head -0`: the reader is gone before anything is written
    err = proc.stderr.read()
    assert proc.wait(60) == 0 and err == ""


def test_json_says_what_was_done_and_exit_statuses_follow_the_table(make_site, hubstock):
    site = make_site({"py": py_env("0.1")})
    (site.dir / "kernels" / "stock").mkdir(parents=True)
    (site.dir / "kernels" / "stock" / "kernel.json").write_text(json.dumps(KERNEL))
    hubstock(site, "lock", check=True)

    def run(*argv: str, code: int = 0) -> dict:
        res = hubstock(site, *argv, "--json")
        assert res.returncode == code, (argv, res.stderr)
        doc = json.loads(res.stdout)
        assert doc["format"] == 1, argv  # README: "Machine-readable output"
        return doc

    first = run("build")["builds"]
    assert [(b["env"], b["built"]) for b in first] == [("py", True)]
    assert run("build")["builds"] == [{**first[0], "built": False}]
    stale = site.root / "generations" / ".staging-0007-0badf00d"  # left by a publish that was killed
    (stale / "share" / "jupyter" / "kernels" / "evil").mkdir(parents=True)
    pub = run("publish")
    assert pub == {
        "format": 1,
        "generation": "0001",
        "published": True,
        "kernels": ["stock"],
        "removed_staging": [stale.name],
    }
    assert not stale.exists()
    assert run("publish")["published"] is False

    (site.envs_dir / "py" / "environment.yml").write_text(py_env("0.2"))
    assert hubstock(site, "lock", "--check").returncode == 1  # a failure: 1
    hubstock(site, "lock", check=True)
    second = run("build")["builds"][0]
    assert second["built"] and second["build"] != first[0]["build"]
    assert run("publish")["generation"] == "0002"
    assert run("rollback") == {"format": 1, "generation": "0001"}
    assert run("rollback", "2") == {"format": 1, "generation": "0002"}

    dry = run("gc", "--keep", "1", "--dry-run")
    assert dry["dry_run"] is True and dry["removed"]["generations"] == ["0001"]
    done = run("gc", "--keep", "1")
    assert done["removed"]["generations"] == ["0001"] and done["kept"]["generations"] == ["0002"]
    assert f"py/{second['build']}" in done["kept"]["builds"]

    report = run("verify")
    assert report["ok"] is True and {b["build"] for b in report["builds"]} >= {second["build"]}
    assert all(b["findings"] == [] for b in report["builds"])
    # a damaged file is a finding with its fields, not a text line
    from hubstock.store.root import Root

    prefix = Root(site.root).build("py", second["build"])
    victim = next(p for p in (prefix / "lib").rglob("*.py") if p.is_file())
    victim.chmod(0o644)
    victim.write_text(victim.read_text() + "# changed\n")
    damaged = json.loads(hubstock(site, "verify", "--json").stdout)
    found = [f for b in damaged["builds"] for f in b["findings"]]
    assert found and all(set(f) == {"flags", "path", "package"} for f in found), found
    assert any(f["path"].endswith(victim.name) and "5" in f["flags"] for f in found), found
    assert hubstock(site, "gc", "--keep", "0").returncode == 2  # usage: 2
    assert hubstock(site, "rollback", "99").returncode == 2


#: a usage mistake for each command: an unknown env or generation, or a value out of range
USAGE_MISTAKES = [
    ["lock", "nope"],
    ["lock", "--check", "nope"],
    ["build", "nope"],
    ["verify", "nope"],
    ["rollback", "99"],
    ["rollback", "abc"],
    ["gc", "--keep", "0"],
    ["diff", "99"],
    ["diff", "abc", "1"],
    ["status", "--bogus"],
    ["publish", "--bogus"],
    ["doctor", "--bogus"],
    ["units", "--bogus"],
    ["-q", "status", "-v"],
]


@pytest.mark.parametrize("argv", USAGE_MISTAKES, ids=" ".join)
def test_every_command_exits_2_for_a_usage_mistake(make_site, hubstock, argv):
    """The table's 2, command by command, on a site where nothing is built or published yet (a
    named generation that does not exist is the command's mistake, not "nothing published")."""
    site = make_site({"demo": "dependencies:\n  - python\n"})
    res = hubstock(site, *argv)
    assert res.returncode == 2, (argv, res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and res.stderr.strip(), res.stderr


def test_each_commands_help_says_what_it_does_and_what_v_and_q_do():
    from hubstock.cli import COMMANDS, _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMMANDS:
        text = sub.choices[name].format_help()
        assert f"hubstock {name}: " in text, text  # its description, not only the usage line
        assert "as above" not in text and "not with -q" in text and "not with -v" in text, text


def test_the_command_line_is_read_before_anything_heavy_is_imported():
    """``publish`` starts its smoke-test worker right after parsing: a parser that imported the
    site's models (pydantic) would put their import before the worker's start, on the critical path."""
    code = (
        "import sys\n"
        "from hubstock.cli import _parser\n"
        "_parser().parse_args(['publish'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m.startswith('hubstock.site')))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.strip() == "[]", res.stdout


@pytest.mark.parametrize("command", ["units", "doctor"])
def test_hub_commands_without_the_hub_extra_say_what_to_install(tmp_path, command):
    (tmp_path / "hubstock.toml").write_text(f'root = "{tmp_path / "root"}"\n')
    code = (
        "import sys; sys.modules['batchspawner'] = None  # as on an install without hubstock[hub]\n"
        "from hubstock.cli import main\n"
        f"raise SystemExit(main(['--site', {str(tmp_path)!r}, {command!r}]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"hubstock {command} runs on the hub node" in res.stderr and "hubstock[hub]" in res.stderr


@pytest.mark.parametrize("option", ["--proxy", "--jupyterhub"])
def test_units_refuses_a_program_that_does_not_exist(tmp_path, option):
    (tmp_path / "hubstock.toml").write_text(f'root = "{tmp_path / "root"}"\n')
    missing = tmp_path / "no" / "such-program"
    res = subprocess.run(
        [sys.executable, "-m", "hubstock", "--site", str(tmp_path), "units", option, str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"{option} {missing}: there is no such program" in res.stderr, res.stderr


def test_wait_gives_up_on_a_held_root_naming_the_holder(tmp_path):
    """``--wait SECONDS`` (or ``HUBSTOCK_WAIT``): a command whose root another process holds gives
    up after that long, with one sentence naming the holder (exit 1); a bad value is usage (2)."""
    import fcntl

    from hubstock.store.root import Root

    root = Root(tmp_path / "root")
    root.ensure()
    (tmp_path / "hubstock.toml").write_text(f'root = "{root.path}"\n')
    hubstock = [sys.executable, "-m", "hubstock", "--site", str(tmp_path)]
    fd = os.open(root.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by this process
        for argv, env in (
            ([*hubstock, "--wait", "0.5", "gc"], os.environ),
            ([*hubstock, "gc"], {**os.environ, "HUBSTOCK_WAIT": "0.5"}),
        ):
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
            assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
            said = f"process {os.getpid()} still holds the root {root.path} after 0.5 s"
            assert said in res.stderr and "--wait SECONDS" in res.stderr, res.stderr
    finally:
        os.close(fd)
    res = subprocess.run([*hubstock, "--wait", "soon", "gc"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "'soon' is not a number of seconds" in res.stderr, res.stderr
    res = subprocess.run([*hubstock, "--wait", "5", "gc"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr  # a free root: no wait at all
