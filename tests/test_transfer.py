"""``hubstock export`` / ``import`` (issue 25): a published generation carried as one archive to
a second root (another clone of the site, another root path) gives the same stock there: the
same build ids made from the kept locks, the same kernels and defaults (an empty diff), smoke
tested; a tampered archive is refused with its member named, and nothing is written. Real
builds (conda packages from the offline channel, the pip part with uv) and real kernels."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from tests.test_publish import KERNEL, add_kernel, py_env, run_in_kernel

from hubstock.store.catalog import Catalog
from hubstock.store.diff import diff_generations
from hubstock.store.generations import generation
from hubstock.store.root import Root
from hubstock.store.rootmark import init_root

pytestmark = pytest.mark.integration

OVERRIDES = {"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}


def test_a_generation_exported_and_imported_on_a_second_root_is_the_same_stock(
    make_site, hubstock, world_tmp
):
    site = make_site({"py": py_env("0.1")})
    add_kernel(site, "stock", KERNEL)
    (site.dir / "extensions").mkdir(exist_ok=True)
    (site.dir / "extensions" / "overrides.json").write_text(json.dumps(OVERRIDES))
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    hubstock(site, "publish", check=True)
    root1 = Root(site.root)
    archive = world_tmp / "out" / "gen.tar"
    done = json.loads(hubstock(site, "export", "current", "-o", str(archive), "--json", check=True).stdout)
    bid = os.readlink(root1.env_current("py"))
    assert done["generation"] == "0001" and done["builds"] == [f"py/{bid}"] and archive.is_file(), done

    # a second clone of the site repository, on another root
    site2, root2 = world_tmp / "site2", world_tmp / "root2"
    shutil.copytree(site.dir, site2)
    toml = (site.dir / "hubstock.toml").read_text().replace(str(site.root), str(root2))
    (site2 / "hubstock.toml").write_text(toml)
    init_root(root2)
    got = json.loads(hubstock(site2, "import", str(archive), "--json", check=True).stdout)
    assert got["published"] and got["built"] == [f"py/{bid}"] and got["kernels"] == ["stock"], got
    r2 = Root(root2)
    assert os.readlink(r2.env_current("py")) == bid, "the same build id, from the kept lock"
    jupyter = r2.current / "share" / "jupyter"
    out = run_in_kernel(jupyter, "stock", "import demo_c, sys; print(demo_c.VERSION, sys.prefix)")
    assert out == f"0.1 {r2.build('py', bid)}", out  # its paths moved to this root
    before = Catalog(root1).contents(generation(root1, "0001"))
    after = Catalog(r2).contents(generation(r2, got["generation"]))
    d = diff_generations(before, after)
    assert not d.changed, d.model_dump()
    assert after.extensions["overrides.json"] == OVERRIDES

    # again: nothing to do
    again = json.loads(hubstock(site2, "import", str(archive), "--json", check=True).stdout)
    assert not again["published"] and again["built"] == [] and again["generation"] == got["generation"]

    # one byte changed in a kernel's file: refused, the member named, nothing written
    data = bytearray(archive.read_bytes())
    at = data.rindex(b'"display_name": "Python (stock)"')  # the kernel's (the manifest's comes first)
    data[at + 17] ^= 0x20  # "Python" -> "python"
    bad = world_tmp / "out" / "tampered.tar"
    bad.write_bytes(bytes(data))
    gens = sorted(p.name for p in r2.generations.iterdir())
    res = hubstock(site2, "import", str(bad))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0 and len(lines) == 1, res.stderr
    assert "kernels/stock/kernel.json does not match its sha256" in lines[0] and str(bad) in lines[0], lines
    assert sorted(p.name for p in r2.generations.iterdir()) == gens


def test_an_archive_with_a_member_outside_the_export_is_refused(tmp_path):
    import io
    import tarfile

    from hubstock.admin.publish.transfer import read_archive
    from hubstock.errors import PublishError

    for name in ("../evil", "/etc/evil", "hubstock-export/../evil", "other/x"):
        bad = tmp_path / "bad.tar"
        with tarfile.open(bad, "w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(PublishError, match="is not a plain file of a hubstock export"):
            read_archive(bad)
    (tmp_path / "not.tar").write_bytes(b"no tar at all" * 100)
    with pytest.raises(PublishError, match="cannot be read as a hubstock export"):
        read_archive(tmp_path / "not.tar")
