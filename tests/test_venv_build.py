"""Integration: venv envs (``requirements.in`` on a site interpreter, locked by uv to ``pylock.toml``).

Real uv installs real PyPI wheels (through the session's shared uv cache, so PyPI is asked only
for the index pages of a lock); kernels are started by publish's smoke test with jupyter_client.
The interpreters are this machine's Python, copied into a test folder where a test changes it,
another Python version found on this machine, and the ``python/X.Y`` module of ``lmod_tree``.

The ipykernel build (one fill of a wheel cache) is shared: ``stock`` locks and builds it once on
a root of this module, which the module-interpreter site shares (its wheels are already there).
Tests that change a build or its interpreter make their own small site (``six``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hubstock.store.builds import current_link, is_complete, read_provenance
from hubstock.store.generations import resolve_current
from hubstock.store.records import Interpreter, ModuleRef
from hubstock.store.root import MARKER, Root
from hubstock.store.rootmark import init_root

pytestmark = pytest.mark.integration

IN_CI = bool(os.environ.get("CI"))
SIX = "six==1.17.0\n"
KERNEL_ARGV = ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
_PROBE = (
    "import os, platform, sys; print(os.path.realpath(sys.executable)); "
    "print(platform.python_version()); print(sys.implementation.name)"
)


# --- helpers --------------------------------------------------------------------------------------


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI must run the venv tests)")
    pytest.skip(what)


def _probe(python: str | Path) -> tuple[str, str, str] | None:
    """(real path, full version, implementation) of a runnable interpreter, else None."""
    try:
        res = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=False)
    except OSError:
        return None
    parts = res.stdout.split()
    return (parts[0], parts[1], parts[2]) if res.returncode == 0 and len(parts) == 3 else None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def system_python() -> str:
    """This machine's python3 on a batch job's PATH (as envs/python of the catalog names it)."""
    found = shutil.which("python3", path="/usr/bin:/bin")
    if found is None or _probe(found) is None:
        _missing("no runnable python3 on /usr/bin:/bin")
    return found


def copy_python(dest_dir: Path) -> Path:
    """A copy of the system Python's binary in ``dest_dir`` (a site interpreter a test may change)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / "python3"
    shutil.copy2(os.path.realpath(system_python()), dest)
    if _probe(dest) is None:
        _missing(f"a copy of {system_python()} does not run from {dest_dir}")
    for d in (dest_dir, dest_dir.parent):  # made here: every user may run it, as the build's python
        d.chmod(0o755)
    return dest


def another_python(not_minor: str) -> tuple[str, str]:
    """(path, full version) of a runnable CPython 3.8+ of another X.Y than ``not_minor``: the newest
    python3.N on PATH, else the newest version pyenv installed (its shims run only the selected one)."""

    def newest_first(paths: list[str]) -> list[str]:
        def key(path: str) -> tuple[int, ...]:
            digits = [part for part in Path(path).parent.parent.name.split(".") if part.isdigit()]
            return tuple(int(d) for d in digits)

        return sorted(paths, key=key, reverse=True)

    on_path = [found for n in range(30, 7, -1) if (found := shutil.which(f"python3.{n}"))]
    pyenv_root = ""
    if pyenv := shutil.which("pyenv"):
        res = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        pyenv_root = res.stdout.strip() if res.returncode == 0 else ""
    installed = glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python3")) if pyenv_root else []
    for candidate in [*on_path, *newest_first(installed)]:
        info = _probe(candidate)
        if info is None or info[2] != "cpython" or _minor(info[1]) == not_minor:
            continue
        if tuple(int(x) for x in _minor(info[1]).split(".")) >= (3, 8):
            return info[0], info[1]
    _missing(f"no Python 3.8+ other than {not_minor} on this machine (python3.N on PATH, or pyenv's)")
    raise AssertionError("unreachable")


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_site(site: Path, root: Path, extra: str = "") -> Path:
    site.mkdir(parents=True, exist_ok=True)
    (site / "hubstock.toml").write_text(f'root = "{root}"\n{extra}')
    if root.parent.is_dir():
        init_root(root)  # as `hubstock init-root` does
    return site


def write_venv_env(site: Path, name: str, requirements: str, *, path=None, module=None) -> None:
    d = site / "envs" / name
    d.mkdir(parents=True, exist_ok=True)
    python = f'path = "{path}"' if path is not None else f'module = "{module}"'
    (d / "env.toml").write_text(f'kind = "venv"\n\n[python]\n{python}\n')
    (d / "requirements.in").write_text(requirements)


def write_kernel(site: Path, name: str, env: str, check: str) -> None:
    d = site / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": KERNEL_ARGV,
        "display_name": f"Python ({name})",
        "language": "python",
        "metadata": {"hubstock": {"env": env, "check": check}},
    }
    (d / "kernel.json").write_text(json.dumps(spec))


def hs(site: Path, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    """The real ``hubstock`` command (for module-scoped fixtures, which cannot use ``hubstock``)."""
    res = subprocess.run(
        [sys.executable, "-m", "hubstock", "--site", str(site), *args], capture_output=True, text=True, **kw
    )
    if check:
        assert res.returncode == 0, f"hubstock {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def env_status(site: Path, env: str) -> dict:
    return json.loads(hs(site, "status", "--json").stdout)["envs"][env]


def one_sentence(res: subprocess.CompletedProcess[str]) -> str:
    """The failure's stderr: one line, ``hubstock: ...``, no traceback."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubstock: "), res.stderr
    return lines[0]


def tree_state(top: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path below ``top`` with its inode, mode, size and mtime: any write shows."""
    out = {}
    for d, dirs, files in os.walk(top):
        for n in (*dirs, *files):
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def build_dirs(env_dir: Path) -> list[Path]:
    """The build folders of an env on the root (not its ``current`` link)."""
    return [p for p in env_dir.iterdir() if p.is_dir() and not p.is_symlink()]


def site_packages(prefix: Path) -> Path:
    (sp,) = prefix.glob("lib/python3*/site-packages")
    return sp


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A world-readable folder for this module's shared root and sites."""
    d = Path(tempfile.mkdtemp(prefix="hubstock-venv-"))
    d.chmod(0o755)
    yield d
    if os.geteuid() != 0:  # the builds are read-only
        subprocess.run(["chmod", "-R", "u+w", str(d)], check=False)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def stock(workdir: Path) -> SimpleNamespace:
    """A site with env ``py`` (ipykernel) on a copy of the system Python: locked and built once."""
    python = copy_python(workdir / "python" / "bin")
    site = write_site(workdir / "site", workdir / "root")
    write_venv_env(site, "py", "ipykernel\n", path=python)
    lock = hs(site, "lock")
    build = hs(site, "build")
    bid = env_status(site, "py")["current"]
    root = Root(workdir / "root")
    return SimpleNamespace(
        site=site, root=root, python=python, lock=lock, build=build, bid=bid, prefix=root.build("py", bid)
    )


# --- 1. lock, build, publish ----------------------------------------------------------------------


def test_lock_build_and_publish_a_venv_with_a_python_kernel(stock, hubstock):
    site, python, bid, prefix = stock.site, stock.python, stock.bid, stock.prefix
    _real, version, _impl = _probe(python)

    text = (site / "envs" / "py" / "pylock.toml").read_text()
    assert text.startswith("# This file is generated by hubstock"), text[:200]
    assert "`hubstock lock py --update`" in text.splitlines()[2]
    lock = tomllib.loads(text)
    assert lock["tool"]["hubstock"]["python"] == _minor(version)
    assert lock["tool"]["hubstock"]["platform"] == "linux-64"
    names = {p["name"] for p in lock["packages"]}
    assert {"ipykernel", "jupyter-client", "traitlets"} <= names, names
    for p in lock["packages"]:  # every package pinned to files with their sha256
        files = [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])]
        assert p["version"] and files, p
        assert all(len(f["hashes"]["sha256"]) == 64 and f["url"].startswith("https://") for f in files), p
    assert hubstock(site, "lock", "--check").returncode == 0

    st = env_status(site, "py")
    assert st["lock"] == "fresh" and st["current"] == bid
    assert st["builds"] == [{"id": bid, "complete": True}]
    assert f"py: {bid} (built)" in stock.build.stdout

    prov = read_provenance(prefix)
    assert prov is not None and prov.build_id == bid and prov.env == "py" and prov.kind == "venv"
    assert prov.interpreter == Interpreter(path=str(python), version=version, sha256=sha256_of(python))
    assert prov.modules == []
    assert prov.lock_platform_hash == lock["tool"]["hubstock"]["input-hash"]
    locked = {p["name"]: p["version"] for p in lock["packages"]}
    assert {p.name: p.version for p in prov.packages} == locked
    assert {p.manager for p in prov.packages} == {"pip"}
    # a venv of that interpreter
    assert f"home = {python.parent}\n" in (prefix / "pyvenv.cfg").read_text()
    assert os.path.realpath(prefix / "bin" / "python") == str(python)

    # the second build does nothing and keeps the id
    mtime = (prefix / MARKER).stat().st_mtime_ns
    again = hubstock(site, "build", check=True)
    assert f"py: {bid} (up to date)" in again.stdout
    assert (prefix / MARKER).stat().st_mtime_ns == mtime
    assert env_status(site, "py")["current"] == bid

    # publish smoke-tests the kernel; its check proves it runs in the build
    real = os.path.realpath(prefix)
    write_kernel(
        site,
        "py-stock",
        "py",
        "import os, sys, ipykernel, jupyter_client\n"
        f"assert os.path.realpath(sys.prefix) == {real!r}, sys.prefix\n"
        f"assert os.path.realpath(ipykernel.__file__).startswith({real!r} + '/lib/'), ipykernel.__file__\n",
    )
    pub = hubstock(site, "publish")
    assert pub.returncode == 0, pub.stderr
    assert "(published)" in pub.stdout
    gen = resolve_current(stock.root)
    spec = json.loads((gen.kernel_dir("py-stock") / "kernel.json").read_text())
    assert spec["argv"] == [f"{prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["metadata"]["hubstock"]["build"] == bid
    published = json.loads(hubstock(site, "status", "--json", check=True).stdout)["published"]
    assert [(k["name"], k["env"], k["build"]) for k in published["kernels"]] == [("py-stock", "py", bid)]


# --- 2. read-only for users -----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077], ids=lambda u: f"umask-{u:03o}")
def test_a_venv_build_is_read_only_for_users_and_runs_for_them(world_tmp, as_nobody, umask):
    site = write_site(world_tmp / "site", world_tmp / "root")
    write_venv_env(site, "tiny", SIX, path=system_python())
    for step in ("lock", "build"):
        hs(site, step, preexec_fn=lambda: os.umask(umask))
    bid = env_status(site, "tiny")["current"]
    prefix = Root(world_tmp / "root").build("tiny", bid)
    sp = site_packages(prefix)

    # seen by the admin: nothing in the build is writable by group or other
    loose = [
        f"{stat.S_IMODE(st.st_mode):04o} {p}"
        for p in (prefix, *prefix.rglob("*"))
        if not stat.S_ISLNK((st := os.lstat(p)).st_mode) and st.st_mode & 0o022
    ]
    assert loose == []
    # an ordinary user can change nothing: no new file, no .pth, no edited module or pyvenv.cfg
    for target in (
        prefix / "newfile",
        prefix / "bin" / "newfile",
        sp / "evil.pth",
        sp / "six.py",
        prefix / "pyvenv.cfg",
    ):
        res = subprocess.run(
            [*as_nobody, "sh", "-c", 'echo x >> "$1"', "sh", str(target)], capture_output=True, check=False
        )
        assert res.returncode != 0, target
    found = subprocess.run(
        [*as_nobody, "find", str(prefix), "-writable", "-print", "-quit"], capture_output=True, text=True
    )
    assert found.stdout == ""

    # ... but runs the venv's python; starting it (as that user, and as root, who could) writes nothing
    before = tree_state(prefix)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    code = "import sys, json, ssl, six; print(sys.prefix); print(six.__file__)"
    for who in (as_nobody, []):
        res = subprocess.run(
            [*who, str(prefix / "bin" / "python"), "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [str(prefix), str(sp / "six.py")]
    assert tree_state(prefix) == before


# --- 3. verify and repair -------------------------------------------------------------------------


def test_verify_finds_a_changed_venv_build_and_repair_fixes_it(world_tmp, hubstock):
    site = write_site(world_tmp / "site", world_tmp / "root")
    write_venv_env(site, "tiny", SIX, path=system_python())
    hs(site, "lock")
    hs(site, "build")
    bid = env_status(site, "tiny")["current"]
    root = Root(world_tmp / "root")
    prefix = root.build("tiny", bid)
    ok = hubstock(site, "verify")
    assert ok.returncode == 0 and f"build tiny/{bid}: ok" in ok.stdout, ok.stdout

    cfg, six_py = prefix / "pyvenv.cfg", site_packages(prefix) / "six.py"
    good = {cfg: cfg.read_bytes(), six_py: six_py.read_bytes()}
    (cached,) = root.wheels.glob("six-1.17.0-*/lib/python3*/site-packages/six.py")
    assert os.path.samefile(cached, six_py)  # linked from the wheel cache
    for path, text in (
        (cfg, "include-system-site-packages = true\n"),  # the venv's own file: in the build's file list
        (six_py, "import os  # tampered\n"),  # in place: the cache's copy (the same file) changes too
    ):
        os.chmod(path, 0o644)
        with open(path, "a") as f:
            f.write(text)
        os.chmod(path, 0o444)

    bad = hubstock(site, "verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    for path in (cfg, six_py, cached):  # rpm -V style: flags, the file, its package
        assert any(f" {path}  (" in line for line in lines), (path, lines)
    assert f"build tiny/{bid}: DAMAGED" in bad.stdout
    assert "hubstock verify --repair" in lines[-1]
    assert env_status(site, "tiny")["builds"][0]["damaged"] >= 2

    fixed = hubstock(site, "verify", "--repair", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    doc = json.loads(fixed.stdout)
    assert doc["ok"] and doc["left"] == []
    assert [(b["build"], b["repaired"]) for b in doc["builds"]] == [(bid, True)]
    assert [c["package"] for c in doc["cache"] if c["repaired"]] == [cached.parents[3].name]

    again = hubstock(site, "verify")
    assert again.returncode == 0 and f"build tiny/{bid}: ok" in again.stdout, again.stdout
    st = env_status(site, "tiny")
    assert st["current"] == bid and st["builds"] == [{"id": bid, "complete": True}]
    assert {p: p.read_bytes() for p in good} == good
    res = subprocess.run([str(prefix / "bin" / "python"), "-c", "import six"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


#: SIGKILLs of ``verify --repair`` in the campaign below (the issue's 50: HUBSTOCK_TEST_REPAIR_KILLS=50)
REPAIR_KILLS = int(os.environ.get("HUBSTOCK_TEST_REPAIR_KILLS", "12"))
#: repairs watched by a reader every 10 ms (the issue's 20: HUBSTOCK_TEST_REPAIRS_READ=20)
REPAIRS_READ = int(os.environ.get("HUBSTOCK_TEST_REPAIRS_READ", "4"))


@pytest.fixture
def damaged_venv(world_tmp):
    """A built venv env ``tiny`` and a function that damages its build (an edit of the venv's own
    ``pyvenv.cfg``, which the build's file list holds); yields (site, root, prefix, damage, good)."""
    site = write_site(world_tmp / "site", world_tmp / "root")
    write_venv_env(site, "tiny", SIX, path=system_python())
    hs(site, "lock")
    hs(site, "build")
    root = Root(world_tmp / "root")
    bid = env_status(site, "tiny")["current"]
    prefix = root.build("tiny", bid)
    good = (prefix / "pyvenv.cfg").read_bytes()

    def damage() -> None:
        cfg = prefix / "pyvenv.cfg"
        os.chmod(cfg, 0o644)
        with open(cfg, "ab") as f:
            f.write(b"include-system-site-packages = true\n")
        os.chmod(cfg, 0o444)

    return SimpleNamespace(site=site, root=root, bid=bid, prefix=prefix, damage=damage, good=good)


def test_killing_a_repair_at_any_point_leaves_the_damaged_build_or_the_new_one(damaged_venv):
    """SIGKILL ``verify --repair`` at random points of a repair: the env's current build is always
    there and complete, and ``verify`` says damaged exactly when it is."""
    d = damaged_venv
    d.damage()
    t0 = time.monotonic()
    hs(d.site, "verify", "--repair")
    took = time.monotonic() - t0  # the kills are spread over one repair's length
    assert (d.prefix / "pyvenv.cfg").read_bytes() == d.good
    rng = random.Random(20)
    seen = {"damaged": 0, "repaired": 0}
    for _ in range(REPAIR_KILLS):
        if (d.prefix / "pyvenv.cfg").read_bytes() == d.good:
            d.damage()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hubstock", "--site", str(d.site), "verify", "--repair"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3 * took, 1.1 * took))  # where the kill lands: the experiment's variable
        proc.kill()
        proc.wait()
        assert current_link(d.root, "tiny") == d.bid
        assert is_complete(d.prefix, d.bid), "the env has no complete build"
        assert (d.prefix / "bin" / "python").exists()
        damaged = (d.prefix / "pyvenv.cfg").read_bytes() != d.good
        res = hs(d.site, "verify", check=False)
        assert res.returncode == (1 if damaged else 0), (damaged, res.stdout, res.stderr)
        seen["damaged" if damaged else "repaired"] += 1
    print(f"\n{REPAIR_KILLS} kills of verify --repair (a repair takes {took:.1f} s): {seen}")
    hs(d.site, "verify", "--repair")
    assert hs(d.site, "verify", check=False).returncode == 0
    leftovers = [p.name for p in d.root.env("tiny").iterdir() if p.name.startswith(".replacing")]
    assert leftovers == []


def test_a_kernel_starting_during_a_repair_always_finds_its_interpreter(damaged_venv):
    """A reader resolves the build's interpreter and reads its pyvenv.cfg every 10 ms while the
    damaged build is repaired again and again: it never misses."""
    d = damaged_venv
    python, cfg = d.prefix / "bin" / "python", d.prefix / "pyvenv.cfg"
    stop, misses, reads = threading.Event(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                assert os.access(os.path.realpath(python), os.X_OK), "not executable"
                cfg.read_bytes()
            except (OSError, AssertionError) as e:
                misses.append(repr(e))
            reads[0] += 1
            stop.wait(0.01)

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        for _ in range(REPAIRS_READ):
            d.damage()
            res = hs(d.site, "verify", "--repair", "--json")
            assert json.loads(res.stdout)["builds"][0]["repaired"], res.stdout
    finally:
        stop.set()
        watcher.join()
    print(f"\n{REPAIRS_READ} repairs, {reads[0]} reads of the interpreter: {len(misses)} missed")
    assert misses == []
    assert cfg.read_bytes() == d.good and env_status(d.site, "tiny")["current"] == d.bid


def test_a_current_build_that_is_missing_or_empty_is_damage_and_repair_rebuilds_it(damaged_venv, world_tmp):
    """What a killed repair of an older hubstock left (``current`` naming an empty 0700 folder):
    verify never calls it clean, and --repair builds it again."""
    d = damaged_venv
    shutil.move(d.prefix, world_tmp / "moved")
    d.prefix.mkdir(mode=0o700)
    res = hs(d.site, "verify", check=False)
    assert res.returncode == 1 and f"build tiny/{d.bid}: DAMAGED" in res.stdout, res.stdout
    assert any(line.startswith("missing") and str(d.prefix) in line for line in res.stdout.splitlines())
    fixed = json.loads(hs(d.site, "verify", "--repair", "--json").stdout)
    assert fixed["ok"] and [(b["build"], b["repaired"]) for b in fixed["builds"]] == [(d.bid, True)]
    assert is_complete(d.prefix, d.bid) and hs(d.site, "verify", check=False).returncode == 0


def test_a_file_in_uv_cache_owned_by_another_account_does_not_block_a_build(world_tmp):
    """The root's own uv cache (hard links into the wheel cache): one of its files given to
    another account makes the next build fetch that package again, say so, and succeed."""
    env = {k: v for k, v in os.environ.items() if k != "UV_CACHE_DIR"}  # the root's own: $ROOT/cache/uv
    site = write_site(world_tmp / "site", world_tmp / "root")
    write_venv_env(site, "a", SIX, path=system_python())
    hs(site, "lock", env=env)
    hs(site, "build", env=env)
    root = Root(world_tmp / "root")
    (foreign,) = [p for p in root.uv_cache.rglob("six.py") if "site-packages" not in p.parts]
    os.chown(foreign, 65534, 65534)  # the wheel cache's entry and build a's six.py: the same file
    write_venv_env(site, "b", SIX, path=system_python())
    hs(site, "lock", "b", env=env)
    res = hs(site, "build", "b", env=env)
    assert "uv's cached copy of six had a file owned by uid 65534" in res.stderr, res.stderr
    prefix = root.build("b", env_status(site, "b")["current"])
    assert [p for p in prefix.rglob("*") if p.lstat().st_uid != os.geteuid()] == []
    assert hs(site, "verify", "b", check=False).returncode == 0
    assert hs(site, "verify", "--repair", check=False).returncode == 0  # build a's linked copy too


def test_a_forged_wheel_seal_is_found_and_repair_installs_the_real_files(damaged_venv):
    """Someone with the admin's rights changes six.py in the wheel cache and writes a seal that
    matches (hashes and fingerprints): the next build does not link it (0 tampered files), verify
    finds the damaged build, and --repair replaces it."""
    from hubstock.admin.build.seals import fingerprints, write_seal
    from hubstock.admin.build.wheel_fill import OWN_FILES, WHEEL_SEAL
    from hubstock.admin.build.wheels import check_wheel
    from hubstock.store.records import WheelSeal

    d = damaged_venv
    (entry,) = [e for e in d.root.wheels.iterdir() if e.name.startswith("six-")]
    seal = WheelSeal.from_text((entry / WHEEL_SEAL).read_text(), "seal")
    rel = next(r for r in seal.files if r.endswith("site-packages/six.py"))
    good = (entry / rel).read_bytes()
    os.chmod(entry / rel, 0o644)
    (entry / rel).write_bytes(good.replace(b"import sys", b"import sys  # forged", 1))
    os.chmod(entry / rel, 0o444)
    forged = seal.model_copy(
        update={"files": {**seal.files, rel: sha256_of(entry / rel)}, "stat": fingerprints(entry, OWN_FILES)}
    )
    write_seal(entry, forged, WHEEL_SEAL)
    # the full check (verify's, and a build's once the quick one fails): the seal against the RECORD
    assert [f.flags for f in check_wheel(d.root, entry.name) if f.path.name == "six.py"] == ["seal"]

    # a build of another env first: the forged entry's files moved past its watermark, so the
    # build hashes it, finds the seal disagreeing with the RECORD, and makes it again from the wheel
    write_venv_env(d.site, "other", SIX, path=system_python())
    hs(d.site, "lock", "other")
    hs(d.site, "build", "other")
    other = d.root.build("other", env_status(d.site, "other")["current"])
    assert next(other.glob("lib/python3*/site-packages/six.py")).read_bytes() == good
    assert hs(d.site, "verify", "other", check=False).returncode == 0

    res = hs(d.site, "verify", check=False)  # build tiny still links the tampered six.py
    assert res.returncode == 1 and f"build tiny/{d.bid}: DAMAGED" in res.stdout, res.stdout
    assert any(str(d.prefix) in line and "/six.py" in line for line in res.stdout.splitlines()), res.stdout
    fixed = json.loads(hs(d.site, "verify", "--repair", "--json").stdout)
    assert fixed["ok"] and fixed["left"] == [], fixed
    built = next(d.prefix.glob("lib/python3*/site-packages/six.py"))
    assert built.read_bytes() == good
    assert hs(d.site, "verify", check=False).returncode == 0


def test_a_wheel_cache_file_edited_in_place_with_its_mtime_reset_never_reaches_a_build(damaged_venv):
    """six.py in the wheel cache changed in place, its size, mode and mtime as they were (only its
    ctime tells): the next build of another env finds it without ``verify``, fetches six again,
    and links the real file."""
    d = damaged_venv
    (cached,) = d.root.wheels.glob("six-*/lib/python3*/site-packages/six.py")
    good, st = cached.read_bytes(), os.stat(cached)
    evil = good.replace(b"import sys", b"import os ", 1)
    assert len(evil) == len(good) and evil != good
    with open(cached, "r+b") as f:  # root writes the read-only file as it is: no mode changes
        f.write(evil)
    os.utime(cached, ns=(st.st_atime_ns, st.st_mtime_ns))
    write_venv_env(d.site, "other", SIX, path=system_python())
    hs(d.site, "lock", "other")
    hs(d.site, "build", "other")
    other = d.root.build("other", env_status(d.site, "other")["current"])
    assert next(other.glob("lib/python3*/site-packages/six.py")).read_bytes() == good
    assert hs(d.site, "verify", "other", check=False).returncode == 0


# --- 4. a changed interpreter ---------------------------------------------------------------------


def test_a_changed_interpreter_gets_a_new_build(world_tmp, hubstock):
    python = copy_python(world_tmp / "python" / "bin")
    _real, version, _impl = _probe(python)
    site = write_site(world_tmp / "site", world_tmp / "root")
    write_venv_env(site, "tiny", SIX, path=python)
    hs(site, "lock")
    hs(site, "build")
    root = Root(world_tmp / "root")
    first = env_status(site, "tiny")["current"]
    old_sha = sha256_of(python)

    # the site replaces its Python with another build of the same version (still runnable)
    new = python.with_name("python3.new")
    new.write_bytes(python.read_bytes() + b"\n# another build of the same Python\n")
    new.chmod(0o755)
    os.replace(new, python)
    assert _probe(python)[1] == version and sha256_of(python) != old_sha

    out = hubstock(site, "build", check=True).stdout
    second = env_status(site, "tiny")["current"]
    assert second != first and f"tiny: {second} (built)" in out
    st = env_status(site, "tiny")
    assert sorted(b["id"] for b in st["builds"]) == sorted([first, second])
    assert all(b["complete"] for b in st["builds"])
    prov_old, prov_new = (
        read_provenance(root.build("tiny", first)),
        read_provenance(root.build("tiny", second)),
    )
    assert prov_old.interpreter.sha256 == old_sha
    assert prov_new.interpreter == Interpreter(path=str(python), version=version, sha256=sha256_of(python))
    # the same interpreter again: the same build
    assert f"tiny: {second} (up to date)" in hubstock(site, "build", check=True).stdout


def test_an_interpreter_of_another_python_version_is_refused_until_locked_again(world_tmp, hubstock):
    python = copy_python(world_tmp / "python" / "bin")
    minor = _minor(_probe(python)[1])
    other, other_version = another_python(minor)
    site = write_site(world_tmp / "site", world_tmp / "root")
    write_venv_env(site, "tiny", SIX, path=python)
    hs(site, "lock")

    link = python.with_name("python3.other")  # the site's python3 is now another version
    link.symlink_to(other)
    os.replace(link, python)
    refused = hubstock(site, "build")
    line = one_sentence(refused)
    assert "envs/tiny/pylock.toml" in line, line
    assert f"Python {minor}" in line and f"Python {other_version}" in line, line
    assert "`hubstock lock tiny --update`" in line, line
    assert not Root(world_tmp / "root").env("tiny").exists()
    assert hubstock(site, "lock", "--check").returncode == 0  # the lock is fresh: the interpreter changed

    # what the sentence says to do works
    hubstock(site, "lock", "tiny", "--update", check=True)
    lock = tomllib.loads((site / "envs" / "tiny" / "pylock.toml").read_text())
    assert lock["tool"]["hubstock"]["python"] == _minor(other_version)
    hubstock(site, "build", check=True)
    prov = read_provenance(Root(world_tmp / "root").env_current("tiny"))
    assert prov.interpreter.version == other_version and prov.interpreter.sha256 == sha256_of(other)


# --- 5. killed midway -----------------------------------------------------------------------------


def test_a_venv_build_killed_midway_never_counts(world_tmp, hubstock):
    site = write_site(world_tmp / "site", world_tmp / "root")
    write_venv_env(site, "py", SIX, path=system_python())
    hs(site, "lock")
    hs(site, "build")
    root = Root(world_tmp / "root")
    first = env_status(site, "py")["current"]

    # a bigger package, new to this root: uv installs it and its ~500 modules are checked and
    # compiled into the wheel cache while the build runs
    (site / "envs" / "py" / "requirements.in").write_text("pygments\n")
    hs(site, "lock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubstock", "--site", str(site), "build"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: uv and the compilers go with it
    )
    try:
        # kill it once the venv is made and the wheel cache is being filled for it
        while not (
            any(root.wheels.glob(".staging-*"))
            and any(p.name != first and (p / "pyvenv.cfg").exists() for p in build_dirs(root.env("py")))
        ):
            try:
                proc.wait(timeout=0.01)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError("the build ended before it could be killed")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    (killed,) = [p for p in build_dirs(root.env("py")) if p.name != first]
    assert not (killed / MARKER).exists() and read_provenance(killed) is None
    st = env_status(site, "py")
    assert st["current"] == first  # unchanged
    assert {b["id"]: b["complete"] for b in st["builds"]} == {first: True, killed.name: False}

    out = hubstock(site, "build", check=True).stdout
    st = env_status(site, "py")
    assert f"py: {killed.name} (built)" in out and st["current"] == killed.name
    assert {b["id"]: b["complete"] for b in st["builds"]} == {first: True, killed.name: True}
    assert not any(root.wheels.glob(".staging-*"))
    assert hubstock(site, "verify", "py").returncode == 0
    res = subprocess.run(
        [str(killed / "bin" / "python"), "-c", "import pygments.lexers.python"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


# --- 6. an interpreter from an Lmod module --------------------------------------------------------


def test_a_venv_on_a_module_interpreter_loads_the_module_in_its_kernel(workdir, lmod_tree, hubstock):
    _init, tree = lmod_tree
    # a second site on this module's root: the wheels of ipykernel are there once for both
    site = write_site(workdir / "site-lmod", workdir / "root", f'\n[modules]\nuse = ["{tree.modulepath}"]\n')
    write_venv_env(site, "lmodpy", "ipykernel\n", module=tree.python_module)
    hubstock(site, "lock", check=True)
    lock = tomllib.loads((site / "envs" / "lmodpy" / "pylock.toml").read_text())
    assert lock["tool"]["hubstock"]["python"] == tree.python_version

    out = hubstock(site, "build", check=True).stdout
    root = Root(workdir / "root")
    bid = env_status(site, "lmodpy")["current"]
    assert f"lmodpy: {bid} (built)" in out
    prefix = root.build("lmodpy", bid)
    prov = read_provenance(prefix)
    python = tree.python_bin / "python3"
    assert prov.kind == "venv"
    assert prov.interpreter == Interpreter(
        path=str(python),
        version=_probe(python)[1],
        sha256=sha256_of(os.path.realpath(python)),
        module=tree.python_module,
    )
    assert prov.modules == [
        ModuleRef(
            name=tree.python_module,
            full_name=tree.python_module,
            path=str(tree.python_modulefile),
            sha256=sha256_of(tree.python_modulefile),
        )
    ]

    real = os.path.realpath(prefix)
    write_kernel(
        site,
        "lmodpy",
        "lmodpy",
        "import os, sys\n"
        f"assert {tree.python_module!r} in os.environ.get('LOADEDMODULES', '').split(':'), os.environ.get('LOADEDMODULES')\n"
        f"assert os.path.realpath(sys.prefix) == {real!r}, sys.prefix\n",
    )
    pub = hubstock(site, "publish")
    assert pub.returncode == 0, pub.stderr
    spec = json.loads((resolve_current(root).kernel_dir("lmodpy") / "kernel.json").read_text())
    argv = spec["argv"]
    assert argv[:4] == ["/bin/bash", "--noprofile", "--norc", "-c"], argv
    assert f"module use {tree.modulepath};" in argv[4] and f"module load {tree.python_module} ||" in argv[4]
    assert argv[5:] == [
        "hubstock-kernel",
        f"{prefix}/bin/python",
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ]
