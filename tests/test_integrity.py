"""Integration: a damaged or tampered package cache never reaches a build, and never blocks the root.

Every way of damaging an extracted package in ``$ROOT/pkgs/`` ends the same: the next build
installs only what the verified archive holds (0 tampered installs), the root builds again
without help, ``hubstock verify`` finds nothing left, and a build that a file changed in place
had reached through its hard link is reported damaged and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hubstock.store.root import CACHE_SEAL, Root

pytestmark = pytest.mark.integration

ENVS = {
    "demo": "dependencies:\n  - python\n  - demo-a\n  - demo-c 0.1\n",
    "other": "dependencies:\n  - python\n  - demo-c 0.1\n",
}
VICTIM_PKG = "demo-c-0.1-0"
VICTIM = "site-packages/demo_c/__init__.py"  # in the cache; in a build: lib/python3.X/site-packages/...
GOOD = b"VERSION = '0.1'\n"
EVIL = b"VERSION = 'evil'; import os  # tampered\n"
SAME_SIZE_EVIL = b"VERSION = 'ev1'\n"
assert len(SAME_SIZE_EVIL) == len(GOOD)


def _writable(path: Path) -> None:
    """Give the admin write access on the way to ``path`` (sealed packages are read-only)."""
    for p in [path, *path.parents]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, os.stat(p).st_mode | 0o200)
        if p.name == "pkgs":
            break


def _rewrite_paths_json(entry: Path, rel: str, data: bytes | None) -> None:
    """Make the package's own info/paths.json agree with the tampered file (or its absence)."""
    pj = entry / "info" / "paths.json"
    doc = json.loads(pj.read_text())
    for p in doc["paths"]:
        if p["_path"] == rel and data is not None:
            p["sha256"] = hashlib.sha256(data).hexdigest()
            p["size_in_bytes"] = len(data)
    if data is None:
        doc["paths"] = [p for p in doc["paths"] if p["_path"] != rel]
    _writable(pj)
    pj.write_text(json.dumps(doc))


def _reseal(entry: Path) -> None:
    """Forge the seal too, as someone who read hubstock's source would."""
    seal_path = entry / CACHE_SEAL
    seal = json.loads(seal_path.read_text())
    for rel in seal["info"]:
        seal["info"][rel] = hashlib.sha256((entry / rel).read_bytes()).hexdigest()
    _writable(seal_path)
    seal_path.write_text(json.dumps(seal))


def tamper(kind: str, entry: Path, world_tmp: Path) -> None:
    f = entry / VICTIM
    if kind == "edited-in-place-same-size-mtime-reset":
        # root writes the read-only file as it is: its size, modes and mtime stay; only its ctime tells
        st = os.stat(f)
        with open(f, "r+b") as fh:
            fh.write(SAME_SIZE_EVIL)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(f).st_mode == st.st_mode and os.stat(f).st_mtime_ns == st.st_mtime_ns
        return
    _writable(f)
    if kind == "changed-with-matching-paths-json":
        f.unlink()
        f.write_bytes(EVIL)
        _rewrite_paths_json(entry, VICTIM, EVIL)
    elif kind == "changed-paths-json-and-seal":
        f.unlink()
        f.write_bytes(EVIL)
        _rewrite_paths_json(entry, VICTIM, EVIL)
        _reseal(entry)
    elif kind == "replaced":
        f.unlink()
        f.write_bytes(EVIL)
    elif kind == "deleted":
        f.unlink()
    elif kind == "edited-in-place":
        with open(f, "r+b") as fh:  # the same inode: every build that links it changes too
            fh.write(EVIL)
    elif kind == "swapped-for-a-symlink":
        (world_tmp / "evil.py").write_bytes(EVIL)
        f.unlink()
        f.symlink_to(world_tmp / "evil.py")
    elif kind == "an-added-file":
        (f.parent / "sitecustomize.py").write_bytes(EVIL)
    elif kind == "unsealed":
        (entry / CACHE_SEAL).unlink()
    elif kind == "a-foreign-copy":
        # another account's copy with the evil file, a matching paths.json and a forged seal
        fake = entry.with_name(entry.name + ".fake")
        shutil.copytree(entry, fake, symlinks=True)
        _writable(fake / VICTIM)
        (fake / VICTIM).unlink()
        (fake / VICTIM).write_bytes(EVIL)
        _rewrite_paths_json(fake, VICTIM, EVIL)
        _reseal(fake)
        subprocess.run(["chown", "-R", "65534:65534", str(fake)], check=True)
        shutil.rmtree(entry)
        os.rename(fake, entry)
    else:  # pragma: no cover
        raise AssertionError(kind)


TAMPERINGS = [
    "changed-with-matching-paths-json",
    "changed-paths-json-and-seal",
    "replaced",
    "deleted",
    "edited-in-place",
    "edited-in-place-same-size-mtime-reset",
    "swapped-for-a-symlink",
    "an-added-file",
    "unsealed",
    "a-foreign-copy",
]


def _status(hubstock, site) -> dict:
    return json.loads(hubstock(site, "status", "--json", check=True).stdout)


def _victims(root: Root) -> dict[str, bytes]:
    """What each complete build got for the victim file."""
    out = {}
    for env in ENVS:
        for d in sorted(root.env(env).glob("[0-9a-f]*")):
            if not d.is_symlink() and (d / ".hubstock-complete").exists():
                (f,) = d.glob("lib/python3*/site-packages/demo_c/__init__.py")
                out[f"{env}/{d.name}"] = f.read_bytes()
    return out


@pytest.mark.parametrize("kind", TAMPERINGS)
def test_a_damaged_cache_never_reaches_a_build(make_site, hubstock, world_tmp, kind):
    if kind == "a-foreign-copy" and os.geteuid() != 0:
        pytest.skip("needs root to give files to another account")
    site = make_site(ENVS)
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", "demo", check=True)
    first = _status(hubstock, site)["envs"]["demo"]["current"]
    assert hubstock(site, "verify").returncode == 0

    tamper(kind, root.pkg_entry(VICTIM_PKG), world_tmp)

    check = hubstock(site, "verify", "--json")
    assert check.returncode == 1, check.stdout  # the cache (and, edited in place, the build) differs
    report = json.loads(check.stdout)
    assert [c["package"] for c in report["cache"] if not c["ok"]] == [VICTIM_PKG]
    damaged = [b["build"] for b in report["builds"] if not b["ok"]]
    if kind.startswith("edited-in-place"):
        assert damaged == [first]
        assert _status(hubstock, site)["envs"]["demo"]["builds"][0]["damaged"] >= 1
    else:
        assert damaged == []

    # the root builds again without help: the other env, and the demo env if it was damaged
    res = hubstock(site, "build", "--json")
    assert res.returncode == 0, res.stderr
    done = {b["env"]: b for b in json.loads(res.stdout)["builds"]}
    assert done["other"]["built"] and done["demo"]["built"] == kind.startswith("edited-in-place")
    assert done["demo"]["build"] == first

    victims = _victims(root)
    assert set(victims) == {f"demo/{first}", f"other/{done['other']['build']}"}
    tampered = [b for b, data in victims.items() if data != GOOD]
    assert tampered == []  # 0 tampered installs
    again = hubstock(site, "verify", "--json")
    assert again.returncode == 0, again.stdout
    st = _status(hubstock, site)["envs"]
    assert all("damaged" not in b for env in st.values() for b in env["builds"])
    # the cache holds the verified package again, sealed and read-only
    entry = root.pkg_entry(VICTIM_PKG)
    assert (entry / VICTIM).read_bytes() == GOOD and (entry / CACHE_SEAL).is_file()
    assert os.stat(entry / VICTIM).st_mode & 0o222 == 0


def test_verify_repair_fixes_the_cache_and_the_current_build(make_site, hubstock):
    site = make_site({"demo": ENVS["demo"]})
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    bid = _status(hubstock, site)["envs"]["demo"]["current"]
    f = root.pkg_entry(VICTIM_PKG) / VICTIM
    with open(f, "r+b") as fh:
        fh.write(EVIL)

    res = hubstock(site, "verify")
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    # rpm -V style: the flags, then the file, once in the build and once in the cache
    assert any(line.startswith("S.5") and f"envs/demo/{bid}/lib/" in line for line in lines), lines
    assert any(line.startswith("S.5") and f"pkgs/{VICTIM_PKG}/{VICTIM}" in line for line in lines), lines
    assert "hubstock verify --repair" in lines[-1]
    kernel = {
        "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Demo",
        "language": "python",
        "metadata": {"hubstock": {"env": "demo"}},
    }
    (site.dir / "kernels" / "demo").mkdir(parents=True)
    (site.dir / "kernels" / "demo" / "kernel.json").write_text(json.dumps(kernel))
    refused = hubstock(site, "publish")  # a damaged build is never published
    assert refused.returncode == 1 and f"build demo/{bid} is damaged" in refused.stderr

    fixed = hubstock(site, "verify", "--repair", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    doc = json.loads(fixed.stdout)
    assert doc["ok"] and [b["repaired"] for b in doc["builds"]] == [True]
    assert _victims(root) == {f"demo/{bid}": GOOD}
    assert hubstock(site, "verify").returncode == 0


def test_a_changed_pyc_in_a_build_is_found(make_site, hubstock):
    """Byte-code no package declares is checked against the list the build recorded."""
    site = make_site({"other": ENVS["other"]})
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    bid = _status(hubstock, site)["envs"]["other"]["current"]
    (pyc,) = root.build("other", bid).glob("lib/python3*/site-packages/demo_c/__pycache__/*.pyc")
    data = bytearray(pyc.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(pyc, 0o644)
    pyc.write_bytes(bytes(data))
    os.chmod(pyc, 0o444)
    res = hubstock(site, "verify", "other")
    assert res.returncode == 1
    assert any(line.startswith("..5") and str(pyc) in line for line in res.stdout.splitlines()), res.stdout
