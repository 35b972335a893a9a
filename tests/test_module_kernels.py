"""Integration: module envs (Lmod modules only, locked to ``modules.lock.json``) and their kernels,
with the real Debian Lmod and Debian's R with IRkernel (``lmod_tree``, rigs/lmod_rig.py).

One site is locked, built and published once (``rsite``) and the tests go on from there, in
order: a kernel whose modules do not load, a modulefile changed after locking, an optional env
whose module is gone. The site has its own copy of the tree's R modulefile (in its ``modules/``,
as the site kit has), so that the tests may change it; ``lmod_tree``'s own files stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hubstock.store.builds import read_provenance
from hubstock.store.generations import resolve_current
from hubstock.store.records import ModuleRef
from hubstock.store.root import Root

pytestmark = pytest.mark.integration

IRKERNEL_ARGV = ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hs(site: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "hubstock", "--site", str(site), *args], capture_output=True, text=True
    )
    if check:
        assert res.returncode == 0, f"hubstock {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def status(site: Path) -> dict:
    return json.loads(hs(site, "status", "--json").stdout)


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    """stderr as one ``hubstock: ...`` line, without a traceback."""
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubstock: "), res.stderr
    return lines[0]


def write_module_env(site: Path, name: str, modules: list[str], optional: bool = False) -> None:
    d = site / "envs" / name
    d.mkdir(parents=True, exist_ok=True)
    text = f'kind = "module"\nmodules = {json.dumps(modules)}\n' + ("optional = true\n" if optional else "")
    (d / "env.toml").write_text(text)


def write_r_kernel(site: Path, name: str, env: str, check: str | None = None, modules=None) -> None:
    d = site / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    hub: dict = {"env": env}
    if check:
        hub["check"] = check
    if modules:
        hub["modules"] = modules
    spec = {
        "argv": IRKERNEL_ARGV,
        "display_name": f"R ({name})",
        "language": "R",
        "metadata": {"hubstock": hub},
    }
    (d / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def rsite(lmod_tree) -> Iterator[SimpleNamespace]:
    """A site with module env ``r`` (the tree's R module, from the site's own modules/) and its R
    kernel, locked, built and published."""
    init, tree = lmod_tree
    top = Path(tempfile.mkdtemp(prefix="hubstock-modules-"))
    top.chmod(0o755)
    site = top / "site"
    modulefile = site / "modules" / f"{tree.r_module}.lua"
    modulefile.parent.mkdir(parents=True)
    shutil.copyfile(tree.r_modulefile, modulefile)
    (site / "hubstock.toml").write_text(f'root = "{top / "root"}"\n\n[modules]\nuse = ["modules"]\n')
    write_module_env(site, "r", [tree.r_module])
    # the check proves the kernel runs through Lmod: the module is loaded, R comes from its PATH
    check = (
        f'stopifnot(grepl("{tree.r_module}", Sys.getenv("LOADEDMODULES"), fixed = TRUE)); '
        f'stopifnot(unname(Sys.which("R")) == "{tree.r_bin / "R"}"); cat(R.home())'
    )
    write_r_kernel(site, "r", "r", check=check)
    hs(site, "init-root")
    steps = {step: hs(site, step) for step in ("lock", "build", "publish")}
    yield SimpleNamespace(
        site=site, root=Root(top / "root"), tree=tree, init=init, modulefile=modulefile, **steps
    )
    if os.geteuid() != 0:  # the builds are read-only
        subprocess.run(["chmod", "-R", "u+w", str(top)], check=False)
    shutil.rmtree(top, ignore_errors=True)


# --- 7. lock, build, publish ----------------------------------------------------------------------


def test_a_module_env_locks_builds_and_publishes_an_r_kernel(rsite):
    site, tree, root = rsite.site, rsite.tree, rsite.root
    lock = json.loads((site / "envs" / "r" / "modules.lock.json").read_text())
    ref = {
        "name": tree.r_module,
        "full_name": tree.r_module,
        "path": f"modules/{tree.r_module}.lua",  # the site's own tree: relative to the site
        "sha256": sha256_of(rsite.modulefile),
    }
    assert lock["modules"] == [ref]
    assert str(site) not in json.dumps(lock)  # the same lock in every clone of the site

    st = status(site)
    bid = st["envs"]["r"]["current"]
    assert st["envs"]["r"]["lock"] == "fresh"
    assert st["envs"]["r"]["builds"] == [{"id": bid, "complete": True}]
    assert f"r: {bid} (built)" in rsite.build.stdout
    prefix = root.build("r", bid)
    prov = read_provenance(prefix)
    assert prov.kind == "module" and prov.interpreter is None
    assert prov.modules == [ModuleRef(**ref)]
    name, version = tree.r_module.split("/")
    assert [(p.manager, p.name, p.version, p.url, p.sha256) for p in prov.packages] == [
        ("module", name, version, ref["path"], ref["sha256"])
    ]
    # nothing installed: the build holds its records only
    assert {p.name for p in prefix.iterdir()} <= {
        ".hubstock-build.json",
        ".hubstock-complete",
        ".hubstock-files.json",
        ".hubstock-lock.yml",
    }

    # publish ran the smoke test (R through Lmod: see the check) and published the kernel
    assert rsite.publish.returncode == 0 and "(published)" in rsite.publish.stdout
    gen = resolve_current(root)
    spec = json.loads((gen.kernel_dir("r") / "kernel.json").read_text())
    argv = spec["argv"]
    assert argv[:4] == ["/bin/bash", "--noprofile", "--norc", "-c"], argv
    script = argv[4]
    assert script.startswith(f"source {rsite.init};"), script
    assert f"module use {site / 'modules'};" in script and f"module load {tree.r_module} ||" in script
    assert argv[5:] == ["hubstock-kernel", *IRKERNEL_ARGV]
    assert spec["language"] == "R" and spec["metadata"]["hubstock"]["build"] == bid
    assert [k["name"] for k in st["published"]["kernels"]] == ["r"]


# --- 8. modules that do not load ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["a-template-module", "the-env-module-removed"])
def test_a_module_that_does_not_load_fails_publish_in_one_sentence(rsite, how):
    site = rsite.site
    before = status(site)["published"]
    moved = rsite.modulefile.with_name("moved-away")
    if how == "a-template-module":
        write_r_kernel(site, "bad", "r", modules=["nosuch/1.0"])
        missing, kernel = "nosuch/1.0", "bad"
    else:
        os.rename(rsite.modulefile, moved)
        missing, kernel = rsite.tree.r_module, "r"
    try:
        res = hs(site, "publish", check=False)
    finally:
        shutil.rmtree(site / "kernels" / "bad", ignore_errors=True)
        if moved.exists():
            os.rename(moved, rsite.modulefile)
    assert res.returncode != 0, res.stdout
    line = one_line(res)
    assert f"kernel {kernel!r} cannot start" in line, line
    assert "unknown" in line and f'"{missing}"' in line, line  # Lmod's own message
    assert "Nothing was published" in line, line
    assert status(site)["published"] == before
    assert not any(p.name.startswith(".") for p in rsite.root.generations.iterdir())  # no staging left


# --- 9. a modulefile changed after locking --------------------------------------------------------


def test_a_changed_modulefile_is_refused_until_locked_again_and_diff_shows_it(rsite):
    site, tree, root = rsite.site, rsite.tree, rsite.root
    st = status(site)
    first, gen_before = st["envs"]["r"]["current"], st["published"]["generation"]
    old_sha = sha256_of(rsite.modulefile)
    with open(rsite.modulefile, "a") as f:
        f.write("-- the site changed this modulefile after locking\n")

    refused = hs(site, "build", check=False)
    assert refused.returncode != 0
    line = one_line(refused)
    assert tree.r_module in line and "envs/r/modules.lock.json" in line, line
    assert "`hubstock lock r --update`" in line, line
    assert status(site)["envs"]["r"]["current"] == first
    assert [p.name for p in root.env("r").iterdir() if p.name != "current" and p.name[0] != "."] == [first]

    hs(site, "lock", "r", "--update")
    lock = json.loads((site / "envs" / "r" / "modules.lock.json").read_text())
    assert [m["sha256"] for m in lock["modules"]] == [sha256_of(rsite.modulefile)]
    out = hs(site, "build").stdout
    second = status(site)["envs"]["r"]["current"]
    assert second != first and f"r: {second} (built)" in out
    assert "(published)" in hs(site, "publish").stdout

    diff = json.loads(hs(site, "diff", "--json").stdout)
    assert diff["before"]["generation"] == gen_before
    kernels = {k["name"]: k for k in diff["kernels"]}
    r = kernels["r"]
    assert (r["change"], r["build_before"], r["build"]) == ("changed", first, second)
    name, version = tree.r_module.split("/")
    assert [(p["manager"], p["name"], p["before"], p["after"]) for p in r["packages"]] == [
        ("module", name, version, version)
    ], r["packages"]
    assert r["packages"][0]["change"] in ("rebuilt", "changed")
    assert r["packages"][0]["before_build"] != r["packages"][0]["after_build"]
    assert kernels[f"r-{first[:8]}"]["pinned_of"] == "r"  # the previous build's kernel stays, pinned
    text = hs(site, "diff").stdout
    assert f"kernel r (R (r)): changed; build r/{first} -> r/{second}" in text, text
    assert any(f" {name} {version}" in line for line in text.splitlines()), text
    assert old_sha != sha256_of(rsite.modulefile)


# --- 10. optional module envs ---------------------------------------------------------------------


def test_an_optional_module_env_that_does_not_load_is_left_out(rsite):
    site, root = rsite.site, rsite.root
    extra = site / "modules" / "extra" / "1.0.lua"
    extra.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rsite.modulefile, extra)
    write_module_env(site, "extra", ["extra/1.0"], optional=True)
    write_r_kernel(site, "extra", "extra")
    hs(site, "lock", "extra")  # locked where the module is there
    hs(site, "build")
    r_build = status(site)["envs"]["r"]["current"]
    before = status(site)["published"]

    extra.unlink()  # this machine has no such module
    built = hs(site, "build")
    line = one_line(built)
    assert "'extra'" in line and "left out" in line and "extra/1.0" in line, line
    assert built.stdout.splitlines() == [f"r: {r_build} (up to date)"]

    pub = hs(site, "publish")
    line = one_line(pub)
    assert "kernel 'extra'" in line and "left out" in line and "unknown" in line, line
    published = status(site)["published"]
    names = [k["name"] for k in published["kernels"]]
    assert "extra" not in names and "r" in names
    assert {k["name"] for k in published["kernels"]} == {k["name"] for k in before["kernels"]}
    # the default kernel is one that was published (not the first template, which was left out)
    gen = resolve_current(root)
    assert gen.manifest().default_kernel in names
    assert "extra" not in os.listdir(gen.kernels_dir)

    # the same env, not optional: build and publish fail, in one sentence each
    write_module_env(site, "extra", ["extra/1.0"], optional=False)
    for step in ("build", "publish"):
        res = hs(site, step, check=False)
        assert res.returncode != 0, res.stdout
        line = one_line(res)
        assert "extra/1.0" in line and "unknown" in line, line
    assert status(site)["published"] == published
