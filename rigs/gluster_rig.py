"""A one-host GlusterFS volume over FUSE, on the loopback: the root on a real network filesystem.

Debian's ``glusterfs-server`` and ``glusterfs-client`` provide the binaries (``nox -s tests``
installs them as root). glusterd runs from its binary with its own volfile, state and logs
under the rig's folder, bound to an address in 127/8 other than 127.0.0.1 (the CLI refuses
that one for a brick); one brick, one volume, and any number of FUSE clients:

    rig = GlusterRig(workdir).start()
    rig.mount(path)                       # a client, as on the admin machine
    rig.on_node(["hubstock", ...])        # argv that runs on "another node": its own mount
                                          # namespace with its own client at the same path
    rig.stop()                            # unmounts, stops the volume and glusterd, by PID

Every node of a cluster mounts the root at the same path (the kernelspecs name it), so "two
nodes" here are two mount namespaces with a client each at one path, not two mount points.
Pitfalls met (glusterfs 10.3): bricks bind to glusterd's address and fetch their volfile from
port 24007 (one rig per address); the brick on the root filesystem needs ``force``; a client
killed with SIGKILL leaves a mount answering ENOTCONN.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

PORT = 24007  # glusterd's: bricks ask it for their volfile on this port, whatever it is told


class GlusterError(RuntimeError):
    pass


def missing_binaries() -> list[str]:
    return [b for b in ("glusterd", "gluster", "glusterfs") if shutil.which(b) is None]


class GlusterRig:
    def __init__(self, workdir: Path, addr: str = "127.0.1.1", volume: str = "hubstock") -> None:
        self.workdir = workdir
        self.addr = addr
        self.volume = volume
        self.run_dir = workdir / "run"
        self.log_dir = workdir / "log"
        self.lib = workdir / "lib"
        self.brick = workdir / "brick"
        self.sock = self.run_dir / "glusterd.socket"
        self.pidfile = self.run_dir / "glusterd.pid"
        self.mounts: list[Path] = []
        self.root_mount: Path | None = None  # set by whoever mounts the volume for a root
        self.timings: dict[str, float] = {}

    # -- the server ---------------------------------------------------------------------------

    def gluster(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            "gluster",
            f"--glusterd-sock={self.sock}",
            f"--log-file={self.log_dir / 'cli.log'}",
            "--mode=script",
            *args,
        ]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if check and res.returncode != 0:
            raise GlusterError(f"gluster {' '.join(args)}: {res.stdout}{res.stderr}")
        return res

    def start(self) -> GlusterRig:
        missing = missing_binaries()
        if missing:
            raise GlusterError(
                f"{', '.join(missing)} not found: apt-get install glusterfs-server glusterfs-client "
                "(nox -s tests does, as root)"
            )
        if not Path("/dev/fuse").exists():
            raise GlusterError("/dev/fuse is missing: GlusterFS's client needs FUSE")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        t0 = time.monotonic()
        for d in (self.run_dir, self.log_dir, self.lib, self.brick):
            d.mkdir(parents=True, exist_ok=True)
        volfile = self.workdir / "glusterd.vol"
        volfile.write_text(
            "volume management\n"
            "    type mgmt/glusterd\n"
            f"    option working-directory {self.lib}\n"
            f"    option run-directory {self.run_dir}\n"
            f"    option glusterd-sockfile {self.sock}\n"
            "    option transport-type socket\n"
            f"    option transport.socket.bind-address {self.addr}\n"
            f"    option transport.socket.listen-port {PORT}\n"
            "    option transport.socket.read-fail-log off\n"
            "    option ping-timeout 0\n"
            "    option event-threads 1\n"
            "end-volume\n"
        )
        subprocess.run(
            [
                "glusterd",
                "-f",
                str(volfile),
                "-p",
                str(self.pidfile),
                "-l",
                str(self.log_dir / "glusterd.log"),
            ],
            check=True,
            timeout=60,
        )
        self._wait("glusterd to answer", lambda: self.gluster("volume", "list", check=False).returncode == 0)
        self.gluster("volume", "create", self.volume, f"{self.addr}:{self.brick}", "force")
        self.gluster("volume", "start", self.volume)
        self._wait("the brick to come online", self._brick_online)
        self.timings["start"] = time.monotonic() - t0

    def _brick_online(self) -> bool:
        # --xml: the table wraps a long brick path over two lines
        res = self.gluster("volume", "status", self.volume, "--xml", check=False)
        return "<status>1</status>" in res.stdout

    @staticmethod
    def _wait(what: str, check, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise GlusterError(f"timed out waiting for {what}")
            time.sleep(0.1)

    # -- clients ------------------------------------------------------------------------------

    def client_argv(self, path: Path, *extra: str) -> list[str]:
        """The glusterfs client that mounts the volume at ``path`` (it forks into the background
        once the mount is up)."""
        log = self.log_dir / f"client-{os.getpid()}-{time.monotonic_ns()}.log"
        return [
            "glusterfs",
            "--process-name",
            "fuse",
            f"--volfile-server={self.addr}",
            f"--volfile-server-port={PORT}",
            f"--volfile-id={self.volume}",
            f"--log-file={log}",
            *extra,
            str(path),
        ]

    def mount(self, path: Path, *, read_only: bool = False) -> Path:
        """Mount the volume at ``path`` in this mount namespace (the "admin machine")."""
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            self.client_argv(path, *(["--read-only"] if read_only else [])), check=True, timeout=60
        )
        self._wait(f"the mount at {path}", lambda: _is_glusterfs(path))
        self.mounts.append(path)
        return path

    def unmount(self, path: Path) -> None:
        if _is_glusterfs(path):
            res = subprocess.run(["umount", str(path)], capture_output=True, check=False)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=False)
        if path in self.mounts:
            self.mounts.remove(path)

    def on_node(self, argv: list[str], path: Path) -> list[str]:
        """``argv`` run as on another node: in a mount namespace of its own, where a client of its
        own mounts the volume at ``path`` (over the mount of this one), and unmounts it after."""
        client = shlex.join(self.client_argv(path))
        script = (
            f"umount -l {shlex.quote(str(path))} 2>/dev/null; {client} || exit 97; "
            f"for i in $(seq 100); do grep -q ' {path} fuse.glusterfs ' /proc/self/mounts && break; sleep 0.05; done; "
            '"$@"; rc=$?; '
            f"umount {shlex.quote(str(path))} 2>/dev/null || umount -l {shlex.quote(str(path))}; exit $rc"
        )
        return ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "node", *argv]

    # -- down ---------------------------------------------------------------------------------

    def stop(self) -> None:
        for path in list(self.mounts):
            self.unmount(path)
        self._stop_clients()
        if _alive(self.pidfile, "glusterd"):
            self.gluster("volume", "stop", self.volume, "force", check=False)
        for pidfile in sorted((self.run_dir / "vols").glob(f"{self.volume}/*.pid")):
            _stop(pidfile, "glusterfsd")
        _stop(self.pidfile, "glusterd")

    def _stop_clients(self) -> None:
        """End the clients this rig started that are still running (a node whose command was
        killed before it unmounted): those that log into this rig's log folder."""
        mark = f"--log-file={self.log_dir}/".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"glusterfs") and any(a.startswith(mark) for a in argv):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGTERM)


def _is_glusterfs(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(
            line.split()[1] == str(path) and line.split()[2] == "fuse.glusterfs" for line in f if line.strip()
        )


def _pid(pidfile: Path, word: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if word in cmdline else None


def _alive(pidfile: Path, word: str) -> bool:
    return _pid(pidfile, word) is not None


def _stop(pidfile: Path, word: str) -> None:
    """TERM the process in ``pidfile`` (only if it is ``word``, the one this rig started), then KILL."""
    pid = _pid(pidfile, word)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pidfile, word) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pidfile, word):
        os.kill(pid, signal.SIGKILL)
