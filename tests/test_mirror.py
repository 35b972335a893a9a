"""``hubstock mirror`` (issue 25): the packages of a generation written as a conda channel and a
PEP 503 index; a second root built from the mirror alone, with the original channel gone and no
network at all (a network namespace of its own), gives the same build ids and kernels that pass
their smoke tests; py-rattler (through ``hubstock lock`` and ``build``) and uv read the mirror
as the clients they are. Real packages: the offline channel's conda archives, ipykernel's wheels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from rigs.channel import file_url
from tests.helpers import need_root
from tests.test_publish import KERNEL, add_kernel, py_env, run_in_kernel
from tests.test_venv_build import system_python

from hubstock.admin.uv import uv_command
from hubstock.store.root import Root
from hubstock.store.rootmark import init_root

pytestmark = pytest.mark.integration


def _offline(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` in a network namespace of its own: no route anywhere (its loopback up, for kernels)."""
    script = 'ip link set lo up 2>/dev/null || true; exec "$@"'
    return subprocess.run(
        ["unshare", "-n", "/bin/sh", "-c", script, "sh", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=900,
    )


def test_a_second_root_builds_from_the_mirror_alone_with_the_same_build_ids(
    make_site, hubstock, world_tmp, channel
):
    need_root("a network namespace of its own (unshare -n)")
    own_channel = world_tmp / "channel"  # the site's channel, which goes away below
    shutil.copytree(channel, own_channel)
    settings = f'root = "{world_tmp / "root"}"\nchannels = ["{file_url(own_channel)}"]\n'
    site = make_site({"py": py_env("0.1")}, settings=settings)
    add_kernel(site, "stock", KERNEL)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    hubstock(site, "publish", check=True)
    bid = os.readlink(Root(site.root).env_current("py"))

    m = world_tmp / "mirror"
    done = json.loads(hubstock(site, "mirror", str(m), "--json", check=True).stdout)
    assert done["generations"] == ["0001"] and done["conda"] >= 2 and done["pip"] >= 10, done
    assert (m / "conda" / "noarch" / "repodata.json").is_file()
    assert (m / "simple" / "ipykernel" / "index.html").read_text().count("#sha256=") == 1
    again = json.loads(hubstock(site, "mirror", str(m), "--json", check=True).stdout)
    assert again["added"] == 0, again  # twice: no extra work

    # uv reads the simple index, with no network at all
    venv = world_tmp / "uv-venv"
    uv = uv_command()[0]
    subprocess.run([uv, "venv", "-q", "--python", system_python(), str(venv)], check=True)
    res = _offline(
        uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "--index-url",
        (m / "simple").as_uri(), "traitlets",
        env={"UV_CACHE_DIR": str(world_tmp / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert subprocess.run([venv / "bin" / "python", "-c", "import traitlets"], check=False).returncode == 0

    # py-rattler solves and installs from the mirror's channel (hubstock's lock and build)
    site3 = world_tmp / "site3"
    (site3 / "envs" / "c").mkdir(parents=True)
    (site3 / "envs" / "c" / "environment.yml").write_text("dependencies:\n  - python\n  - demo-c 0.1\n")
    (site3 / "hubstock.toml").write_text(
        f'root = "{world_tmp / "root3"}"\nchannels = ["{(m / "conda").as_uri()}"]\n'
    )
    init_root(world_tmp / "root3")
    for step in ("lock", "build"):
        res = _offline(sys.executable, "-m", "hubstock", "--site", str(site3), step)
        assert res.returncode == 0, (step, res.stderr)
    assert list((world_tmp / "root3" / "envs" / "c").glob("*/lib/python*/site-packages/demo_c"))

    # the site's channel is gone; a second root, no network: the mirror is all there is
    shutil.rmtree(own_channel)
    site2, root2 = world_tmp / "site2", world_tmp / "root2"
    shutil.copytree(site.dir, site2)
    toml = (site.dir / "hubstock.toml").read_text().replace(str(site.root), str(root2))
    (site2 / "hubstock.toml").write_text(toml + f'mirrors = ["{m}"]\n')
    init_root(root2)
    for step in ("build", "publish"):
        res = _offline(sys.executable, "-m", "hubstock", "--site", str(site2), step)
        assert res.returncode == 0, (step, res.stderr)
    assert os.readlink(Root(root2).env_current("py")) == bid
    jupyter = Root(root2).current / "share" / "jupyter"
    assert run_in_kernel(jupyter, "stock", "import demo_c, ipykernel; print(demo_c.VERSION)") == "0.1"


def test_a_mirror_of_a_generation_that_is_not_there_is_one_sentence(make_site, hubstock, world_tmp):
    site = make_site({"py": py_env("0.1")})
    res = hubstock(site, "mirror", str(world_tmp / "m"), "0042")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1 and "no generation '0042'" in lines[0], res.stderr


@pytest.mark.hub
def test_the_demo_sites_generation_is_built_again_from_its_mirror_with_no_network(
    hub_site, hubstock, tmp_path
):
    """The hub site (the demo's envs: server and python conda envs with their pip parts, the venv
    env on the Lmod module, the R module env) mirrored, then a second root built and published
    from that mirror inside a network namespace with no route out: the same build ids, every
    kernel smoke-tested."""
    need_root("a network namespace of its own (unshare -n)")
    root = Root(hub_site.parent / "root")
    m = tmp_path / "mirror"
    done = json.loads(hubstock(hub_site, "mirror", str(m), "current", "--json", check=True).stdout)
    assert done["pip"] > 50, done  # the server's JupyterLab and its kin
    site2, root2 = tmp_path / "site2", tmp_path / "root2"
    shutil.copytree(hub_site, site2, symlinks=True)
    toml = (hub_site / "hubstock.toml").read_text().replace(str(root.path), str(root2))
    (site2 / "hubstock.toml").write_text(f'mirrors = ["{m}"]\n' + toml)  # a top-level key: before the tables
    init_root(root2)
    for step in ("build", "publish"):
        res = _offline(sys.executable, "-m", "hubstock", "--site", str(site2), step)
        assert res.returncode == 0, (step, res.stderr[-3000:])
    first = json.loads((root.current / "manifest.json").read_text())
    second = json.loads((Root(root2).current / "manifest.json").read_text())
    assert {e: b["build"] for e, b in second["builds"].items()} == {
        e: b["build"] for e, b in first["builds"].items()
    }
    assert second["server"]["build"] == first["server"]["build"]
    assert sorted(k["name"] for k in second["kernels"]) == sorted(
        k["name"] for k in first["kernels"] if not k.get("pinned_of")
    )
