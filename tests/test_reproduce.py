"""``hubstock reproduce`` (issue 25): a build made again from the lock kept for it, at its own
path in a mount namespace of its own, is compared file by file with the record the build left;
a build gc removed is made again from its record alone and put back in place, where verify
finds it whole. Real builds: conda packages from the offline channel (py-rattler), the pip part
and a venv env with uv."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.test_publish import KERNEL, add_kernel, py_env, run_in_kernel
from tests.test_venv_build import system_python, write_venv_env

from hubstock.admin.build.reproduce import Difference, compare, why_changed
from hubstock.admin.build.verify import verify_build
from hubstock.store.builds import read_build_record
from hubstock.store.root import Root

pytestmark = pytest.mark.integration


def _reproduce(hubstock, site, *args: str) -> tuple[int, dict]:
    res = hubstock(site, "reproduce", *args, "--json")
    assert "Traceback" not in res.stderr, res.stderr
    try:
        return res.returncode, json.loads(res.stdout)
    except ValueError:
        raise AssertionError(f"reproduce said no JSON:\n{res.stdout}\n{res.stderr}") from None


def _current(hubstock, site, env: str) -> str:
    return json.loads(hubstock(site, "status", "--json", check=True).stdout)["envs"][env]["current"]


def test_a_conda_build_with_a_pip_part_and_a_venv_build_are_reproduced_identical(make_site, hubstock):
    site = make_site({"py": py_env("0.1")})
    write_venv_env(site.dir, "tiny", "six\n", path=system_python())
    add_kernel(site, "stock", KERNEL)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    hubstock(site, "publish", check=True)
    root = Root(site.root)
    py, tiny = _current(hubstock, site, "py"), _current(hubstock, site, "tiny")
    record = read_build_record(root, "py", py)
    assert record is not None and record.kind == "conda" and "conda-lock" in record.lock_name
    assert any(p.endswith(".pyc") for p in record.files), "the record holds the byte-code too"
    before = {p: os.lstat(p).st_mtime_ns for p in (root.build("py", py), root.build("tiny", tiny))}

    code, doc = _reproduce(hubstock, site, "0001")  # every build of the generation (its kernel's)
    assert code == 0, [(b["env"], b["differences"][:12], len(b["differences"])) for b in doc["builds"]]
    got = {(b["env"], b["build"]): b for b in doc["builds"]}
    code, doc = _reproduce(hubstock, site, tiny)  # a build by its id alone
    assert code == 0, doc["builds"][0]["differences"][:12]
    got.update({(b["env"], b["build"]): b for b in doc["builds"]})
    assert {("py", py), ("tiny", tiny)} <= set(got), got
    for key in (("py", py), ("tiny", tiny)):
        b = got[key]
        assert b["identical"] and not b["gone"] and b["files"] > 10, b
    # the builds themselves were not touched, and nothing of the rebuilds is left
    assert {p: os.lstat(p).st_mtime_ns for p in before} == before
    assert not list(root.env("py").glob(".reproducing-*"))
    assert not verify_build(root, "py", py)


def test_a_build_gc_removed_is_reproduced_from_its_record_and_restored(make_site, hubstock, world_tmp):
    site = make_site({"py": py_env("0.1")})
    (site.dir / "hubstock.toml").write_text(
        (site.dir / "hubstock.toml").read_text() + "[publish]\nkeep_previous_builds = 0\n"
    )
    add_kernel(site, "stock", KERNEL)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    hubstock(site, "publish", check=True)
    root = Root(site.root)
    old = _current(hubstock, site, "py")
    (site.envs_dir / "py" / "environment.yml").write_text(py_env("0.2"))
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    hubstock(site, "publish", check=True)
    hubstock(site, "gc", "--keep", "1", check=True)
    assert not root.build("py", old).exists() and not list(root.pkgs.glob("demo-c-0.1-*"))

    # kept elsewhere first: the record alone (the lock of demo-c 0.1, gone from the site's envs/)
    code, doc = _reproduce(hubstock, site, old, "--into", str(world_tmp / "again"))
    (b,) = doc["builds"]
    assert code == 0 and b["identical"] and b["gone"] and not b["restored"], b
    assert (world_tmp / "again" / f"py-{old}" / ".hubstock-complete").is_file()
    assert not root.build("py", old).exists(), "its place was only borrowed while it was made"

    # then back in its place, and published again: the March notebook's kernel, beside today's
    code, doc = _reproduce(hubstock, site, f"py/{old}", "--publish")
    (b,) = doc["builds"]
    assert code == 0 and b["identical"] and b["restored"] and b["pinned"] and b["generation"] == "0003", b
    assert (root.build("py", old) / ".hubstock-complete").read_text().strip() == old
    assert verify_build(root, "py", old) == [], "verify finds it equal to its recorded files"
    jupyter = root.current / "share" / "jupyter"
    spec = json.loads((jupyter / "kernels" / f"stock-{old[:8]}" / "kernel.json").read_text())
    assert spec["display_name"] == f"Python (stock) (build {old[:8]}, reproduced)", spec
    code_ = "import demo_c; print(demo_c.VERSION)"
    assert run_in_kernel(jupyter, f"stock-{old[:8]}", code_) == "0.1"
    assert run_in_kernel(jupyter, "stock", code_) == "0.2"
    hubstock(site, "gc", "--keep", "1", check=True)  # the generation that names it keeps it
    assert root.build("py", old).is_dir()
    # withdrawn: the next generation has it no more
    res = hubstock(site, "reproduce", f"py/{old}", "--unpublish", check=True)
    assert "withdrawn in generation 0004" in res.stdout, res.stdout
    assert not (root.current / "share" / "jupyter" / "kernels" / f"stock-{old[:8]}").exists()
    res = hubstock(site, "reproduce", f"py/{old}", "--unpublish")
    assert res.returncode != 0 and "has kernels of its own from `hubstock reproduce --publish`" in res.stderr


def test_what_cannot_be_reproduced_is_one_sentence(make_site, hubstock):
    site = make_site({"py": py_env("0.1")})
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    for args, says in (
        (["nosuch"], "is no build and no generation"),
        (["py/0123456789abcdef"], "is no build and no generation"),
        ([f"py/{_current(hubstock, site, 'py')}", "--restore"], "nothing to restore"),
    ):
        res = hubstock(site, "reproduce", *args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode != 0 and len(lines) == 1 and says in lines[0], (args, res.stderr)


def test_a_difference_is_named_with_what_can_be_told_of_it(tmp_path: Path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_text(f"#!{tmp_path}/bin/python\n")
    (tmp_path / "stamp.txt").write_text("made 2026-12-04T17:00:00\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x.py").write_text("/tmp/hubstock-pip-x/x.py\n")
    recorded = {"bin/tool": "a", "stamp.txt": "b", "lib/x.py": "c", "gone.txt": "d", "ln": "link:x"}
    rebuilt = {"bin/tool": "A", "stamp.txt": "B", "lib/x.py": "C", "new.txt": "e", "ln": "link:y"}
    got = {d.path: d for d in compare(recorded, rebuilt, tmp_path, str(tmp_path))}
    assert got["gone.txt"] == Difference("gone.txt", "missing", "the rebuild has no such file")
    assert got["new.txt"].what == "added"
    assert "names the build's path" in got["bin/tool"].why
    assert "date and time" in got["stamp.txt"].why
    assert "temporary path" in got["lib/x.py"].why
    assert "points elsewhere" in got["ln"].why
    assert "byte-code" in why_changed("a/__pycache__/m.cpython-311.pyc", "1", "2", tmp_path / "nope", "/x")


@pytest.mark.hub
def test_every_build_of_the_demo_site_is_reproduced_identical(hub_site, hubstock):
    """The hub site (the demo's envs: the server and python conda envs with their pip parts, and
    the venv and module kinds on the Lmod tree) as published: each of its builds again, identical."""
    root = Root(hub_site.parent / "root")
    assert root.current.is_symlink()
    code, doc = _reproduce(hubstock, hub_site, "current")
    kinds = {b["env"]: b for b in doc["builds"]}
    assert code == 0, {e: b["differences"][:5] for e, b in kinds.items() if not b["identical"]}
    assert {"server", "python", "venv", "r"} <= set(kinds), sorted(kinds)
    assert all(b["identical"] and not b["gone"] for b in doc["builds"])
