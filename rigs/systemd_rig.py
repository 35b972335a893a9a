"""systemd as PID 1 of private namespaces, to start rendered units with their sandboxes.

The test machines run no systemd (PID 1 is the VM's own init), so ``systemctl start`` has
nothing to talk to. ``SystemdRig(workdir).start()`` boots one for the tests:

- ``unshare --pid --fork --mount --uts --cgroup`` makes it PID 1 of its own PID namespace,
  with its own mount table (a tmpfs on ``/run``: its state and the units the test installs),
  hostname, and cgroup tree: a folder of each cgroup hierarchy, made for the rig and bound
  over the hierarchy's root in the namespace, so that systemd's slices are made there and
  removed with the rig. The filesystem and the network (the loopback) are the machine's own.
- It boots into ``hubstock-rig.target``, which needs nothing. A service's default
  dependencies would pull in ``sysinit.target``, whose units set a machine up: empty ``/tmp``
  (``systemd-tmpfiles --remove``), remount ``/``, write users, set sysctls. That target and the
  others a service may pull in are replaced by empty ones, and every unit they want is masked,
  in ``/run/systemd/system.control`` (before ``/etc/systemd/system`` in systemd's search path),
  so that nothing of the machine's own set-up runs. journald is masked too: each unit the test
  installs gets a drop-in that appends its output to a file of the workdir.

``install(name, text)`` puts a unit in ``/run/systemd/system`` (where a site would use
``/etc/systemd/system``); ``systemctl(...)`` runs systemctl in the namespaces; ``stop()`` kills
the namespace's PID 1 (the kernel then kills every process in it) and removes its cgroups.
Needs root, ``unshare`` and ``nsenter`` (util-linux) and Debian's ``systemd`` package.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
TARGET = "hubstock-rig.target"
CGROUPS = Path("/sys/fs/cgroup")
#: where unit files live on the machine (their .wants/.requires folders are what a target pulls in)
UNIT_DIRS = (
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
#: the targets a service's default dependencies and the rendered units can pull in: made empty
EMPTY_TARGETS = (
    "sysinit.target",
    "basic.target",
    "local-fs.target",
    "local-fs-pre.target",
    "remote-fs.target",
    "swap.target",
    "sockets.target",
    "timers.target",
    "paths.target",
    "slices.target",
    "network.target",
    "network-pre.target",
    "network-online.target",
    "nss-lookup.target",
    "nss-user-lookup.target",
    "multi-user.target",
)
#: masked whatever pulls them in (the journal: each unit's output goes to a file instead)
MASKED = (
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "systemd-journald-audit.socket",
    "systemd-tmpfiles-setup.service",
    "systemd-remount-fs.service",
)


class SystemdRigError(RuntimeError):
    pass


def require_systemd() -> None:
    """Fail (never skip) with what to install when the rig cannot boot here."""
    if os.geteuid() != 0:
        raise SystemdRigError("the systemd rig must run as root (it boots systemd in namespaces)")
    missing = [p for p in (SYSTEMD,) if not os.access(p, os.X_OK)]
    missing += [c for c in ("unshare", "nsenter", "systemctl") if not shutil.which(c)]
    if missing:
        raise SystemdRigError(f"missing {', '.join(missing)}: `apt-get install systemd util-linux`")


def _pulled_in(target: str) -> set[str]:
    """The units the machine's unit folders make ``target`` want or require."""
    names: set[str] = set()
    for d in UNIT_DIRS:
        for kind in ("wants", "requires"):
            folder = Path(d) / f"{target}.{kind}"
            if folder.is_dir():
                names.update(p.name for p in folder.iterdir())
    return names


class SystemdRig:
    """A booted systemd in private namespaces (see the module's doc)."""

    def __init__(self, workdir: Path, launcher: Callable[[list[str]], list[str]] | None = None) -> None:
        """``launcher``: turns the boot's command line into the one to run, e.g. another rig's
        ``ns_argv``, so that systemd and its units share that rig's network and mounts."""
        self.workdir = Path(workdir)
        self.launcher = launcher
        self.logs = self.workdir / "logs"
        self.cgroup = f"hubstock-rig-{os.getpid()}-{id(self) & 0xFFFF:x}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # systemd's PID, as the machine sees it

    # -- start and stop -------------------------------------------------------------------
    def _hierarchies(self) -> list[Path]:
        """The cgroup hierarchies systemd uses: v2's alone on a pure v2 machine; else v1's named
        and controller ones and v2's, not cpuset (a new cpuset group takes no process until its
        cpus are set, and systemd leaves it alone)."""
        if (CGROUPS / "cgroup.procs").exists():
            return [CGROUPS]
        return [
            h
            for h in sorted(CGROUPS.iterdir())
            if not h.is_symlink() and (h / "cgroup.procs").exists() and "cpuset" not in h.name.split(",")
        ]

    def _boot_script(self) -> str:
        """What runs as the namespaces' first process, then becomes systemd."""
        control = "/run/systemd/system.control"
        lines = [
            "set -e",
            "mount -t tmpfs -o mode=0755 tmpfs /run",
            f"mkdir -p {control} /run/systemd/system",
        ]
        for h in self._hierarchies():
            lines.append(f"mount --bind {shlex.quote(str(h / self.cgroup))} {shlex.quote(str(h))}")
        unit = "printf '[Unit]\\nDescription=%s\\nDefaultDependencies=no\\n'"
        lines.append(f"{unit} 'hubstock test rig' > {control}/{TARGET}")
        for t in EMPTY_TARGETS:
            lines.append(f"{unit} '{t} (empty in the rig)' > {control}/{t}")
        masked = set(MASKED)
        for t in EMPTY_TARGETS:
            masked |= _pulled_in(t)
        masked -= set(EMPTY_TARGETS)
        for name in sorted(masked):
            lines.append(f"ln -sf /dev/null {control}/{shlex.quote(name)}")
        # shared within the rig (private to it since unshare), as systemd expects of a booted machine:
        # a unit's credentials are mounted from a child's mount namespace and must reach the units
        lines.append("mount --make-rshared /")
        lines.append("export container=hubstock-rig")
        lines.append(f"exec {SYSTEMD} --system --unit={TARGET} --log-target=console --log-level=notice")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30) -> SystemdRig:
        require_systemd()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for h in self._hierarchies():
            (h / self.cgroup).mkdir(exist_ok=True)
        # the launcher joins the rig's cgroups before it unshares the cgroup namespace, so that
        # the namespace's root is the rig's own folder of each hierarchy
        join = " ".join(
            f"echo $$ > {shlex.quote(str(h / self.cgroup / 'cgroup.procs'))};" for h in self._hierarchies()
        )
        (self.workdir / "boot.sh").write_text(self._boot_script())
        argv = [
            "sh",
            "-c",
            f"{join} exec unshare --pid --fork --mount --propagation private --mount-proc --uts --cgroup "
            f"sh {shlex.quote(str(self.workdir / 'boot.sh'))}",
        ]
        if self.launcher:  # it execs the command in place (nsenter without --pid does)
            argv = self.launcher(argv)
        with open(self.logs / "systemd.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemdRigError(
                    f"systemd did not boot (exit {self.proc.returncode}):\n{self.log_tail()}"
                )
            self.pid = self._systemd_pid()
            if self.pid:
                res = self.systemctl("is-system-running", check=False)
                if res.stdout.strip() in ("running", "degraded"):
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise SystemdRigError(f"systemd did not boot within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _systemd_pid(self) -> int | None:
        """The PID of the namespaces' first process (unshare's child), once it is systemd: the
        launching shell exec'd unshare (after the launcher's nsenter, if any, exec'd the shell),
        whose forked child runs the boot script, which execs systemd."""
        assert self.proc
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            if len(kids) != 1:
                return None
            kid = int(kids[0])
            return kid if Path(f"/proc/{kid}/exe").resolve() == Path(SYSTEMD).resolve() else None
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Kill the namespaces' PID 1 (and with it every process in them), then remove the cgroups."""
        if self.proc and self.proc.poll() is None:
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for h in self._hierarchies():
            top = h / self.cgroup
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir(d)
            _rmdir(top)

    # -- use ------------------------------------------------------------------------------
    def ns_argv(self, argv: list[str]) -> list[str]:
        assert self.pid, "the rig is not started"
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-C", *argv]

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.ns_argv(["systemctl", "--no-pager", *args]), capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise SystemdRigError(
                f"systemctl {' '.join(args)}: exit {res.returncode}\n{res.stdout}{res.stderr}"
            )
        return res

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command inside the rig's namespaces (e.g. ``systemd-analyze security`` of a loaded unit)."""
        return subprocess.run(self.ns_argv(argv), capture_output=True, text=True, timeout=timeout)

    def install(self, name: str, text: str) -> Path:
        """Put a unit file where systemd reads it, with a drop-in that appends its output to
        ``logs/<name>.log``; ``daemon-reload``. Returns that log's path."""
        assert self.pid
        units = Path(f"/proc/{self.pid}/root/run/systemd/system")
        (units / name).write_text(text)
        log = self.logs / f"{name}.log"
        dropin = units / f"{name}.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "rig-output.conf").write_text(
            f"[Service]\nStandardOutput=append:{log}\nStandardError=inherit\n"
        )
        self.systemctl("daemon-reload")
        return log

    def log_tail(self, n: int = 40) -> str:
        path = self.logs / "systemd.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _rmdir(d: Path) -> None:
    with contextlib.suppress(OSError):
        d.rmdir()
