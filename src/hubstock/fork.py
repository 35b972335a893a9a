"""Forked helpers of a command: a child that runs a function of this process, not a new interpreter.

A command that would start a second Python for a helper (the smoke-test worker of ``publish``, the
conda installer of ``build``) forks instead, while it still has one thread: the child has the
modules the command already imported and starts its own imports while the command goes on. This
module imports only the standard library's smallest parts, so a command that forks at its start
pays nothing for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence


def close_inherited_fds(keep: Sequence[int] = ()) -> None:
    """In a forked child: close every file descriptor above stderr but ``keep``, as ``subprocess``
    does before it runs a program (``close_fds``). A fork shares the parent's open files: a copy of
    the root's lock kept open by a child would hold the lock after the parent let go of it."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor, already gone
                os.close(fd)


#: prctl(2): the signal a process gets when its parent ends
_PR_SET_PDEATHSIG = 1


def fork_child(
    child: Callable[[], int],
    *,
    stdio: tuple[int, int, int] | None = None,
    keep: Sequence[int] = (),
    die_with_parent: bool = False,
) -> int:
    """Fork this process (it must have one thread: forking one with threads is not safe) and run
    ``child()`` in the fork, which then ends (``os._exit``) with what it returned, 1 on any
    exception. Returns the fork's PID, to the parent.

    In the fork, before ``child``: SIGINT is ignored (the parent handles Ctrl-C and stops the
    fork); ``stdio`` (three descriptors) become its standard streams, and an exception's traceback
    goes there; every other descriptor it inherited but ``keep`` is closed; the working directory
    leaves ``sys.path``, as for an interpreter started with ``-P`` (nothing there shadows a module
    the fork imports); with ``die_with_parent`` it is killed when the parent ends, however the
    parent ends (even by SIGKILL).
    """
    for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1  # pragma: no cover (the rest runs in the fork)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if die_with_parent:
            die_with(parent)
        if stdio:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        close_inherited_fds(keep)  # stdio's own descriptors too: 0, 1 and 2 are theirs now
        if stdio:
            sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 (until os._exit)
            sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
            del sys.path[0]
        code = child()
    except BaseException:  # noqa: BLE001 (the fork must end here, whatever happened)
        if stdio:
            import traceback

            with contextlib.suppress(Exception):
                traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def die_with(parent: int) -> None:  # pragma: no cover (runs in a fork)
    """Be killed when ``parent`` ends: a child that outlived it would go on with work (writing into
    a build) that the next command cleans up."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)
