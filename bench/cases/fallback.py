"""``status_fallback``: what an answer the hub cannot trust costs the scheduler, and what polling
thousands of servers holds the hub's event loop.

Real ``hubstock.hub.spawner.SlurmSpawner`` objects (one per server, each with its job) share the
hub's status poller, as in a hub; their ``run_command`` is a site's wrapper that answers at once
(the batched query with what the case needs, a job's own query with ``RUNNING``) and counts the
calls, so the figures are the hub's own work and the number of scheduler commands it runs.

- ``status_fallback_calls``: every server polled within one interval after the batched query
  answered nothing (exit 0): the scheduler commands run, against the same poll with the bound off
  (every unlisted job looked up alone, as before the bound).
- ``status_loop_stall_1000`` / ``_5000``: the longest time the event loop could not serve
  anything else while every server is polled within the same moment (their poll timers fire a
  hundred per pass of the loop), with an answer that lists every job (the spawners made before
  are frozen out of Python's garbage collection while it is measured: a full collection of
  them is no part of polling); against batchspawner's own per-job query of the same servers (its
  ``query_job_status``, which its ``poll`` awaits), through the same answering ``run_command``.
"""

from __future__ import annotations

import asyncio
import gc
import time
from types import SimpleNamespace
from typing import Any

from .common import Bench, median, result, timings

_BOUND_GOAL = "scheduler commands in the interval <= the bound (20) + the batched query"
_STALL_GOAL = "longest stall <= 50 ms"


def status_fallback(b: Bench) -> list[dict[str, Any]]:
    """The two figures above (``status_fallback_calls``, ``status_loop_stall_N``)."""
    import logging

    from hubstock.hub.status import forget_pollers

    logging.getLogger("hubstock.hub.status").setLevel(logging.ERROR)  # its "not trusted" line, on purpose
    n_calls = 100 if b.tiny else 1000
    stalls = (200, 500) if b.tiny else (1000, 5000)
    out: list[dict[str, Any]] = []
    try:
        bounded, unbounded = b.interleaved(
            lambda: _calls_after_an_empty_answer(n_calls, bound=20),
            lambda: _calls_after_an_empty_answer(n_calls, bound=n_calls * 2),
        )
        value = median(bounded)
        out.append(
            result(
                "status_fallback",
                value,
                "commands",
                f"the same poll with the bound off ({n_calls} servers)",
                median(unbounded),
                _BOUND_GOAL,
                name="status_fallback_calls",
                met=value <= 21,
                servers=n_calls,
                bound=20,
                **timings(bounded, unbounded),
            )
        )
        for n in stalls:
            ours, base = b.interleaved(
                lambda n=n: _longest_stall_ms(n, hubstock=True),
                lambda n=n: _longest_stall_ms(n, hubstock=False),
            )
            value = median(ours)
            out.append(
                result(
                    "status_fallback",
                    value,
                    "ms",
                    f"batchspawner's per-job query of {n} servers",
                    median(base),
                    _STALL_GOAL,
                    name=f"status_loop_stall_{n}",
                    met=value <= 50,
                    servers=n,
                    **timings(ours, base),
                )
            )
    finally:
        forget_pollers()
    return out


def _spawners(n: int, answer: str, bound: int) -> tuple[list[Any], list[str]]:
    """``n`` SlurmSpawners, each with a running job, whose batched query answers ``answer``
    (``{ids}``: every job listed) and whose job queries answer RUNNING; the commands they run."""
    from jupyterhub.objects import Hub

    from hubstock.hub.spawner import SlurmSpawner

    calls: list[str] = []

    class Site(SlurmSpawner):
        async def run_command(self, cmd: str, input: str | None = None, env: Any = None) -> str:
            calls.append(cmd)
            if "%i|" in cmd:
                ids = cmd.split(" -j ", 1)[1].split(" ", 1)[0].split(",")
                return answer.replace("{ids}", "\n".join(f"{i}|RUNNING node042|None" for i in ids))
            return "RUNNING node042"

    hub = Hub()
    user = SimpleNamespace(name="nobody", url="/user/nobody/", escaped_name="nobody")  # get_env reads pwd
    spawners = []
    for i in range(n):
        sp = Site(user=user, hub=hub, name=f"s{i}")
        sp.load_state({"job_id": str(100000 + i), "job_status": "RUNNING node042"})
        spawners.append(sp)
    poller = spawners[0]._poller()
    poller.fallback_per_interval = bound
    return spawners, calls


def _calls_after_an_empty_answer(n: int, bound: int) -> float:
    """Scheduler commands run while ``n`` servers are polled once, the batched answer being empty."""
    from hubstock.hub.status import forget_pollers

    forget_pollers()
    spawners, calls = _spawners(n, "", bound)

    async def poll_all() -> None:
        states = await asyncio.gather(*(sp.poll() for sp in spawners))
        if any(s is not None for s in states):
            raise RuntimeError("a server was taken to be stopped after an empty answer")

    asyncio.run(poll_all())
    return float(len(calls))


def _longest_stall_ms(n: int, hubstock: bool) -> float:
    """The longest gap (ms) a 1 ms ticker saw while ``n`` servers were polled at once."""
    from batchspawner import BatchSpawnerBase

    from hubstock.hub.status import forget_pollers

    forget_pollers()
    spawners, _ = _spawners(n, "{ids}", 20)
    # the objects made above are a long-running hub's survivors: a full collection of them (100 ms
    # and more with 5,000 spawners) is Python's, rare in a hub that runs, and not what is measured
    gc.collect()
    gc.freeze()

    async def base_poll(sp: Any) -> Any:
        return await BatchSpawnerBase.query_job_status(sp)

    async def run() -> float:
        longest, done = 0.0, False

        async def ticker() -> None:
            nonlocal longest
            last = time.perf_counter()
            while not done:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                longest = max(longest, now - last - 0.001)
                last = now

        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.01)
        polls = []
        for i, sp in enumerate(spawners):  # JupyterHub's poll timers fire: a hundred per loop pass
            polls.append(asyncio.ensure_future(sp.poll() if hubstock else base_poll(sp)))
            if i % 100 == 99:
                await asyncio.sleep(0)
        await asyncio.gather(*polls)
        done = True
        await tick
        return longest * 1000

    try:
        return asyncio.run(run())
    finally:
        gc.unfreeze()
