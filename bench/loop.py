"""The time a coroutine holds the event loop: the sum of its steps, without what it awaits.

JupyterHub awaits the pre-spawn hook in the hub's one event loop; every step of the hook that
runs there (between two awaits) delays every other request of the hub. Work the hook hands to a
thread (``asyncio.to_thread``) runs meanwhile and does not count.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Generator
from typing import Any


class LoopTime(Coroutine[Any, Any, Any]):
    """Wraps a coroutine; ``held`` is the time its steps ran (``send`` and ``throw``), in seconds.

    asyncio's Task steps a coroutine by calling exactly these two methods, so a task made of this
    wrapper (``loop.create_task(LoopTime(coro))``) behaves as one made of ``coro``.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self.held = 0.0

    def send(self, value: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._coro.send(value)
        finally:
            self.held += time.perf_counter() - t0

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        t0 = time.perf_counter()
        try:
            return (
                self._coro.throw(typ, val, tb) if val is not None or tb is not None else self._coro.throw(typ)
            )
        finally:
            self.held += time.perf_counter() - t0

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()


async def held_on_loop(coro: Coroutine[Any, Any, Any]) -> float:
    """Run ``coro`` as a task of the running loop; the seconds it held the loop."""
    import asyncio

    timed = LoopTime(coro)
    await asyncio.get_running_loop().create_task(timed)
    return timed.held
