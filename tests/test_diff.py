"""Integration: ``hubstock diff`` on real builds and publishes, and the lock copy every build keeps.

Three generations of one site:

1. env ``py`` (python, demo-b 1.0, demo-c 0.1, pip six 1.16.0) behind kernel ``stock``;
2. demo-c upgraded to 0.2, demo-b removed, demo-d 1.0 added (from a second channel),
   six upgraded to 1.17.0 (PyPI), a default setting changed: the previous build's
   kernel stays as ``stock-<build8>``;
3. kernel ``stock`` renamed ``stock-py`` (same build): the pinned kernel goes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from rigs.channel import add_package, file_url, reindex

from hubstock.store.buildlock import LOCK_COPY, read_lock_copy
from hubstock.store.root import MANIFEST, Root

pytestmark = pytest.mark.integration

KERNEL = {
    "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python (stock)",
    "language": "python",
    "metadata": {"hubstock": {"env": "py", "check": "import demo_c"}},
}
GEN1 = """\
dependencies:
  - python
  - demo-b 1.0
  - demo-c 0.1
  - pip:
    - ipykernel
    - six==1.16.0
"""
GEN2 = """\
dependencies:
  - python
  - demo-c 0.2
  - demo-d 1.0
  - pip:
    - ipykernel
    - six==1.17.0
"""


@pytest.fixture
def extra_channel(world_tmp: Path) -> Path:
    """A second channel, with one package the first one lacks."""
    ch = world_tmp / "extra-channel"
    ch.mkdir()
    reindex(ch)
    add_package(ch, "demo-d", "1.0", files={"share/demo-d/VERSION": "1.0\n"})
    return ch


def _status(hubstock, site) -> dict:
    return json.loads(hubstock(site, "status", "--json", check=True).stdout)


def _publish(hubstock, site, spec: str) -> str:
    (site.envs_dir / "py" / "environment.yml").write_text(spec)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    hubstock(site, "publish", check=True)
    return _status(hubstock, site)["envs"]["py"]["current"]


def _kernel(site, name: str, spec: dict) -> None:
    d = site.dir / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "kernel.json").write_text(json.dumps(spec))


def test_diff_reports_each_change_exactly(make_site, hubstock, channel_url, extra_channel, world_tmp):
    settings = f'root = "{world_tmp / "root"}"\nchannels = ["{channel_url}", "{file_url(extra_channel)}"]\n'
    site = make_site({"py": GEN1}, settings=settings)
    _kernel(site, "stock", KERNEL)
    (site.dir / "extensions").mkdir()
    (site.dir / "extensions" / "overrides.json").write_text(
        json.dumps({"@jupyterlab/notebook-extension:tracker": {"codeCellConfig": {"lineNumbers": False}}})
    )
    root = Root(site.root)

    b1 = _publish(hubstock, site, GEN1)
    # every build keeps the lock it was built from, for users to download
    lock_text = (site.envs_dir / "py" / "conda-lock.yml").read_bytes()
    assert (root.build("py", b1) / LOCK_COPY).read_bytes() == lock_text
    assert read_lock_copy(root, "py", b1) == lock_text

    # the first generation: everything is new
    first = json.loads(hubstock(site, "diff", "--json", check=True).stdout)
    assert first["before"] is None and first["after"]["generation"] == "0001"
    assert [(k["name"], k["change"], k["build"]) for k in first["kernels"]] == [("stock", "added", b1)]

    (site.dir / "extensions" / "overrides.json").write_text(
        json.dumps({"@jupyterlab/notebook-extension:tracker": {"codeCellConfig": {"lineNumbers": True}}})
    )
    b2 = _publish(hubstock, site, GEN2)
    assert b2 != b1

    text = hubstock(site, "diff", check=True).stdout
    assert text.splitlines()[0].startswith("generation 0001 -> generation 0002 (published ")
    assert f"kernel stock (Python (stock)): changed; build py/{b1} -> py/{b2}" in text
    for line in (
        "    removed    demo-b 1.0 (conda)",
        "    upgraded   demo-c 0.1 -> 0.2 (conda)",
        "    added      demo-d 1.0 (conda)",
        "    upgraded   six 1.16.0 -> 1.17.0 (PyPI)",
        f"  kernel stock-{b1[:8]} (Python (stock) (previous build {b1[:8]})), previous build "
        f"{b1[:8]} of stock: added, on py/{b1}",
        "    overrides.json: @jupyterlab/notebook-extension:tracker > codeCellConfig > lineNumbers: false -> true",
    ):
        assert line in text.splitlines(), f"{line!r} not in:\n{text}"

    d12 = json.loads(hubstock(site, "diff", "1", "2", "--json", check=True).stdout)
    assert d12["before"]["generation"] == "0001" and d12["after"]["generation"] == "0002"
    stock = next(k for k in d12["kernels"] if k["name"] == "stock")
    assert stock["change"] == "changed" and (stock["build_before"], stock["build"]) == (b1, b2)
    assert stock["packages_known"] is True
    assert stock["packages"] == [
        {
            "manager": "conda",
            "name": "demo-b",
            "change": "removed",
            "before": "1.0",
            "after": None,
            "before_build": "0",
            "after_build": None,
        },
        {
            "manager": "conda",
            "name": "demo-c",
            "change": "upgraded",
            "before": "0.1",
            "after": "0.2",
            "before_build": "0",
            "after_build": "0",
        },
        {
            "manager": "conda",
            "name": "demo-d",
            "change": "added",
            "before": None,
            "after": "1.0",
            "before_build": None,
            "after_build": "0",
        },
        {
            "manager": "pip",
            "name": "six",
            "change": "upgraded",
            "before": "1.16.0",
            "after": "1.17.0",
            "before_build": None,
            "after_build": None,
        },
    ]
    pinned = next(k for k in d12["kernels"] if k["name"] == f"stock-{b1[:8]}")
    assert pinned == {
        "name": f"stock-{b1[:8]}",
        "change": "added",
        "renamed_from": None,
        "display_name": f"Python (stock) (previous build {b1[:8]})",
        "display_name_before": None,
        "env": "py",
        "build": b1,
        "env_before": None,
        "build_before": None,
        "pinned_of": "stock",
        "packages": [],
        "packages_known": True,
        "interpreter": None,
        "groups": [],  # everybody's (issue 23: a kernel for some groups only names them)
        "groups_before": None,
    }
    assert d12["extensions"] == [
        {
            "file": "overrides.json",
            "key": ["@jupyterlab/notebook-extension:tracker", "codeCellConfig", "lineNumbers"],
            "change": "changed",
            "before": False,
            "after": True,
        }
    ]
    assert d12["server"] is None  # this site has no server env

    # the kernel is renamed; its build stays
    shutil.move(site.dir / "kernels" / "stock", site.dir / "kernels" / "stock-py")
    hubstock(site, "publish", check=True)
    d23 = json.loads(hubstock(site, "diff", "--json", check=True).stdout)
    assert (d23["before"]["generation"], d23["after"]["generation"]) == ("0002", "0003")
    assert [(k["name"], k["change"], k["renamed_from"], k["packages"]) for k in d23["kernels"]] == [
        ("stock-py", "renamed", "stock", []),
        (f"stock-{b1[:8]}", "removed", None, []),
    ]
    assert d23["extensions"] == []
    text = hubstock(site, "diff", check=True).stdout
    assert "  kernel stock-py (Python (stock)): renamed from stock" in text.splitlines()

    # from the newest back to the first: renamed, and every package change reversed
    d31 = json.loads(hubstock(site, "diff", "3", "1", "--json", check=True).stdout)
    k = d31["kernels"][0]
    assert (k["name"], k["change"], k["renamed_from"]) == ("stock", "renamed", "stock-py")
    assert [(p["name"], p["change"], p["before"], p["after"]) for p in k["packages"]] == [
        ("demo-b", "added", None, "1.0"),
        ("demo-c", "downgraded", "0.2", "0.1"),
        ("demo-d", "removed", "1.0", None),
        ("six", "downgraded", "1.17.0", "1.16.0"),
    ]

    # it reads only the root: the site repository may have moved on
    shutil.rmtree(site.dir / "kernels")
    shutil.rmtree(site.envs_dir)
    assert json.loads(hubstock(site, "diff", "1", "2", "--json", check=True).stdout) == d12

    # what cannot be diffed is the command's or the root's fault: exit 2 (README's table), one sentence
    bad = hubstock(site, "diff", "7")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("hubstock: generation '0007' does not exist")
    garbage = hubstock(site, "diff", "../../etc")
    assert garbage.returncode == 2 and garbage.stderr.startswith("hubstock: generation "), garbage.stderr
    manifest = root.generation("0002") / MANIFEST
    good = manifest.read_bytes()
    for broken in (
        json.dumps({**json.loads(good), "schema": 99}).encode(),  # a newer hubstock's
        b"\xff\xfe" + good,  # not UTF-8
    ):
        os.chmod(manifest, 0o644)
        manifest.write_bytes(broken)
        res = hubstock(site, "diff", "1", "2")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and str(manifest) in res.stderr, res.stderr
    manifest.write_bytes(good)
