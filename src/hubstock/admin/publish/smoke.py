"""Smoke tests of kernels: start each from a kernels folder with jupyter_client and run its check.

``hubstock publish`` runs them in a worker process that it starts before it loads the site: the
worker imports jupyter_client (the slowest import of a publish, about 0.1 s) on another core while
the command loads its own modules and stages the generation. The worker is a fork of the command,
which has one thread then (so no second interpreter starts: about 0.05 s), or else a new process
(``python -m hubstock.admin.publish.smoke``). The worker takes one request as JSON on stdin and
answers with one JSON document on stdout; standard input closed without a request means
nothing is to be tested. This module imports only the standard library (jupyter_client only
where kernels are started), so the worker starts without hubstock's models.

A kernel passes when its process runs from the build it names and its check code runs without
error. Kernels are tested concurrently, each with its own home and IPC sockets in a private
temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Empty
from typing import Any

from ...errors import PublishError
from ...fork import fork_child

#: a kernel's failure: (the reason, in a few words, and the end of its log); None: it passed
Outcome = tuple[str, str] | None

#: how long the command waits for the worker beyond the smoke timeout (kernel shutdowns, start-up)
_WORKER_GRACE_S = 60.0


@dataclass(frozen=True)
class SmokeJob:
    """One kernel to smoke-test: its kernelspec is ``<kernels_dir>/<name>/kernel.json`` (its own
    ``kernels_dir`` when set: a kernel for some groups only is published apart)."""

    name: str
    #: the build the kernel's process must run from
    prefix: str
    #: code run in the kernel ("" for none)
    check: str
    #: the kernelspec's executable, named when it does not exist
    argv0: str
    #: whether the kernel's executable must lie inside ``prefix`` (a conda build's own); a venv's
    #: python is its site interpreter, a module kernel's the module's: their check code says more
    exe_in_prefix: bool = True
    kernels_dir: str | None = None


def run_smoke(jobs: Sequence[SmokeJob], kernels_dir: Path, timeout: float) -> list[Outcome]:
    """Smoke-test ``jobs`` in this process, concurrently; one outcome per job, in order."""
    if not jobs:
        return []
    import asyncio  # here, not at the top: the command that starts the worker does not need it

    with tempfile.TemporaryDirectory(prefix="hubstock-smoke-") as tmp, _quiet_jupyter_client():
        return asyncio.run(_smoke_all(jobs, kernels_dir, Path(tmp), timeout))


class SmokeWorker:
    """The worker process that runs one :func:`run_smoke` request.

    Start it as early as possible (:meth:`start`), hand it the request when the kernels are
    staged (:meth:`run`), and :meth:`close` it in any case (a context manager): an unused worker
    is stopped, one that is testing is asked to shut its kernels down first.
    """

    def __init__(self, proc: subprocess.Popen[bytes] | _Forked) -> None:
        self._proc = proc
        self._asked = False

    @classmethod
    def start(cls) -> SmokeWorker:
        """A fork of this process while it has one thread (no second interpreter to start: the
        command forks before it loads the site), else a new one (``python -m`` this module)."""
        if threading.active_count() == 1:
            return cls(_Forked.start())
        proc = subprocess.Popen(
            # -P: nothing in the working directory shadows a module (PYTHONPATH still counts)
            [sys.executable, "-P", "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc)

    def __enter__(self) -> SmokeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, jobs: Sequence[SmokeJob], kernels_dir: Path, timeout: float) -> list[Outcome]:
        """The outcome of each of ``jobs``, as :func:`run_smoke` gives it, from the worker."""
        if self._asked:
            raise RuntimeError("a smoke-test worker takes one request")
        self._asked = True
        request = {"kernels_dir": str(kernels_dir), "timeout": timeout, "jobs": [asdict(j) for j in jobs]}
        try:
            out, err = self._proc.communicate(json.dumps(request).encode(), timeout=timeout + _WORKER_GRACE_S)
        except subprocess.TimeoutExpired:
            self.close()
            raise PublishError(
                f"the smoke tests did not finish within {timeout + _WORKER_GRACE_S:.0f} s; nothing was "
                "published, the current kernels stay. Run `hubstock -v publish` to see where they stop."
            ) from None
        try:
            answer = json.loads(out)
            outcomes = answer["outcomes"]
            if self._proc.returncode != 0 or not isinstance(outcomes, list) or len(outcomes) != len(jobs):
                raise ValueError(outcomes)
        except (ValueError, KeyError, TypeError):
            said = err.decode(errors="replace").strip()
            last = said.splitlines()[-1] if said else f"exit status {self._proc.returncode}"
            raise PublishError(
                f"the smoke-test worker failed ({last}); nothing was published, the current kernels "
                "stay. Check that jupyter_client is installed beside hubstock (`pip install hubstock`).",
                detail=said,
            ) from None
        return [tuple(o) if o else None for o in outcomes]

    def close(self) -> None:
        """Stop the worker if it still runs: at once if it has no request (it started nothing),
        else with SIGTERM first, so that it shuts down the kernels it started."""
        proc = self._proc
        if proc.poll() is not None:
            return
        if not self._asked:
            proc.kill()
        else:
            proc.terminate()
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# --- the tests themselves -------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_jupyter_client() -> Iterator[None]:
    """jupyter_client logs its own account of a kernel that fails to start; hubstock's one
    sentence says it (naming the kernel and the fix), so nothing is logged before it."""
    loggers = [logging.getLogger(name) for name in ("traitlets", "jupyter_client")]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, saved, strict=True):
            lg.disabled = was


async def _smoke_all(jobs: Sequence[SmokeJob], kernels_dir: Path, tmp: Path, timeout: float) -> list[Outcome]:
    import asyncio

    return list(await asyncio.gather(*(_smoke_one(j, kernels_dir, tmp, timeout) for j in jobs)))


async def _smoke_one(job: SmokeJob, kernels_dir: Path, tmp: Path, timeout: float) -> Outcome:
    import asyncio

    if job.kernels_dir:
        kernels_dir = Path(job.kernels_dir)

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    home = tmp / job.name
    home.mkdir()
    log_path = home / "kernel.log"
    env = {
        **os.environ,
        "HOME": str(home),
        "IPYTHONDIR": str(home / ".ipython"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "MPLCONFIGDIR": str(home / ".matplotlib"),
        "JUPYTER_PATH": str(kernels_dir.parent),
    }
    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    (home / "runtime").mkdir()
    # IPC sockets in a private folder: kernels started together cannot race for TCP ports
    km = AsyncKernelManager(
        kernel_name=job.name, kernel_spec_manager=ksm, transport="ipc", ip=str(home / "runtime" / "k")
    )
    km.connection_file = str(home / "runtime" / f"kernel-{job.name}.json")
    with open(log_path, "wb") as log:
        try:
            await asyncio.wait_for(_start_and_check(km, job, env, log), timeout)
            return None
        except TimeoutError:
            return (f"it did not answer within {timeout:.0f} s", _tail(log_path))
        except _SmokeFailure as e:
            return (str(e), "\n".join(x for x in (_tail(log_path), e.detail) if x))
        except FileNotFoundError as e:
            exe = e.filename or job.argv0
            return (f"its executable {exe} does not exist; fix 'argv' in its kernel.json", _tail(log_path))
        except (OSError, RuntimeError) as e:
            return (f"it could not be started ({e})", _tail(log_path))
        finally:
            await _shutdown(km)


class _SmokeFailure(Exception):
    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


async def _start_and_check(km: Any, job: SmokeJob, env: dict[str, str], log: Any) -> None:
    await km.start_kernel(env=env, stdout=log, stderr=log)
    kc = km.client()
    kc.start_channels()
    try:
        await _wait_ready(km, kc)
        pid = getattr(km.provisioner, "pid", None)
        if pid and job.exe_in_prefix:
            exe = os.path.realpath(f"/proc/{pid}/exe")
            prefix = os.path.realpath(job.prefix)
            if not exe.startswith(prefix + os.sep):
                raise _SmokeFailure(f"it runs {exe}, which is not inside its build {prefix}")
        if job.check:
            await _execute(kc, job.check)
    finally:
        kc.stop_channels()


async def _wait_ready(km: Any, kc: Any) -> None:
    """One kernel_info request, then wait for its reply, watching the process meanwhile.

    (jupyter_client's own wait_for_ready sends a request every second and, once a kernel
    has died, can block the whole event loop in a zmq send; one request cannot.)
    """
    msg_id = kc.kernel_info()
    while True:
        try:
            reply = await kc.get_shell_msg(timeout=0.5)
        except Empty:
            if not await km.is_alive():
                raise _SmokeFailure("it exited while starting") from None
            continue
        if reply["parent_header"].get("msg_id") == msg_id:
            return


async def _execute(kc: Any, code: str) -> None:
    msg_id = kc.execute(code, store_history=False)
    reply = await kc.get_shell_msg(timeout=None)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = await kc.get_shell_msg(timeout=None)
    content = reply["content"]
    if content.get("status") != "ok":
        ename = content.get("ename", "error")
        evalue = content.get("evalue", "")
        tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content.get("traceback", [])))
        raise _SmokeFailure(f"its check {code!r} raised {ename}: {evalue}", tb)


async def _shutdown(km: Any) -> None:
    try:
        if km.has_kernel and await km.is_alive():
            await km.shutdown_kernel(now=True)
        else:
            await km.cleanup_resources()
    except (OSError, RuntimeError):
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- the worker -----------------------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """The command asks the worker to stop: asyncio.run then cancels the tests, which shut their
    kernels down (they run in sessions of their own: nothing else stops them)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: that shutdown is not interrupted
    raise KeyboardInterrupt


def worker_main() -> int:
    """The worker: import jupyter_client at once, then run the one request on stdin (if any)."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the command stops the worker
    try:
        import jupyter_client.kernelspec  # noqa: F401  (the import this worker exists to start early)
        import jupyter_client.manager  # noqa: F401

        raw = sys.stdin.buffer.read()
        if not raw.strip():
            return 0  # the command had nothing to test
        request = json.loads(raw)
        jobs = [SmokeJob(**j) for j in request["jobs"]]
        outcomes = run_smoke(jobs, Path(request["kernels_dir"]), float(request["timeout"]))
    except KeyboardInterrupt:
        return 130
    sys.stdout.write(json.dumps({"outcomes": [list(o) if o else None for o in outcomes]}))
    return 0


class _Forked:
    """The worker as a fork of the command, with the calls of :class:`subprocess.Popen` that
    :class:`SmokeWorker` makes (its standard streams are pipes to the command)."""

    def __init__(self, pid: int, stdin: int, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = os.fdopen(stdin, "wb")
        self.stdout = os.fdopen(stdout, "rb")
        self.stderr = os.fdopen(stderr, "rb")
        self._pidfd = os.pidfd_open(pid)

    @classmethod
    def start(cls) -> _Forked:
        pipes = [os.pipe() for _ in range(3)]  # (read, write) of its stdin, stdout, stderr
        (r_in, w_in), (r_out, w_out), (r_err, w_err) = pipes
        pid = fork_child(worker_main, stdio=(r_in, w_out, w_err))
        for fd in (r_in, w_out, w_err):
            os.close(fd)
        return cls(pid, w_in, r_out, r_err)

    def poll(self, block: bool = False) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self._pidfd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None and timeout is not None:
            with selectors.DefaultSelector() as sel:
                sel.register(self._pidfd, selectors.EVENT_READ)  # readable once it has exited
                if not sel.select(timeout):
                    raise subprocess.TimeoutExpired(f"smoke-test worker {self.pid}", timeout)
        code = self.poll(block=True)
        assert code is not None
        return code

    def _signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def communicate(self, data: bytes, timeout: float) -> tuple[bytes, bytes]:
        """Write ``data`` to its stdin and close it; everything it writes until it exits."""
        deadline = time.monotonic() + timeout
        got: dict[int, list[bytes]] = {self.stdout.fileno(): [], self.stderr.fileno(): []}
        view = memoryview(data)
        stdin = self.stdin.fileno()
        with selectors.DefaultSelector() as sel:
            if view:
                sel.register(stdin, selectors.EVENT_WRITE)
            else:
                self.stdin.close()
            for fd in got:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                ready = sel.select(left) if left > 0 else []
                if not ready:
                    raise subprocess.TimeoutExpired(f"smoke-test worker {self.pid}", timeout)
                for key, _ in ready:
                    if key.fd == stdin:
                        view = view[os.write(key.fd, view[: select.PIPE_BUF]) :]  # never blocks
                        if not view:
                            sel.unregister(key.fd)
                            self.stdin.close()
                        continue
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        got[key.fd].append(chunk)
                    else:
                        sel.unregister(key.fd)
        self.wait(max(deadline - time.monotonic(), 10.0))  # its streams are closed: it is ending
        return b"".join(got[self.stdout.fileno()]), b"".join(got[self.stderr.fileno()])


if __name__ == "__main__":
    code = worker_main()
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown (jupyter_client's zmq context): the answer is written
