"""Bad input to the engine: one sentence naming the culprit and the fix, no traceback, a non-zero
exit status (2 for usage and site configuration, 1 for a failure), and no change at all to the
root or the site: both are listed (paths, types, modes, contents) before and after."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hubstock.store.root import Root

pytestmark = pytest.mark.integration

ENV = "dependencies:\n  - python\n  - demo-c 0.1\n"
COMMANDS = [
    ["status"],
    ["build"],
    ["publish"],
    ["rollback"],
    ["gc"],
    ["gc", "--dry-run"],
    ["verify"],
    ["lock", "--check"],
]


def listing(*tops: Path) -> dict[str, tuple]:
    """Everything under ``tops``: type, mode, and content (or link target)."""
    out: dict[str, tuple] = {}
    for top in tops:
        if not os.path.lexists(top):
            continue
        paths = [str(top)]
        if top.is_dir() and not top.is_symlink():
            for d, dirs, files in os.walk(top):
                paths += [os.path.join(d, n) for n in dirs + files]
        for p in paths:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    what = ("file", hashlib.sha256(f.read()).hexdigest())
            else:
                what = ("dir" if stat.S_ISDIR(st.st_mode) else "other", "")
            out[p] = (*what, stat.S_IMODE(st.st_mode))
    return out


def one_sentence(res, code: int, *names: str) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hubstock: ")
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _site_with(make_site, world_tmp, root_line: str | None, channel_url: str, env: bytes | None = None):
    settings = (f"{root_line}\n" if root_line is not None else "") + f'channels = ["{channel_url}"]\n'
    site = make_site({"demo": ENV}, settings=settings)
    if env is not None:
        (site.envs_dir / "demo" / "environment.yml").write_bytes(env)
    return site


CASES = {
    # name: (hubstock.toml root line, extra argv before the command, words the sentence names, exit code)
    "root-is-a-file": ('root = "{tmp}/rootfile"', [], ["rootfile", "is a file"], 2),
    "root-below-a-file": ('root = "{tmp}/rootfile/sub"', [], ["rootfile/sub", "below", "is a file"], 2),
    "root-under-proc": (
        'root = "/proc/hubstock-root"',
        [],
        ["/proc/hubstock-root", "proc pseudo-filesystem"],
        2,
    ),
    "root-empty": ('root = ""', [], ["hubstock.toml", "root", "may not be empty"], 2),
    "root-is-the-site": ('root = "."', [], ["the site repository itself"], 2),
    "root-holds-the-site": ('root = ".."', [], ["the site repository or holds it"], 2),
    "root-flag-empty": (None, ["--root", ""], ["--root is empty"], 2),
    "root-flag-is-a-file": (None, ["--root", "rootfile"], ["--root is", "rootfile", "is a file"], 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_root_is_named_and_nothing_is_written(make_site, hubstock, world_tmp, channel_url, case):
    root_line, extra, names, code = CASES[case]
    (world_tmp / "rootfile").write_text("not a folder\n")
    site = _site_with(make_site, world_tmp, root_line and root_line.format(tmp=world_tmp), channel_url)
    before = listing(world_tmp)
    for cmd in COMMANDS:
        res = subprocess.run(
            [sys.executable, "-m", "hubstock", "--site", str(site.dir), *extra, *cmd],
            capture_output=True,
            text=True,
            cwd=world_tmp,
        )
        one_sentence(res, code, *names)
    assert listing(world_tmp) == before


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("hubstock.toml", ["hubstock.toml is not UTF-8 text", "save it as UTF-8"]),
        ("environment.yml", ["envs/demo/environment.yml is not UTF-8 text", "save it as UTF-8"]),
    ],
)
def test_a_file_that_is_not_utf8_is_named(make_site, hubstock, world_tmp, channel_url, what, names):
    site = _site_with(make_site, world_tmp, None, channel_url)
    if what == "hubstock.toml":
        (site.dir / "hubstock.toml").write_bytes(b'# caf\xe9 latin-1\nchannels = ["x"]\n')
    else:
        (site.envs_dir / "demo" / "environment.yml").write_bytes(b"# caf\xe9\ndependencies:\n  - python\n")
    before = listing(world_tmp)
    for cmd in (["lock"], ["build"], ["status"]):
        one_sentence(hubstock(site, *cmd), 2, *names)
    assert listing(world_tmp) == before


def test_usage_errors_exit_2_and_change_nothing(make_site, hubstock, world_tmp, channel_url):
    site = _site_with(make_site, world_tmp, f'root = "{world_tmp / "root"}"', channel_url)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    before = listing(world_tmp)
    one_sentence(hubstock(site, "gc", "--keep", "0"), 2, "--keep 0", "use 1 or more")
    one_sentence(hubstock(site, "rollback", "7"), 2, "generation '0007' does not exist")
    one_sentence(hubstock(site, "verify", "nope"), 2, "no environment named 'nope'")
    one_sentence(hubstock(site, "build", "nope"), 2, "'nope'", "envs/nope/environment.yml")
    assert listing(world_tmp) == before


def test_a_kernel_whose_executable_is_missing_is_one_sentence(make_site, hubstock, world_tmp, channel_url):
    site = _site_with(make_site, world_tmp, f'root = "{world_tmp / "root"}"', channel_url)
    kdir = site.dir / "kernels" / "ghost"
    kdir.mkdir(parents=True)
    spec = {
        "argv": ["{env_prefix}/bin/no-such-python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Ghost",
        "language": "python",
        "metadata": {"hubstock": {"env": "demo"}},
    }
    (kdir / "kernel.json").write_text(json.dumps(spec))
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    before = listing(world_tmp)
    line = one_sentence(hubstock(site, "publish"), 1, "kernel 'ghost'", "bin/no-such-python does not exist")
    assert "fix 'argv' in its kernel.json" in line and "nothing was published" in line
    assert listing(world_tmp) == before


def test_a_root_that_does_not_exist_is_said_and_never_made(make_site, hubstock, world_tmp, channel_url):
    """A missing root is most often an unmounted shared filesystem: every command that reads or
    changes it says so (exit 2) and none makes one (``init-root`` does; test_rootmark.py has the
    other broken roots)."""
    root = world_tmp / "nowhere"
    site = _site_with(make_site, world_tmp, f'root = "{root}"', channel_url)
    for cmd in (["gc", "--dry-run"], ["gc"], ["verify"], ["rollback"], ["status"], ["build"]):
        one_sentence(hubstock(site, *cmd), 2, f"there is no hubstock root at {root}", "mount it", "init-root")
        assert not root.exists()
    assert hubstock(site, "init-root").returncode == 0
    os.chmod(root, 0o750)
    before = listing(world_tmp)
    res = hubstock(site, "gc", "--dry-run", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["dry_run"] is True
    assert listing(world_tmp) == before


def test_root_on_the_command_line_is_relative_to_the_working_directory(
    make_site, hubstock, world_tmp, channel_url
):
    site = _site_with(make_site, world_tmp, 'root = "in-site"', channel_url)
    cwd = world_tmp / "elsewhere"
    cwd.mkdir()
    run = [sys.executable, "-m", "hubstock", "--site", str(site.dir), "status", "--json"]
    flag = subprocess.run([*run[:-2], "--root", "rel", *run[-2:]], capture_output=True, text=True, cwd=cwd)
    assert f"no hubstock root at {cwd / 'rel'}:" in flag.stderr  # the refusal names where it looked
    env = {**os.environ, "HUBSTOCK_ROOT": "rel2"}
    from_env = subprocess.run(run, capture_output=True, text=True, cwd=cwd, env=env)
    assert f"no hubstock root at {cwd / 'rel2'}:" in from_env.stderr
    in_toml = subprocess.run(run, capture_output=True, text=True, cwd=cwd)
    assert f"no hubstock root at {site.dir / 'in-site'}:" in in_toml.stderr  # hubstock.toml: the site's
    assert Root(site.dir / "in-site").path.exists() is False
