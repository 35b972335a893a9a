"""Integration: warm builds link what is already verified, and compile only what they wrote.

A pip package enters ``$ROOT/cache/wheels/`` once (uv installs it, every file is checked against
its RECORD, its modules are byte-compiled, the entry is sealed); every build that needs it links
its files and byte-code from there, and only its console scripts are written for the build's own
prefix. An entry that no longer matches its seal never reaches a build: it is installed again,
and the builds that link its files are checked and, if they changed with it, replaced. A conda
package that ships byte-code keeps it; a source that does not compile is reported, not fatal.
``status`` remembers locks it found fresh, and never a changed one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rigs.channel import add_package, file_url

from hubstock.store.root import Root

pytestmark = pytest.mark.integration

ENVS = {
    "one": "dependencies:\n  - python\n  - demo-c 0.1\n  - pip:\n    - jupyter_core\n    - six==1.17.0\n",
    "two": "dependencies:\n  - python\n  - demo-a\n  - pip:\n    - jupyter_core\n    - six==1.17.0\n",
}
EVIL = b"raise SystemExit('tampered')  # not what the wheel holds\n"


def _current(hubstock, site) -> dict[str, str]:
    st = json.loads(hubstock(site, "status", "--json", check=True).stdout)["envs"]
    return {env: doc["current"] for env, doc in st.items()}


def _six(prefix: Path) -> Path:
    (path,) = prefix.glob("lib/python3*/site-packages/six.py")
    return path


def _entry(root: Root, name: str) -> Path:
    (entry,) = root.wheels.glob(f"{name}-*-python3*")
    return entry


def test_builds_link_the_pip_part_and_its_byte_code_from_the_wheel_cache(make_site, hubstock):
    site = make_site(ENVS)
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    first = hubstock(site, "-v", "build", "one", check=True)
    assert "adding" in first.stderr and "to the wheel cache" in first.stderr
    for step in (
        "pip package(s) with uv",
        "against their wheels' RECORD",
        "byte-compiling",
        "wheel cache entries",
    ):
        assert step in first.stderr, first.stderr  # the pip step says what it is doing (issue 22)
    second = hubstock(site, "-v", "build", "two", check=True)
    assert "to the wheel cache" not in second.stderr.replace("from the wheel cache", "")  # nothing installed
    builds = {env: root.build(env, bid) for env, bid in _current(hubstock, site).items()}

    entry = _entry(root, "six")
    (cached,) = entry.glob("lib/python3*/site-packages/six.py")
    (cached_pyc,) = entry.glob("lib/python3*/site-packages/__pycache__/six.*.pyc")
    assert cached_pyc.read_bytes()[4:8] == (0b11).to_bytes(4, "little")  # checked-hash byte-code
    for prefix in builds.values():
        six = _six(prefix)
        assert os.stat(six).st_ino == os.stat(cached).st_ino  # a hard link, no copy
        (pyc,) = six.parent.glob("__pycache__/six.*.pyc")
        assert os.stat(pyc).st_ino == os.stat(cached_pyc).st_ino  # byte-code from the cache too
        assert os.stat(six).st_mode & 0o222 == 0

    # console scripts name their own build's python, and the RECORD says what they hold
    for prefix in builds.values():
        script = prefix / "bin" / "jupyter"
        assert script.read_text().splitlines()[0] == f"#!{prefix}/bin/python"
        assert os.stat(script).st_nlink == 1
        out = subprocess.run([str(script), "--paths", "--json"], capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["data"]
    assert hubstock(site, "verify").returncode == 0

    # python imports from the read-only build without writing byte-code
    probe = subprocess.run(
        [str(builds["two"] / "bin" / "python"), "-c", "import six, jupyter_core; print(six.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    assert probe.stdout.strip() == str(_six(builds["two"]))


def _tamper(kind: str, entry: Path) -> None:
    (six,) = entry.glob("lib/python3*/site-packages/six.py")
    os.chmod(six.parent, 0o755)
    if kind == "edited-in-place":
        os.chmod(six, 0o644)
        with open(six, "r+b") as f:  # the same inode: every build that links it changes too
            f.write(EVIL)
    elif kind == "replaced":
        six.unlink()
        six.write_bytes(EVIL)
    elif kind == "an-added-file":
        (six.parent / "sitecustomize.py").write_bytes(EVIL)
    elif kind == "unsealed":
        os.chmod(entry, 0o755)
        (entry / ".hubstock-sealed.json").unlink()
    else:  # pragma: no cover
        raise AssertionError(kind)


SIX_ENVS = {
    "one": "dependencies:\n  - python\n  - demo-c 0.1\n  - pip:\n    - six==1.17.0\n",
    "two": "dependencies:\n  - python\n  - demo-a\n  - pip:\n    - six==1.17.0\n",
}


@pytest.mark.parametrize("kind", ["edited-in-place", "replaced", "an-added-file", "unsealed"])
def test_a_damaged_wheel_entry_never_reaches_a_build(make_site, hubstock, world_tmp, monkeypatch, kind):
    # uv's own cache, not the shared one: an entry shares its files with the uv cache that filled it
    # (hard links), so a change in place changes uv's copy as well (the build then fetches it again)
    monkeypatch.setenv("UV_CACHE_DIR", str(world_tmp / "uv"))
    site = make_site(SIX_ENVS)
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", "one", check=True)
    one = _current(hubstock, site)["one"]
    good = _six(root.build("one", one)).read_bytes()

    _tamper(kind, _entry(root, "six"))

    check = json.loads(hubstock(site, "verify", "--json").stdout)
    assert [c["package"] for c in check["cache"] if not c["ok"]] == [_entry(root, "six").name]
    damaged = [b["build"] for b in check["builds"] if not b["ok"]]
    assert damaged == ([one] if kind == "edited-in-place" else [])

    res = hubstock(site, "build", "--json")  # env two needs six: the entry is installed again
    assert res.returncode == 0, res.stderr
    done = {b["env"]: b for b in json.loads(res.stdout)["builds"]}
    assert done["two"]["built"] and done["one"]["built"] == (kind == "edited-in-place")
    assert done["one"]["build"] == one
    for env, bid in _current(hubstock, site).items():
        assert _six(root.build(env, bid)).read_bytes() == good, env  # 0 tampered installs
    assert _six(_entry(root, "six")).read_bytes() == good
    assert hubstock(site, "verify").returncode == 0


def test_status_remembers_fresh_locks_and_never_a_changed_one(make_site, hubstock, world_tmp):
    site = make_site({"one": ENVS["one"]})
    env = {**os.environ, "XDG_CACHE_HOME": str(world_tmp / "cache")}
    hubstock(site, "lock", check=True)
    for _ in range(2):  # read, then remembered
        st = json.loads(hubstock(site, "status", "--json", check=True, env=env).stdout)
        assert st["envs"]["one"]["lock"] == "fresh"
    assert (world_tmp / "cache" / "hubstock" / "fresh-locks.json").is_file()
    spec = site.envs_dir / "one" / "environment.yml"
    spec.write_text(spec.read_text().replace("demo-c 0.1", "demo-c"))
    st = json.loads(hubstock(site, "status", "--json", check=True, env=env).stdout)
    assert st["envs"]["one"]["lock"] == "stale"
    spec.write_text(ENVS["one"])  # back as it was: fresh again
    st = json.loads(hubstock(site, "status", "--json", check=True, env=env).stdout)
    assert st["envs"]["one"]["lock"] == "fresh"


def test_byte_code_comes_with_the_packages_and_only_what_the_build_wrote_is_compiled(
    make_site, hubstock, channel, world_tmp
):
    ch = shutil.copytree(channel, world_tmp / "channel")
    files = {"site-packages/demo_py2/__init__.py": "", "site-packages/demo_py2/old.py": "print 'py2'\n"}
    add_package(ch, "demo-py2", "1.0", noarch="python", depends=["python >=3.11"], files=files)
    settings = f'root = "{world_tmp / "root"}"\nchannels = ["{file_url(ch)}"]\n'
    site = make_site({"demo": "dependencies:\n  - python\n  - demo-py2\n"}, settings=settings)
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    res = hubstock(site, "-v", "build", check=True)
    assert "1 not compilable" in res.stderr and "old.py" in res.stderr  # reported, not fatal
    prefix = root.build("demo", _current(hubstock, site)["demo"])
    (python_pkg,) = [p for p in root.pkgs.glob("python-3*") if p.is_dir()]
    (lib,) = prefix.glob("lib/python3.*")
    # the interpreter's own checked-hash byte-code: linked from the cache, never rewritten
    (shipped,) = (python_pkg / "lib" / lib.name / "__pycache__").glob("os.*.pyc")
    assert os.stat(lib / "__pycache__" / shipped.name).st_ino == os.stat(shipped).st_ino
    # a source whose prefix the installer rewrote gets byte-code of its own
    (sysconfig,) = lib.glob("_sysconfigdata_*.py")
    (pyc,) = (lib / "__pycache__").glob(f"{sysconfig.stem}.*.pyc")
    assert os.stat(pyc).st_nlink == 1
    # the noarch package's modules get theirs from the build
    assert list((lib / "site-packages" / "demo_py2" / "__pycache__").glob("__init__.*.pyc"))
    assert hubstock(site, "verify").returncode == 0


def test_gc_removes_wheel_entries_no_kept_build_uses(make_site, hubstock):
    site = make_site({"one": SIX_ENVS["one"]})
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    old = _entry(root, "six")
    spec = site.envs_dir / "one" / "environment.yml"
    spec.write_text(SIX_ENVS["one"].replace("six==1.17.0", "six==1.16.0"))
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    assert len(list(root.wheels.glob("six-*"))) == 2
    done = json.loads(hubstock(site, "gc", "--json", check=True).stdout)
    assert old.name in done["removed"]["packages"]
    assert not old.exists() and [p.name for p in root.wheels.glob("six-*")] == [_entry(root, "six").name]
    assert "1.16.0" in _entry(root, "six").name
    assert hubstock(site, "verify").returncode == 0
