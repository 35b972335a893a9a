"""Ordinary users cannot get in the way, whatever the admin's and the hub's umask.

Under each umask, a site is locked, built (the pip part through the root's own uv cache),
published and garbage-collected, and the hub writes session records and audit lines; then
an ordinary user (uid 65534) scans the root: nothing it may write, no symbolic link it may
swap, no lock it may hold, no session record or audit line it may read, and it can still
run the published kernels' environments. While publish smoke-tests the kernels, that user
tries to drop a kernel into the staging generation, and cannot.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hubstock.store.fs import read_regular
from hubstock.store.records import SessionRecord
from hubstock.store.root import Root
from hubstock.store.rootmark import check_root

pytestmark = pytest.mark.integration

#: the two ends: under 000 every bit hubstock does not set itself is open (so 002 and 022 open
#: less), under 077 every bit for others it does not set is closed (the kernels must still run)
UMASKS = [0o000, 0o077]

KERNEL = {
    "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python (stock)",
    "language": "python",
    # long enough for the user below to find the staging folder and try it
    "metadata": {"hubstock": {"env": "py", "check": "import time, demo_c; time.sleep(3)"}},
}

SCAN = r"""
import errno, fcntl, json, os, stat, sys
root = sys.argv[1]
out = {"writable": [], "swappable": [], "holdable": [], "readable_private": [], "lock": None}

def check(p):
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        if os.access(os.path.dirname(p), os.W_OK):
            out["swappable"].append(p)
    elif os.access(p, os.W_OK):
        out["writable"].append(p)
    if stat.S_ISREG(st.st_mode) and p.endswith("lock"):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            out["holdable"].append(p)
        except OSError:
            pass
        finally:
            os.close(fd)

check(root)
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        check(os.path.join(d, n))
try:
    fd = os.open(os.path.join(root, ".hubstock.lock"), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    out["lock"] = "held"
except OSError as e:
    out["lock"] = errno.errorcode[e.errno]
for p in [os.path.join(root, "audit.log"), os.path.join(root, "sessions", "alice.default.json")]:
    try:
        open(p).read()
        out["readable_private"].append(p)
    except OSError:
        pass
print(json.dumps(out))
"""

DROPPER = r"""
import os, sys, time
gens, stop = sys.argv[1], sys.argv[2]
tries = dropped = 0
while not os.path.exists(stop):
    for name in os.listdir(gens):
        if name.startswith(".staging-"):
            tries += 1
            try:
                os.makedirs(os.path.join(gens, name, "share", "jupyter", "kernels", "evil"))
                dropped += 1
            except OSError:
                pass
    time.sleep(0.01)
print(tries, dropped)
"""

HUB = r"""
import sys
from hubstock.store.records import SessionRecord
from hubstock.store.root import Root
from hubstock.store.sessions import register
root = Root(__import__("pathlib").Path(sys.argv[1]))
register(root, SessionRecord(user="alice", server="", generation="0001", builds=[]))
root.audit("spawn", user="alice", generation="0001")
"""


def _run(argv, umask: int, env=None, check=True, **kw) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        argv, capture_output=True, text=True, env=env, preexec_fn=lambda: os.umask(umask), **kw
    )
    if check:
        assert res.returncode == 0, (argv, res.stdout, res.stderr)
    return res


@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"umask-{u:03o}")
def test_nothing_under_the_root_is_an_ordinary_users(make_site, world_tmp, as_nobody, umask):
    site = make_site(
        {
            "py": "dependencies:\n  - python\n  - demo-c 0.1\n  - pip:\n    - ipykernel\n",
            "tiny": "dependencies:\n  - python\n  - pip:\n    - six==1.17.0\n",
        }
    )
    kdir = site.dir / "kernels" / "stock"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps(KERNEL))
    root = Root(site.root)
    hs = [sys.executable, "-m", "hubstock", "--site", str(site.dir)]
    _run([*hs, "lock"], umask)
    _run([*hs, "build", "py"], umask)
    own_cache = {k: v for k, v in os.environ.items() if k != "UV_CACHE_DIR"}  # the root's uv cache
    _run([*hs, "build", "tiny"], umask, env=own_cache)
    assert list(root.uv_cache.iterdir())

    stop = world_tmp / "stop"
    dropper = subprocess.Popen(
        [*as_nobody, sys.executable, "-c", DROPPER, str(root.generations), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _run([*hs, "publish"], umask)
    finally:
        stop.touch()
        out, _ = dropper.communicate(timeout=30)
    tries, dropped = map(int, out.split())
    assert tries > 0 and dropped == 0
    _run([sys.executable, "-c", HUB, str(root.path)], umask)  # the hub's spawn hook
    _run([*hs, "gc", "--keep", "1"], umask)

    scan = subprocess.run(
        [*as_nobody, sys.executable, "-c", SCAN, str(root.path)], capture_output=True, text=True
    )
    found = json.loads(scan.stdout)
    assert found == {
        "writable": [],
        "swappable": [],
        "holdable": [],
        "readable_private": [],
        "lock": "EACCES",
    }

    # seen by the admin: nothing under the root is writable by group or other, whatever it is
    loose = []
    for d, dirs, files in os.walk(root.path):
        for p in [d, *(os.path.join(d, n) for n in dirs + files)]:
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022:
                loose.append(f"{stat.S_IMODE(st.st_mode):04o} {p}")
    assert loose == []
    modes = {
        p.name: stat.S_IMODE(os.lstat(p).st_mode)
        for p in (
            root.lock_file,
            root.audit_log,
            root.sessions,
            next(root.sessions.iterdir()),
            root.pkgs,
            root.cache,
        )
    }
    assert modes == {
        ".hubstock.lock": 0o600,
        "audit.log": 0o600,
        "sessions": 0o700,
        "alice.default.json": 0o600,
        "pkgs": 0o700,
        "cache": 0o700,
    }
    # and the published environments are there for everybody to run
    for env in ("py", "tiny"):
        py = root.env_current(env) / "bin" / "python"
        res = subprocess.run(
            [*as_nobody, str(py), "-c", "import six" if env == "tiny" else "import demo_c, ipykernel"],
            capture_output=True,
            text=True,
            cwd="/",
        )
        assert res.returncode == 0, res.stderr


HOLD_RAW = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"
HOLD_HUBSTOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from hubstock.store.root import Root
    with Root(Path(sys.argv[1])).locked():
        print("held", flush=True)
        time.sleep(120)
""")


def _waiting_line(site, holder_code: str, lock_target: str) -> tuple[str, int]:
    """What a second hubstock says while ``holder_code`` holds the root's lock (and its pid)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, lock_target], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen(
            [sys.executable, "-m", "hubstock", "--site", str(site.dir), "gc", "-v"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        line = waiter.stderr.readline()
        deadline = time.monotonic() + 60
        while "waiting for" not in line and time.monotonic() < deadline:
            line = waiter.stderr.readline()
        holder.kill()
        holder.wait()
        assert waiter.wait(60) == 0
        return line.removeprefix("hubstock: ").strip(), holder.pid  # shown even without progress
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_the_admins_and_waiting_names_the_real_holder(make_site, hubstock):
    site = make_site({"demo": "dependencies:\n  - python\n"})
    root = Root(site.root)
    assert check_root(root.path)  # made by make_site, as `hubstock init-root` makes one
    hubstock(site, "gc", check=True)  # an earlier hubstock, long finished
    assert stat.S_IMODE(root.lock_file.stat().st_mode) == 0o600
    # a process that holds the lock and has written nothing (yet): named by its pid, not the earlier one
    line, pid = _waiting_line(site, HOLD_RAW, str(root.lock_file))
    assert line == f"waiting for process {pid} to finish with {root.path} (Ctrl-C gives up)"
    # a hubstock that holds it says who it is
    line, pid = _waiting_line(site, HOLD_HUBSTOCK, str(root.path))
    assert line.startswith(f"waiting for hubstock pid {pid} on {socket.gethostname()} (user "), line
    assert not root.holder_file.exists()  # the holder's note goes when it lets go... or when it dies


def test_session_readers_skip_what_is_not_a_regular_file_without_blocking(world_tmp):
    root = Root(world_tmp / "root")
    from hubstock.store.sessions import live_sessions, register

    register(root, SessionRecord(user="alice", server="", generation="0001"))
    fifo = world_tmp / "fifo"
    os.mkfifo(fifo)
    os.symlink(fifo, root.sessions / "bob.default.json")
    os.mkfifo(root.sessions / "carol.default.json")
    t0 = time.monotonic()
    assert read_regular(fifo) is None and read_regular(root.sessions / "bob.default.json") is None
    assert [s.user for s in live_sessions(root, 1)] == ["alice"]
    assert time.monotonic() - t0 < 5
    assert read_regular(Path("/nonexistent")) is None


@pytest.mark.parametrize("shared", [False, True], ids=["private", "setgid-group"])
def test_the_hubs_records_are_for_the_hub_and_the_admins_only(world_tmp, shared):
    """The hub (root here) writes records and audit lines for an admin of another account
    (uid 65534 owns the root); with a setgid root, for the root's group too."""
    if os.geteuid() != 0:
        pytest.skip("needs root to write as the hub for another account")
    root = Root(world_tmp / "root")
    root.path.mkdir()
    os.chown(root.path, 65534, 4242 if shared else 65534)
    os.chmod(root.path, 0o2755 if shared else 0o755)
    old = os.umask(0)
    try:
        from hubstock.store.sessions import register

        register(root, SessionRecord(user="alice", server="", generation="0001"))
        root.audit("spawn", user="alice")
    finally:
        os.umask(old)
    record = root.sessions / "alice.default.json"
    got = {
        p.name: (os.stat(p).st_uid, os.stat(p).st_gid, stat.S_IMODE(os.stat(p).st_mode))
        for p in (root.sessions, record, root.audit_log)
    }
    if shared:
        assert got == {
            "sessions": (65534, 4242, 0o2770),
            "alice.default.json": (65534, 4242, 0o660),
            "audit.log": (65534, 4242, 0o660),
        }
    else:
        assert {n: (uid, mode) for n, (uid, _gid, mode) in got.items()} == {
            "sessions": (65534, 0o700),
            "alice.default.json": (65534, 0o600),
            "audit.log": (65534, 0o600),
        }
