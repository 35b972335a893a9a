"""The root on a real network filesystem: GlusterFS over FUSE, served on the loopback, with
"another node" being a mount namespace with a GlusterFS client of its own at the same path
(every node of a cluster mounts the root at one path: the kernelspecs name it).

Build, publish, verify, a kernel starting, gc, two builders on two nodes contending for the
root's lock; and readers (the hook's own) on another node resolving ``current`` during 50
publishes (GlusterFS answers a link being swapped with ESTALE, or an empty string, now and
then), then the hook there pinning the newest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from tests.helpers import audit, kernel_script, until
from tests.test_venv_build import system_python, write_kernel, write_venv_env

from hubstock.site import Settings, Site
from hubstock.store.builds import mark_complete
from hubstock.store.generations import generation, staging, switch_current
from hubstock.store.records import GenerationManifest, ManifestBuild
from hubstock.store.root import Root
from hubstock.store.rootmark import check_root, init_root
from hubstock.store.sessions import live_sessions

pytestmark = pytest.mark.integration

#: the issue's figure: publishes while another node's readers resolve ``current``
PUBLISHES = 50


def _node(gluster, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on "another node" (its own GlusterFS client at the root's mount)."""
    return subprocess.run(
        gluster.on_node(argv, gluster.root_mount), capture_output=True, text=True, timeout=timeout
    )


def _cli(site) -> list[str]:
    return [sys.executable, "-m", "hubstock", "--site", str(site.dir)]


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, (res.args[-6:], res.stdout, res.stderr)
    return res.stdout


def test_the_main_job_with_the_root_on_glusterfs(gluster, world_tmp, hubstock):
    root = gluster.root_mount / "main-job"
    site = Site(dir=world_tmp / "site", settings=Settings(), root=root)
    # venvs on the system Python (on every node): "py" runs the kernel, "tiny" is what two
    # builders on two nodes both want to rebuild
    site.dir.mkdir()
    (site.dir / "hubstock.toml").write_text(f'root = "{root}"\n')
    write_venv_env(site.dir, "py", "ipykernel\n", path=system_python())
    write_venv_env(site.dir, "tiny", "six\n", path=system_python())
    write_kernel(site.dir, "stock", "py", "import ipykernel")
    # nothing is made on the volume until asked
    assert hubstock(site, "build").returncode == 2 and not root.exists()
    for step in ("init-root", "lock", "build", "publish"):
        hubstock(site, step, check=True)
    assert check_root(root).path == str(root)

    # another node reads the same root: status, verify, a kernel started from the published spec
    status = json.loads(_ok(_node(gluster, [*_cli(site), "status", "--json"])))
    assert status["published"]["generation"] == "0001"
    bid = status["envs"]["tiny"]["current"]
    # verify re-reads every file: the small env's (the big one's costs half a minute over FUSE)
    report = json.loads(_ok(_node(gluster, [*_cli(site), "verify", "tiny", "--json"])))
    assert report["ok"] is True and [b["build"] for b in report["builds"]] == [bid]
    jupyter = root / "current" / "share" / "jupyter"
    code = "import sys, ipykernel; print(sys.prefix)"
    out = _ok(_node(gluster, [sys.executable, "-c", kernel_script(jupyter, "stock", code)]))
    assert out.split() == [str(Root(root).build("py", status["envs"]["py"]["current"]))]

    # two builders on two nodes at once: one builds, the other waits for the lock and finds it done
    (site.dir / "envs" / "tiny" / "requirements.in").write_text("six\nidna\n")
    hubstock(site, "lock", "tiny", check=True)
    argv = [*_cli(site), "-v", "build", "tiny"]
    here = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    there = subprocess.Popen(
        gluster.on_node(argv, gluster.root_mount), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    outs = [p.communicate(timeout=600) for p in (here, there)]
    assert [p.returncode for p in (here, there)] == [0, 0], outs
    said = sorted(o.strip().rsplit("(", 1)[-1] for o, _ in outs)
    assert said == ["built)", "up to date)"], outs
    builds = [a for a in audit(Root(root)) if a["action"] == "build" and a.get("env") == "tiny"]
    assert len(builds) == 2  # six, then six and idna once

    # publish from the other node (a kernel renamed: a new generation); gc here drops the old
    # generation and the build only it used
    spec = site.dir / "kernels" / "stock" / "kernel.json"
    spec.write_text(spec.read_text().replace('"Python (stock)"', '"Python (stock, renamed)"'))
    assert "generation 0002 (published)" in _ok(_node(gluster, [*_cli(site), "publish"]))
    gc = json.loads(hubstock(site, "gc", "--keep", "1", "--json", check=True).stdout)
    assert gc["removed"]["generations"] == ["0001"] and gc["removed"]["builds"] == [f"tiny/{bid}"], gc
    assert sorted(p.name for p in Root(root).generations.iterdir()) == ["0002"]


_READER = """
import json, sys, time
from pathlib import Path
from hubstock.errors import HubstockError
from hubstock.hub.hooks import published_generation
from hubstock.store.root import Root
root, stop, ready = Root(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3])
reads = failed = wrong = 0
seen, errors = set(), []
while not stop.exists():
    reads += 1
    try:
        gen, manifest = published_generation(root)
    except (HubstockError, OSError) as e:
        failed += 1
        errors.append(str(e)[:200])
        continue
    if manifest.generation != gen.name or not (gen.kernels_dir / "stock" / "kernel.json").is_file():
        wrong += 1
    seen.add(gen.name)
    if reads == 1:
        ready.write_text("")
print(json.dumps({"reads": reads, "failed": failed, "wrong": wrong, "seen": len(seen), "errors": errors[:5]}))
"""


def _stage(root: Root, gen: str, server: ManifestBuild) -> None:
    """A generation as publish makes one: staged, manifest last, renamed into place, then current."""
    stage = staging(root, gen, "t")
    kdir = stage.kernels_dir / "stock"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(
        json.dumps({"argv": ["python"], "display_name": gen, "language": "python"})
    )
    stage.write_manifest(
        GenerationManifest(
            generation=gen,
            digest=gen,
            created="2026-12-04T00:00:00Z",
            by="test",
            default_kernel="stock",
            server=server,
        )
    )
    stage.path.rename(generation(root, gen).path)
    switch_current(root, gen)


def test_readers_on_another_node_see_every_publish_whole(gluster):
    root = Root(gluster.root_mount / "campaign")
    init_root(root.path)
    prefix = root.build("server", "s1")
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "jupyterhub-singleuser").write_text("#!/bin/sh\n")
    mark_complete(prefix, "s1")
    server = ManifestBuild(env="server", build="s1", prefix=str(prefix))
    _stage(root, "0001", server)
    stop = root.path.parent / "campaign-stop"
    ready = [root.path.parent / f"campaign-ready-{i}" for i in range(2)]
    readers = [
        subprocess.Popen(
            gluster.on_node(
                [sys.executable, "-c", _READER, str(root.path), str(stop), str(r)], gluster.root_mount
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    until("the readers on the other node reading", lambda: all(r.exists() for r in ready))
    for n in range(2, PUBLISHES + 2):
        _stage(root, f"{n:04d}", server)
    stop.write_text("")
    results = []
    for r in readers:
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, err
        results.append(json.loads(out))
    for res in results:
        assert res["reads"] > PUBLISHES and res["failed"] == 0 and res["wrong"] == 0, res
    assert max(res["seen"] for res in results) > 1, results  # they saw publishes happen

    # the hook on that node pins the newest generation and registers the session where gc sees it
    hook = textwrap.dedent(f"""
        from pathlib import Path
        from hubstock.hub.hooks import pin_session
        from hubstock.store.root import Root
        pin = pin_session(Root(Path({str(root.path)!r})), "alice", "", {{}})
        print(pin.session.generation)
    """)
    newest = f"{PUBLISHES + 1:04d}"
    assert _ok(_node(gluster, [sys.executable, "-c", hook])).strip() == newest
    assert [s.generation for s in live_sessions(root, 1)] == [newest]
