"""Running the scheduler's commands from the hub: a shell command line with a deadline, killed
with everything it started when the deadline passes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass


@dataclass
class Result:
    """What a command printed and how it ended (``returncode`` None: it was killed after ``timeout``)."""

    out: str
    err: str
    returncode: int | None
    took: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def run_shell(
    cmd: str, env: Mapping[str, str] | None, timeout: float, stdin: str | None = None
) -> Result:
    """Run ``cmd`` (a shell command line); kill it (its whole process group) after ``timeout`` seconds."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_shell(
        cmd,
        env=dict(env) if env is not None else None,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except TimeoutError:
        kill_group(proc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        return Result("", f"no answer within {timeout:g} s", None, time.monotonic() - t0)
    except asyncio.CancelledError:
        kill_group(proc)
        raise
    return Result(
        out.decode(errors="replace").strip(),
        err.decode(errors="replace").strip(),
        proc.returncode,
        time.monotonic() - t0,
    )


class CommandFailed(RuntimeError):
    """batchspawner's ``run_command`` contract for a command that failed (its message is what the
    command printed on stderr), carrying the whole :class:`Result`."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.err or result.out or f"exit status {result.returncode}")
        self.result = result


#: how the hub runs one scheduler command: (command line, environment, timeout, stdin) -> its result
Runner = Callable[[str, Mapping[str, str] | None, float, str | None], Awaitable[Result]]


def kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` and what it started (it runs in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
