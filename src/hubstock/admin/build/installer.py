"""The conda installer (py-rattler) in a process forked at the command's start.

``hubstock build`` forks it before it loads the site (:func:`prestart`, from the CLI, while the
command has one thread): the fork imports asyncio and py-rattler (about 0.06 s) on the other core
while the command imports its settings machinery and reads the lock, so that the first
install finds the installer ready. Each request installs one env's verified archives into its
build; the installer's progress (a package extracted, a package linked) comes back as it
happens, for the :class:`~.seals.Sealer` of the command, which checks and seals each package while
the installer works on the others.

The fork imports the standard library, py-rattler and nothing of hubstock's models. A caller
that did not prestart one gets one for its install (:func:`Installer.start`): a fork too when it
has one thread, else a new interpreter (``python -P -m`` this module), since forking a process
with threads is not safe. Either way, py-rattler never runs in the caller's own process.
Requests and answers are JSON lines on two pipes; the installer's stderr is the caller's
(rattler's progress bars on a terminal).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, BinaryIO

#: the installer the command prestarted (None: install in this process)
PRESTARTED: ContextVar[Installer | None] = ContextVar("hubstock_installer", default=None)


class InstallFailed(Exception):
    """The installer's own error: its words, and the errno of an OSError (None otherwise)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@contextlib.contextmanager
def prestart() -> Iterator[Installer | None]:
    """Fork the installer for the commands run in this context (when this process has one thread:
    forking a process with threads is not safe), and stop it at the end."""
    if threading.active_count() != 1:
        yield None
        return
    installer = Installer.start()
    token = PRESTARTED.set(installer)
    try:
        yield installer
    finally:
        PRESTARTED.reset(token)
        installer.close()


class Installer:
    """The command's side of the forked installer."""

    def __init__(self, pid: int, requests: BinaryIO, answers: BinaryIO) -> None:
        self.pid = pid
        self._requests = requests
        self._answers = answers
        self._closed = False
        self._asked = False

    @classmethod
    def start(cls) -> Installer:
        """A fork of this process when it has one thread, else a new interpreter running
        this module; either is killed when this process ends."""
        r_req, w_req = os.pipe()
        r_ans, w_ans = os.pipe()
        try:
            if threading.active_count() == 1:
                from ...fork import fork_child

                child = lambda: _serve(os.fdopen(r_req, "rb"), os.fdopen(w_ans, "wb"))  # noqa: E731
                pid = fork_child(child, keep=(r_req, w_ans), die_with_parent=True)
            else:
                # -P: nothing in the working directory shadows a module (PYTHONPATH still counts);
                # the pipes become its stdin and stdout (every other descriptor closes on exec)
                argv = [sys.executable, "-P", "-m", __name__, str(os.getpid())]
                dup = [(os.POSIX_SPAWN_DUP2, r_req, 0), (os.POSIX_SPAWN_DUP2, w_ans, 1)]
                pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=dup)
        finally:
            os.close(r_req)
            os.close(w_ans)
        return cls(pid, os.fdopen(w_req, "wb"), os.fdopen(r_ans, "rb"))

    def __enter__(self) -> Installer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def install(
        self,
        archives: list[tuple[Path, str, str]],
        prefix: Path,
        cache_dir: Path,
        platform: str,
        show_progress: bool,
        on_event: Callable[[str, int], None],
    ) -> None:
        """Install ``archives`` (each: the verified local file, the URL to record, the channel)
        into ``prefix``; ``on_event(what, i)`` hears ``extracting``, ``extracted`` and ``linked``
        for the ``i``-th archive as the installer reports them. An error of the installer is
        :class:`InstallFailed`; any other end of it a :class:`RuntimeError`. On an interruption
        the installer is stopped before this returns: nothing writes into ``prefix`` after it."""
        request = {
            "archives": [[str(a), url, channel] for a, url, channel in archives],
            "prefix": str(prefix),
            "cache_dir": str(cache_dir),
            "platform": platform,
            "show_progress": show_progress,
        }
        self._asked = True
        try:
            self._requests.write(json.dumps(request).encode() + b"\n")
            self._requests.flush()
            for line in self._answers:
                answer = json.loads(line)
                if "event" in answer:
                    on_event(answer["event"], answer["i"])
                elif "error" in answer:
                    raise InstallFailed(answer["error"], answer.get("errno"))
                else:
                    return
        except BaseException:
            self._stop()
            raise
        self._stop()
        raise RuntimeError(f"the installer process {self.pid} ended without an answer")

    def _stop(self) -> None:
        if not self._closed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.close()

    def close(self) -> None:
        """End the installer: one never asked is stopped at once (it may still be importing: a
        build with nothing to install does not wait for that), one that installed leaves when its
        requests end; the command waits for it."""
        if self._closed:
            return
        self._closed = True
        if not self._asked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for stream in (self._requests, self._answers):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


# --- the fork's side -----------------------------------------------------------------------------


def _serve(requests: BinaryIO, answers: BinaryIO) -> int:  # pragma: no cover (runs in the fork)
    import asyncio

    from rattler import InstallerReporter  # the imports this process exists to make early
    from rattler.exceptions import InstallerError, LinkError, TransactionError

    lock = threading.Lock()

    def say(answer: dict[str, Any]) -> None:  # from the installer's threads too
        with lock:
            answers.write(json.dumps(answer).encode() + b"\n")
            answers.flush()

    class Reporter(InstallerReporter):
        def __init__(self, index: dict[str, int]) -> None:
            self.index = index
            self.tokens: dict[int, int] = {}
            self.count = itertools.count()  # next() is atomic: the installer's threads call in

        def _token(self, package_name: str) -> int:
            token = next(self.count)
            self.tokens[token] = self.index.get(package_name, -1)
            return token

        def on_populate_cache_start(self, operation: int, package_name: str) -> int:
            token = self._token(package_name)
            say({"event": "extracting", "i": self.tokens[token]})
            return token

        def on_populate_cache_complete(self, cache_entry: int) -> None:
            say({"event": "extracted", "i": self.tokens.get(cache_entry, -1)})

        def on_link_start(self, operation: int, package_name: str) -> int:
            return self._token(package_name)

        def on_link_complete(self, index: int) -> None:
            say({"event": "linked", "i": self.tokens.get(index, -1)})

    for line in requests:
        request = json.loads(line)
        try:
            asyncio.run(_install(request, Reporter))
        except (InstallerError, LinkError, TransactionError, OSError) as e:
            say({"error": str(e) or type(e).__name__, "errno": getattr(e, "errno", None)})
            continue
        except Exception as e:  # noqa: BLE001 (anything else py-rattler raises: said, not lost)
            say({"error": f"{type(e).__name__}: {e}", "errno": None})
            continue
        say({"done": True})
    return 0


async def _install(request: dict[str, Any], reporter: Any) -> None:  # pragma: no cover (in the fork)
    from rattler import RepoDataRecord, Subdir, install

    records = []
    for path, url, channel in request["archives"]:
        r = await RepoDataRecord.from_package_archive(Path(path))
        r.url = url
        r.channel = channel
        records.append(r)
    index = {r.name.normalized: i for i, r in enumerate(records)}
    await install(
        records,
        target_prefix=request["prefix"],
        cache_dir=request["cache_dir"],
        platform=Subdir(request["platform"]),
        show_progress=request["show_progress"],
        reporter=None if request["show_progress"] else reporter(index),
        execute_link_scripts=False,
    )


if __name__ == "__main__":  # pragma: no cover (the installer of a caller with threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller stops it on Ctrl-C
    from ...fork import die_with

    die_with(int(sys.argv[1]))
    raise SystemExit(_serve(sys.stdin.buffer, sys.stdout.buffer))
