"""The pre-spawn and post-stop hooks, on a real root with fake spawners (no hub needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from hubstock.errors import SpawnError as SpawnException
from hubstock.hub.hooks import post_stop_hook, pre_spawn_hook
from hubstock.store.fs import atomic_symlink
from hubstock.store.generations import generation
from hubstock.store.records import GenerationManifest, KernelEntry, ManifestBuild
from hubstock.store.root import MARKER, Root
from hubstock.store.sessions import live_sessions


class FakeSpawner(SimpleNamespace):
    pass


def _spawner() -> FakeSpawner:
    return FakeSpawner(
        user=SimpleNamespace(name="alice"),
        name="",
        cmd=["jupyterhub-singleuser"],
        batchspawner_singleuser_cmd="batchspawner-singleuser",
        environment={"SLURM_CONF": "/etc/slurm/slurm.conf"},
        user_options={"queue": "debug"},
    )


def _publish(root: Root, gen: str = "0001", server_ok: bool = True) -> Path:
    server = root.build("server", "s1")
    (server / "bin").mkdir(parents=True, exist_ok=True)
    (server / "bin" / "jupyterhub-singleuser").write_text("#!/bin/sh\n")
    if server_ok:
        (server / MARKER).write_text("s1\n")
    g = root.generations / gen
    (g / "share" / "jupyter" / "kernels" / "stock").mkdir(parents=True)
    generation(root, gen).write_manifest(
        GenerationManifest(
            generation=gen,
            digest="d",
            created="2026-11-28T10:00:00+00:00",
            by="admin",
            default_kernel="stock",
            server=ManifestBuild(env="server", build="s1", prefix=str(server)),
            kernels=[
                KernelEntry(name="stock", display_name="Stock", env="py", build="p1"),
                KernelEntry(
                    name="stock-p0", display_name="Stock (p0)", env="py", build="p0", pinned_of="stock"
                ),
            ],
        )
    )
    atomic_symlink(f"generations/{gen}", root.current)
    return g


def test_the_hook_pins_the_session_to_the_current_generation(tmp_path):
    root = Root(tmp_path / "root")
    gen_dir = _publish(root)
    sp = _spawner()
    pre_spawn_hook(sp, root.path)
    server_bin = root.build("server", "s1") / "bin"
    assert sp.cmd == [str(server_bin / "jupyterhub-singleuser")]
    assert sp.batchspawner_singleuser_cmd == str(server_bin / "batchspawner-singleuser")
    assert sp.environment == {
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "PATH": f"{server_bin}:/usr/local/bin:/usr/bin:/bin",
        "JUPYTER_PATH": str(gen_dir / "share" / "jupyter"),
        "JUPYTER_CONFIG_PATH": str(gen_dir / "etc" / "jupyter"),
        "HUBSTOCK_GENERATION": "0001",
    }
    (session,) = live_sessions(root, 1)
    assert session.generation == "0001" and session.job_id is None
    assert session.builds == ["py/p0", "py/p1", "server/s1"]
    sp.hubstock_on_submit("4242")
    assert live_sessions(root, 1)[0].job_id == "4242"

    # a later publish does not change what this session was given
    _publish(root, "0002")
    assert sp.environment["JUPYTER_PATH"] == str(gen_dir / "share" / "jupyter")

    post_stop_hook(sp, root.path)
    assert live_sessions(root, 1) == []
    actions = [json.loads(line)["action"] for line in root.audit_log.read_text().splitlines()]
    assert actions == ["spawn", "submitted", "stop"]


def test_nothing_published_gives_a_clear_message(tmp_path):
    (tmp_path / "root").mkdir()  # a mount point, its shared filesystem not mounted
    with pytest.raises(SpawnException) as e:
        pre_spawn_hook(_spawner(), tmp_path / "root")
    assert f"storage of the notebook environments ({tmp_path / 'root'}) is not available" in str(
        e.value.jupyterhub_message
    )
    assert os.listdir(tmp_path / "root") == []
    Root(tmp_path / "root").ensure()
    with pytest.raises(SpawnException) as e:
        pre_spawn_hook(_spawner(), tmp_path / "root")
    assert "No notebook environment has been published" in e.value.jupyterhub_message
    assert not (tmp_path / "root" / "sessions").exists()


@pytest.mark.parametrize("damage", ["no-manifest", "incomplete-server", "no-kernels"])
def test_a_broken_generation_gives_a_clear_message(tmp_path, damage):
    root = Root(tmp_path / "root")
    gen_dir = _publish(root, server_ok=damage != "incomplete-server")
    if damage == "no-manifest":
        os.remove(gen_dir / "manifest.json")
    if damage == "no-kernels":
        os.rename(gen_dir / "share", gen_dir / "share.moved")
    with pytest.raises(SpawnException) as e:
        pre_spawn_hook(_spawner(), root.path)
    msg = e.value.jupyterhub_message
    assert "(generation 0001) is broken" in msg and "hubstock rollback" in msg


def test_in_the_hubs_event_loop_every_disk_write_runs_in_a_thread(tmp_path, monkeypatch):
    """JupyterHub awaits PreSpawnHook: the session record's fsync and the audit lines happen in
    worker threads, and the record is on disk before the hook returns (before the job is submitted)."""
    import asyncio
    import threading

    from hubstock.hub import hooks
    from hubstock.hub.hooks import PostStopHook, PreSpawnHook
    from hubstock.store import fs

    root = Root(tmp_path / "root")
    _publish(root)
    writers: list[str] = []
    real_fsync = fs.os.fsync

    def fsync(fd: int) -> None:
        writers.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(fs.os, "fsync", fsync)
    sp = _spawner()

    async def spawn_and_stop() -> str:
        loop_thread = threading.current_thread().name
        await PreSpawnHook(root.path)(sp)
        assert live_sessions(root, 1)[0].generation == "0001"  # durable before the job is submitted
        sp.hubstock_on_submit("77")
        await asyncio.gather(*hooks._pending)
        assert live_sessions(root, 1)[0].job_id == "77"
        await PostStopHook(root.path)(sp)
        return loop_thread

    loop_thread = asyncio.run(spawn_and_stop())
    assert writers and loop_thread not in writers, writers
    assert sp.environment["HUBSTOCK_GENERATION"] == "0001"
    assert live_sessions(root, 1) == []
