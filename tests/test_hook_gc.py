"""The spawn hook and gc: a generation a hook may have pinned is never removed.

The hook resolves ``current`` without the root's lock, so a publish and a ``gc --keep 1``
can run between its resolving and its session record. Each interleaving is played out
step by step (the hook in a thread, held at its record, gc in the test), and then both run
for real, side by side in two processes, many times: a generation a hook pinned is never
missing from its place, not even for the moment gc takes to read the records again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from tests.test_hooks import _publish, _spawner

import hubstock.admin.publish.gc as gc_module
import hubstock.hub.hooks as hooks
from hubstock.admin.publish.gc import gc
from hubstock.progress import Progress
from hubstock.site import Settings, Site
from hubstock.store.generations import GC_INTENT, Generation, doomed, resolve_current, switch_current
from hubstock.store.root import Root
from hubstock.store.sessions import live_sessions


def _site(root: Root) -> Site:
    return Site(dir=root.path.parent, settings=Settings(), root=root.path)


class HeldHook:
    """The pre-spawn hook in a thread, held just before it writes its session record."""

    def __init__(self, root: Root, monkeypatch) -> None:
        self.root = root
        self.at_record = threading.Event()
        self.go = threading.Event()
        self.spawner = _spawner()
        self.error: BaseException | None = None
        real = hooks.register
        first = [True]

        def held_register(r, session):
            if first[0]:
                first[0] = False
                self.at_record.set()
                assert self.go.wait(30)
            return real(r, session)

        monkeypatch.setattr(hooks, "register", held_register)
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            hooks.pre_spawn_hook(self.spawner, self.root.path)
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def start(self) -> HeldHook:
        self.thread.start()
        assert self.at_record.wait(30)
        return self

    def finish(self) -> str:
        """Let it write its record and check; the generation it pinned."""
        self.go.set()
        self.thread.join(30)
        assert self.error is None, self.error
        return self.spawner.environment["HUBSTOCK_GENERATION"]


def publish_again(root: Root, gen: str) -> None:
    """A new generation like the current one (same builds), made current: what publish does."""
    manifest = resolve_current(root).manifest().model_copy(update={"generation": gen})
    stage = root.generations / f".staging-{gen}"
    (stage / "share" / "jupyter" / "kernels" / "stock").mkdir(parents=True)
    Generation(gen, stage).write_manifest(manifest)
    stage.rename(root.generations / gen)
    switch_current(root, gen)


def _pinned_exists(root: Root, gen: str) -> bool:
    return (root.generations / gen / "manifest.json").is_file()


def test_gc_between_the_hooks_resolve_and_its_record(tmp_path, monkeypatch):
    """gc ran whole before the record: the hook finds its generation gone and pins the new one."""
    root = Root(tmp_path / "root")
    _publish(root, "0001")
    hook = HeldHook(root, monkeypatch).start()  # resolved 0001
    _publish(root, "0002")
    plan = gc(_site(root), 1, False, Progress(False))
    assert plan.generations == ["0001"]
    pinned = hook.finish()
    assert pinned == "0002" and _pinned_exists(root, pinned)
    assert [s.generation for s in live_sessions(root, 1)] == ["0002"]


def test_the_record_lands_after_gc_planned_and_before_it_announced(tmp_path, monkeypatch):
    """gc read the records before the hook wrote its own, and the hook checked before gc
    announced what it removes: gc reads the records again and keeps the generation the hook
    pinned, which never leaves its place, not even for a moment."""
    root = Root(tmp_path / "root")
    _publish(root, "0001")
    hook = HeldHook(root, monkeypatch).start()
    _publish(root, "0002")
    real_announce, real_move = gc_module.announce_removal, gc_module.move_to_trash
    state: dict = {"moved": []}

    def announce(r, gens):
        state["pinned"] = hook.finish()  # the hook writes its record and finds 0001 still there
        return real_announce(r, gens)

    def move(path, trash):
        state["moved"].append(path.name)
        return real_move(path, trash)

    monkeypatch.setattr(gc_module, "announce_removal", announce)
    monkeypatch.setattr(gc_module, "move_to_trash", move)
    plan = gc(_site(root), 1, False, Progress(False))
    assert state["pinned"] == "0001"
    assert _pinned_exists(root, "0001") and plan.generations == [] and "0001" in plan.kept_generations
    assert "0001" not in state["moved"]
    assert not (root.generations / GC_INTENT).exists()  # withdrawn once gc ended


def test_the_record_lands_after_gc_announced(tmp_path, monkeypatch):
    """The hook wrote its record and checked once gc had announced the generation's removal
    (before anything moved): it pins the current generation instead, and gc removes the old."""
    root = Root(tmp_path / "root")
    _publish(root, "0001")
    hook = HeldHook(root, monkeypatch).start()
    _publish(root, "0002")
    real_move = gc_module.move_to_trash
    state = {"moves": 0}

    def move(path, trash):
        if state["moves"] == 0:
            assert doomed(root) == {"0001"}
            state["pinned"] = hook.finish()
        state["moves"] += 1
        return real_move(path, trash)

    monkeypatch.setattr(gc_module, "move_to_trash", move)
    plan = gc(_site(root), 1, False, Progress(False))
    assert state["pinned"] == "0002" and _pinned_exists(root, "0002")
    assert plan.generations == ["0001"] and not (root.generations / "0001").exists()


def test_the_record_lands_after_gc_moved_the_generation_away(tmp_path, monkeypatch):
    """The hook wrote its record once gc had moved the generation away: the hook sees it gone
    and pins the current one; gc, reading the records again, finds nothing to bring back."""
    root = Root(tmp_path / "root")
    _publish(root, "0001")
    hook = HeldHook(root, monkeypatch).start()
    _publish(root, "0002")
    real_live = gc_module.live_sessions
    state = {"reads": 0}

    def live(r, hours):
        state["reads"] += 1
        if state["reads"] == 3:  # gc's third reading: after planning, after announcing, after the move
            state["pinned"] = hook.finish()
        return real_live(r, hours)

    monkeypatch.setattr(gc_module, "live_sessions", live)
    gc(_site(root), 1, False, Progress(False))
    assert state["pinned"] == "0002" and _pinned_exists(root, "0002")
    assert not (root.generations / "0001").exists()


HUB = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from types import SimpleNamespace
    from hubstock.errors import SpawnError
    from hubstock.hub.hooks import post_stop_hook, pre_spawn_hook
    root, n = Path(sys.argv[1]), int(sys.argv[2])
    lost = spawns = refused = 0
    for i in range(n):
        sp = SimpleNamespace(user=SimpleNamespace(name=f"u{i % 7}"), name="", cmd=[], environment={},
                             user_options={})
        try:
            pre_spawn_hook(sp, root)
        except SpawnError as e:
            refused += 1
            continue
        spawns += 1
        gen = root / "generations" / sp.environment["HUBSTOCK_GENERATION"] / "manifest.json"
        for _ in range(3):  # the session runs a while: its generation must stay
            if not gen.is_file():
                lost += 1
                break
            time.sleep(0.002)
        post_stop_hook(sp, root)
    print(json.dumps({"spawns": spawns, "lost": lost, "refused": refused}))
""")

ADMIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from hubstock.admin.publish.gc import gc
    from hubstock.progress import Progress
    from hubstock.site import Settings, Site
    from hubstock.store.root import Root
    from tests.test_hook_gc import publish_again
    root, n = Root(Path(sys.argv[1])), int(sys.argv[2])
    site = Site(dir=root.path.parent, settings=Settings(), root=root.path)
    for i in range(2, n + 2):
        with root.locked():
            publish_again(root, f"{i:04d}")
        gc(site, 1, False, Progress(False))
""")


@pytest.mark.integration
def test_hooks_and_gc_side_by_side_never_lose_a_pinned_generation(tmp_path):
    root = Root(tmp_path / "root")
    _publish(root, "0001")
    cwd = Path(__file__).resolve().parent.parent
    hub = subprocess.Popen(
        [sys.executable, "-c", HUB, str(root.path), "400"], stdout=subprocess.PIPE, cwd=cwd
    )
    admin = subprocess.Popen([sys.executable, "-c", ADMIN, str(root.path), "150"], cwd=cwd)
    out, _ = hub.communicate(timeout=600)
    assert admin.wait(600) == 0 and hub.returncode == 0
    result = json.loads(out)
    assert result == {"spawns": 400, "lost": 0, "refused": 0}
