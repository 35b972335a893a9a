"""The rig's private network and mount namespaces: the holder process that keeps them alive
(and reaps every orphan in them), the rig's end of its pipes, and the rig's methods that start
it, run commands through it and find the processes inside."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rigs.slurm_rig import RigError, _alive, _proc_stat, _tail  # shared process helpers

from .packages import _which

# Runs as root inside the new namespaces (unshare --net --mount), started by the rig with two
# pipes.  It is the child subreaper of everything it starts: it reaps every orphan as soon as
# it dies.  Requests, one JSON line each on stdin: {"id", "argv", "env", "cwd", "out", "timeout"};
# each runs in its own session with output appended to "out"; the reply, one JSON line on stdout:
# {"id", "rc"} (rc null on timeout, after SIGKILL).  When the rig's end of the pipe closes the
# holder keeps reaping until it is killed.
_HOLDER = r"""
import ctypes, json, os, select, signal, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("holder: prctl(PR_SET_CHILD_SUBREAPER) failed")
rfd, wfd = os.pipe()
os.set_blocking(rfd, False)
os.set_blocking(wfd, False)
signal.signal(signal.SIGCHLD, lambda *a: None)
signal.set_wakeup_fd(wfd)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
pending = {}  # pid -> (id, deadline)

def reply(msg):
    try:
        os.write(1, (json.dumps(msg) + "\n").encode())
    except OSError:
        pass

def launch(req):
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGCHLD, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(s, signal.SIG_DFL)
            os.chdir(req.get("cwd") or "/")
            fd = os.open(req.get("out") or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            nul = os.open(os.devnull, os.O_RDONLY)
            os.dup2(nul, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            for name in os.listdir("/proc/self/fd"):
                if int(name) > 2:
                    try:
                        os.close(int(name))
                    except OSError:
                        pass
            os.execvpe(req["argv"][0], req["argv"], req["env"])
        except BaseException as e:
            try:
                os.write(2, ("holder: cannot run %r: %s\n" % (req["argv"], e)).encode())
            finally:
                os._exit(127)
    t = req.get("timeout")
    pending[pid] = (req["id"], time.monotonic() + t if t else None)

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in pending:
            reply({"id": pending.pop(pid)[0], "rc": os.waitstatus_to_exitcode(status)})

reply({"ready": os.getpid()})
buf, eof = b"", False
while True:
    now = time.monotonic()
    for pid, (rid, deadline) in list(pending.items()):
        if deadline is not None and now > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            pending[pid] = (rid, None)
            reply({"id": rid, "rc": None})
    waits = [d - now for _, d in pending.values() if d is not None]
    timeout = max(0.01, min([5.0, *waits]))
    try:
        ready, _, _ = select.select([rfd] if eof else [rfd, 0], [], [], timeout)
    except InterruptedError:
        ready = []
    if rfd in ready:
        try:
            while os.read(rfd, 512):
                pass
        except BlockingIOError:
            pass
    reap()
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            eof = True
            os.close(0)
            os.open(os.devnull, os.O_RDONLY)
            continue
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                launch(json.loads(line))
"""


class _Holder:
    """The rig's end of the holder's pipes (only in the process that started the rig)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._n = 0
        self._buf = b""

    def _read_msg(self, deadline: float) -> dict:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RigError("the namespace holder did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RigError(f"the namespace holder exited ({self.proc.poll()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout: float) -> int:
        return int(self._read_msg(time.monotonic() + timeout)["ready"])

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        out: Path,
        cwd: Path | str = "/",
        timeout: float = 60,
    ) -> int | None:
        """Run argv inside the namespaces, as a child of the holder; its exit code (None: timed out)."""
        assert self.proc.stdin is not None
        self._n += 1
        req = {
            "id": self._n,
            "argv": list(argv),
            "env": dict(env),
            "cwd": str(cwd),
            "out": str(out),
            "timeout": timeout,
        }
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise RigError(f"the namespace holder is gone ({self.proc.poll()})") from exc
        deadline = time.monotonic() + timeout + 10
        while True:
            msg = self._read_msg(deadline)
            if msg.get("id") == self._n:
                return msg["rc"]

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f:
                    f.close()


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


class _NamespaceMixin:
    """OpenPBSRig's namespace: the holder, commands run as its children, the processes inside."""

    def _start_holder(self, deadline: float) -> None:
        log = open(self.log_dir / "holder.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(
                [
                    _which("unshare") or "unshare",
                    "--net",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    sys.executable,
                    "-I",
                    "-c",
                    _HOLDER,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._daemon_env(),
                cwd="/",
                start_new_session=True,
            )
        finally:
            log.close()
        self._holder = _Holder(proc)
        try:
            pid = self._holder.wait_ready(max(5.0, deadline - time.monotonic()))
        except RigError as exc:
            raise RigError(f"{exc}\n{_tail(self.log_dir / 'holder.log')}") from None
        st = _proc_stat(pid)
        if pid != proc.pid or st is None:
            raise RigError(f"the namespace holder is not the process started ({pid} != {proc.pid})")
        self.holder = (pid, st[2])
        self.netns = _netns(pid)
        if self.netns is None or self.netns == _netns(os.getpid()):
            raise RigError("the namespace holder did not get a network namespace of its own")
        self._save_state()
        assert self.exec_dir is not None
        steps = [
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{self.address}/32", "dev", "lo"],
            ["mount", "--bind", str(self.hosts_file), "/etc/hosts"],
        ]
        if self.exec_dir != self.prefix:
            steps.append(["mount", "--bind", "-o", "ro", str(self.prefix), str(self.exec_dir)])
        for argv in steps:
            self._ns_exec("namespace", argv, timeout=20)

    def _ns_exec(
        self,
        what: str,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        cwd: Path | str = "/",
        check: bool = True,
    ) -> int | None:
        """Run argv as root inside the namespaces, as a child of the holder (daemons, postgres)."""
        if self._holder is None:
            raise RigError("the rig's namespace holder is not ours (started by another process)")
        out = self.log_dir / f"{what}.log"
        with open(out, "ab") as f:
            f.write(f"\n### {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        rc = self._holder.run(argv, env or self._daemon_env(), out, cwd=cwd, timeout=timeout)
        if check and rc != 0:
            state = "timed out" if rc is None else f"exited {rc}"
            raise RigError(
                f"{' '.join(argv)} {state} in the rig's namespace\n{_tail(out)}\n{self.logs_tail()}"
            )
        return rc

    def _in_ns(self, pid: int) -> bool:
        return self.netns is not None and _netns(pid) == self.netns

    def _ns_pid(self, *, required: bool = True) -> int | None:
        """A live process inside the rig's namespace to enter: the holder, else any other."""
        if self.holder and _alive(*self.holder) and self._in_ns(self.holder[0]):
            return self.holder[0]
        for pid, _ in self._ns_processes():
            return pid
        if required:
            raise RigError(f"the OpenPBS rig in {self.workdir} is not running")
        return None

    def _ns_processes(self) -> list[tuple[int, int]]:
        """(pid, starttime) of every live process in the rig's network namespace, but this one."""
        if not self.netns:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and _netns(int(entry)) == self.netns:
                st = _proc_stat(int(entry))
                if st and st[0] not in ("Z", "X"):
                    out.append((int(entry), st[2]))
        return out

    def _close_holder(self) -> None:
        if self._holder is not None:
            self._holder.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._holder.proc.wait(5)
            self._holder = None
