"""``hook``: hubstock's pre-spawn hook per call, all of its work and the part that holds the hub's
event loop."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import Bench, median, result, timings

# --------------------------------------------------------------------------- hook


def hook(b: Bench) -> list[dict[str, Any]]:
    """The pre-spawn hook per call on a real SlurmSpawner, against that spawner's own ``get_env()``."""
    from types import SimpleNamespace

    from jupyterhub.objects import Hub

    from hubstock.hub.hooks import post_stop_hook, pre_spawn_hook
    from hubstock.hub.spawner import SlurmSpawner

    root = b.hub_site().parent / "root"
    user = SimpleNamespace(name="nobody", url="/user/nobody/", escaped_name="nobody")  # get_env reads pwd
    spawner = SlurmSpawner(user=user, hub=Hub(), name="")
    spawner.api_token = secrets.token_hex(16)
    calls = 20 if b.tiny else 200

    def per_call_ms(fn: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) / calls * 1000

        return run

    hooks, envs = b.interleaved(
        per_call_ms(lambda: pre_spawn_hook(spawner, root)), per_call_ms(spawner.get_env)
    )
    held, envs_held = b.interleaved(_hook_on_loop_ms(spawner, root, calls), per_call_ms(spawner.get_env))
    post_stop_hook(spawner, root)
    return [
        result(
            "hook",
            median(hooks),
            "ms",
            "SlurmSpawner.get_env()",
            median(envs),
            "report both (no target)",
            calls_per_run=calls,
            **timings(hooks, envs),
        ),
        result(
            "hook",
            median(held),
            "ms",
            "SlurmSpawner.get_env()",
            median(envs_held),
            "report: the disk work off the loop",
            name="hook_on_loop",
            calls_per_run=calls,
            **timings(held, envs_held),
        ),
    ]


def _hook_on_loop_ms(spawner: Any, root: Path, calls: int) -> Callable[[], float]:
    """Per call, the time JupyterHub's event loop is held by ``PreSpawnHook`` (awaited as the hub
    awaits it: its reading of the generation, the record's fsync and the audit line run in threads)."""
    import asyncio

    from bench.loop import held_on_loop
    from hubstock.hub.hooks import PreSpawnHook

    hook = PreSpawnHook(root)

    async def all_calls() -> float:
        return sum([await held_on_loop(hook(spawner)) for _ in range(calls)])

    return lambda: asyncio.run(all_calls()) / calls * 1000
