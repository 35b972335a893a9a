"""A private, real single-node Slurm (with its PBS/Torque commands) for tests and demos.

``SlurmRig(workdir).start()`` brings up munged, slurmctld and slurmd as root, without
systemd, with everything under *workdir*: its own munge key and socket, its own
``slurm.conf`` (passed to every client through ``SLURM_CONF``), free TCP ports picked at
start, logs, spools and PID files.  Nothing is written to ``/etc/slurm`` or ``/run/munge``,
so several rigs (and the machine's own Slurm, if any) can run side by side.
``stop()`` cancels leftover jobs and stops the daemons in reverse order, by PID.

Needs the Debian packages ``slurmctld slurmd slurm-client munge slurm-wlm-torque``
(this module never installs anything) and root.  Standard library only.

Command line (a demo, or a rig kept up by hand)::

    python rigs/slurm_rig.py up DIR      # start, print the environment, leave it running
    python rigs/slurm_rig.py down DIR    # stop the rig recorded in DIR/run/rig.json
    python rigs/slurm_rig.py run DIR     # start, wait for Ctrl-C, stop
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

__all__ = [
    "DEBIAN_PACKAGES",
    "RigError",
    "SlurmRig",
    "create_user",
    "remove_user",
    "require_binaries",
]

DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurm-wlm-torque")

# binary -> Debian package that ships it
_BINARIES = {
    "munged": "munge",
    "mungekey": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sinfo": "slurm-client",
    "squeue": "slurm-client",
    "scancel": "slurm-client",
    "sbatch": "slurm-client",
    "qsub": "slurm-wlm-torque",
    "qstat": "slurm-wlm-torque",
    "qdel": "slurm-wlm-torque",
    "runuser": "util-linux",
}
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Environment variables read by the Slurm client commands; an outer Slurm job or a user's
# SQUEUE_FORMAT must not leak into the rig's commands.
_SLURM_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCANCEL_", "SALLOC_", "SRUN_", "PBS_")
_NODE = "localhost"  # node name; deliberately not the host name, so slurmd runs with -N
# Set in the environment of every daemon the rig starts (inherited by slurmscriptd and
# slurmstepd): identifies the rig's own processes even if a PID file was never read.
_MARKER = "HUBSTOCK_SLURM_RIG"


class RigError(Exception):
    """The rig could not be set up, started or stopped."""


# ---------------------------------------------------------------------------- helpers


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH)


def require_binaries() -> None:
    """Raise RigError naming the Debian packages to install if a needed binary is missing."""
    missing = {b: pkg for b, pkg in _BINARIES.items() if _which(b) is None}
    if missing:
        pkgs = sorted(set(missing.values()))
        raise RigError(
            f"the Slurm test rig needs {', '.join(sorted(missing))} (missing); install the Debian "
            f"packages with: apt-get install --no-install-recommends {' '.join(DEBIAN_PACKAGES)}"
            f"  (missing from: {' '.join(pkgs)})"
        )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RigError("the Slurm test rig must run as root (it starts munged, slurmctld, slurmd)")


def _run(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
    check: bool = True,
    input: str | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(
            cmd,
            env=env,
            input=input,
            cwd=cwd,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise RigError(f"{' '.join(cmd)} timed out after {timeout} s") from exc
    except OSError as exc:
        raise RigError(f"cannot run {cmd[0]}: {exc}") from exc
    if check and cp.returncode != 0:
        raise RigError(f"{' '.join(cmd)} failed ({cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}")
    return cp


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, or None if it does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def _alive(pid: int, start: int | None = None) -> bool:
    """The process exists, is not a zombie and (if given) started at *start* (no PID reuse)."""
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start is None or st[2] == start


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st and st[1] == pid:
                out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.append(child)
                todo.append(child)
    return seen


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _terminate(procs: Iterable[tuple[int, int]], timeout: float = 10) -> list[int]:
    """TERM the (pid, starttime) processes, wait, KILL the rest; return the PIDs that were KILLed."""
    procs = [(p, s) for p, s in procs if _alive(p, s)]
    for pid, _ in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in procs):
        time.sleep(0.05)
    killed = []
    for pid, start in procs:
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in procs):
        time.sleep(0.05)
    return killed


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (all held open together while picking, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(1, int(int(line.split()[1]) / 1024 * 0.9))
    raise RigError("no MemTotal in /proc/meminfo")


def _spank_pbs() -> str | None:
    hits = sorted(
        glob.glob("/usr/lib/*/slurm-wlm/spank_pbs.so")
        + glob.glob("/usr/lib/slurm-wlm/spank_pbs.so")
        + glob.glob("/usr/lib*/slurm/spank_pbs.so")
    )
    return hits[0] if hits else None


def _check_traversable(path: Path) -> None:
    """Every directory from / to *path* must be world-searchable: job users read slurm.conf,
    run qsub-stdin and connect to the munge socket under the rig's workdir."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise RigError(
                f"{p} is mode {stat.S_IMODE(mode):o}: the rig's workdir and all its parents must "
                f"be world-searchable (o+x) so that job users can read slurm.conf and reach munge. "
                f"pytest's basetemp is mode 700: create the workdir with "
                f"tempfile.mkdtemp(dir='/tmp') and chmod it 0755"
            )


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"==> {path} <== (missing)"
    return "\n".join([f"==> {path} <==", *lines[-n:]])


# ---------------------------------------------------------------------------- users


def create_user(name: str, password: str, home_base: Path) -> None:
    """Create (or reuse) a local login user with home *home_base/name* and set its password.

    The home keeps useradd's mode (0700 on Debian 12, the job runs as the user); *home_base*
    is created 0755 if missing and it and its parents must be world-searchable.  An existing
    user whose home is elsewhere (e.g. left over from an earlier run) is moved to the new home.
    """
    _require_root()
    home_base = Path(home_base).resolve()
    if not home_base.exists():
        home_base.mkdir(parents=True)
        home_base.chmod(0o755)
    _check_traversable(home_base)
    home = home_base / name
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "-m", "-d", str(home), "-s", "/bin/bash", name])
        pw = pwd.getpwnam(name)
    else:
        if Path(pw.pw_dir) != home:
            _run(["usermod", "-d", str(home), name])
    if not home.exists():
        shutil.copytree("/etc/skel", home, dirs_exist_ok=True)
        home.chmod(0o700)
        for p in [home, *home.rglob("*")]:
            os.lchown(p, pw.pw_uid, pw.pw_gid)
    _run(["chpasswd"], input=f"{name}:{password}\n")


def remove_user(name: str) -> None:
    """Delete the user, its home and its user-private group; no-op if the user does not exist."""
    _require_root()
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    # -f: even if a process of the user is still running; 12 = home could not be removed
    cp = _run(["userdel", "-f", "-r", name], check=False)
    if cp.returncode not in (0, 6, 12):
        raise RigError(f"userdel {name} failed ({cp.returncode}): {cp.stderr.strip()}")


# ---------------------------------------------------------------------------- the rig


class SlurmRig:
    """A private single-node Slurm (munged, slurmctld, slurmd) with PBS wrappers, everything under workdir."""

    DAEMONS = ("munged", "slurmctld", "slurmd")  # start order; stopped in reverse

    def __init__(
        self,
        workdir: Path,
        *,
        partitions: Iterable[str] = ("debug", "batch"),
        min_job_age: int = 10,
        cluster_name: str = "hubstock",
        oversubscribe: int = 0,
    ) -> None:
        """``oversubscribe``: each core may be shared by up to that many jobs (0: not shared), for
        many small servers on a small machine."""
        self.workdir = Path(workdir).resolve()
        self.oversubscribe = oversubscribe
        self.partitions = tuple(partitions)
        if not self.partitions:
            raise ValueError("at least one partition is needed")
        self.min_job_age = min_job_age
        self.cluster_name = cluster_name
        self.node = _NODE
        w = self.workdir
        self.etc, self.log_dir, self.run_dir, self.bin_dir = w / "etc", w / "log", w / "run", w / "bin"
        self.munge_dir = w / "munge"
        self.munge_key = self.munge_dir / "etc" / "munge.key"
        self.munge_socket = self.munge_dir / "run" / "munge.socket"
        self.slurm_conf = self.etc / "slurm.conf"
        self.plugstack_conf = self.etc / "plugstack.conf"
        self.qsub_stdin = self.bin_dir / "qsub-stdin"
        self.pid_files = {
            "munged": self.munge_dir / "run" / "munged.pid",
            "slurmctld": self.run_dir / "slurmctld.pid",
            "slurmd": self.run_dir / "slurmd.pid",
        }
        self.log_files = {
            "munged": self.munge_dir / "log" / "munged.log",
            "slurmctld": self.log_dir / "slurmctld.log",
            "slurmd": self.log_dir / "slurmd.log",
        }
        self.state_file = self.run_dir / "rig.json"
        self.ctld_port: int | None = None
        self.slurmd_port: int | None = None
        # name -> (pid, starttime) of the daemons this rig started
        self.procs: dict[str, tuple[int, int]] = {}
        # pid -> starttime of helper processes the daemons forked (e.g. slurmscriptd)
        self.helpers: dict[int, int] = {}
        self.timings: dict[str, float] = {}
        self.last_stop: dict[str, list[int]] = {}
        self.spank_pbs: str | None = None
        self._load_state()

    # -- public API --------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to the environment of any Slurm/PBS client command."""
        return {"SLURM_CONF": str(self.slurm_conf)}

    def command_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """*base* (default os.environ) without Slurm/PBS variables, plus ``env``."""
        base = os.environ if base is None else base
        env = {k: v for k, v in base.items() if not k.startswith(_SLURM_ENV_PREFIXES)}
        env["PATH"] = env.get("PATH", "") + os.pathsep + _SBIN_PATH
        env.update(self.env)
        return env

    @property
    def pids(self) -> dict[str, int]:
        return {name: pid for name, (pid, _) in self.procs.items()}

    def running(self) -> bool:
        return any(_alive(p, s) for p, s in self.procs.values())

    def start(self, timeout: float = 60) -> SlurmRig:
        """Write the configuration, start munged, slurmctld and slurmd, wait for an idle node."""
        require_binaries()
        _require_root()
        if self.running():
            raise RigError(f"a rig is already running in {self.workdir} (pids {self.pids})")
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            self._prepare()
            self._start_munged(deadline)
            self.timings["munged"] = time.monotonic() - t0
            self._start_daemon("slurmctld", ["slurmctld", "-c"], deadline)
            self._start_daemon("slurmd", ["slurmd", "-N", self.node], deadline)
            self._wait_idle(deadline)
            self._record_helpers()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.timings["start_to_idle"] = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 10) -> None:
        """Cancel leftover jobs, stop slurmd, slurmctld and munged by PID (TERM, wait, KILL).

        Idempotent.  Touches only processes this rig started: the recorded daemons, what they
        forked (slurmscriptd, slurmstepd: found by the rig's marker variable in their
        environment) and job processes that escaped scancel (SLURM_CONF of this rig and a
        SLURM_JOB_ID in their environment).  Clients that merely use the rig are left alone.
        """
        if not self.procs:
            self._load_state()
        self._refresh_pids()
        ctld = self.procs.get("slurmctld")
        if ctld and _alive(*ctld):
            with contextlib.suppress(RigError):
                self.cancel_all(timeout=timeout)
        self._record_helpers()
        unrecorded = [
            p for p, _ in self._own_processes() if p not in self.pids.values() and p not in self.helpers
        ]
        for name in reversed(self.DAEMONS):
            if name in self.procs:
                _terminate([self.procs[name]], timeout=timeout)
        leftovers = [(p, s) for p, s in self.helpers.items() if _alive(p, s)]
        leftovers += self._own_processes() + self._job_processes()
        killed = _terminate(leftovers, timeout=timeout)
        # unrecorded: rig processes found only by their marker; leftovers: alive after the
        # daemons stopped; killed: needed SIGKILL
        self.last_stop = {
            "unrecorded": unrecorded,
            "killed": killed,
            "leftovers": sorted({p for p, _ in leftovers}),
        }
        left = [f"{n}={p}" for n, (p, s) in self.procs.items() if _alive(p, s)]
        left += [str(p) for p, s in self._own_processes()]
        if left:
            raise RigError(f"rig processes survived SIGKILL: {left}")
        self.procs.clear()
        self.helpers.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def stop_controller(self, timeout: float = 10) -> None:
        """Stop slurmctld alone (TERM, wait, KILL), by its PID: a controller outage. slurmd, munged
        and the jobs keep running; ``start_controller`` brings it back with the jobs' state."""
        self._refresh_pids()
        ctld = self.procs.get("slurmctld")
        if ctld is None or not _alive(*ctld):
            raise RigError(f"slurmctld is not running in {self.workdir}")
        self._record_helpers()
        helpers = [(p, s) for p, s in self.helpers.items() if p in _descendants(ctld[0])]
        _terminate([ctld], timeout=timeout)
        _terminate([(p, s) for p, s in helpers if _alive(p, s)], timeout=timeout)
        for pid, _ in helpers:
            self.helpers.pop(pid, None)
        self.procs.pop("slurmctld", None)
        self._save_state()

    def start_controller(self, timeout: float = 60) -> None:
        """Start slurmctld again after ``stop_controller``; it recovers its jobs from its state
        folder (no ``-c``). Returns once the controller answers."""
        self._refresh_pids()
        ctld = self.procs.get("slurmctld")
        if ctld is not None and _alive(*ctld):
            raise RigError(f"slurmctld is already running in {self.workdir} (pid {ctld[0]})")
        with contextlib.suppress(FileNotFoundError):
            self.pid_files["slurmctld"].unlink()
        deadline = time.monotonic() + timeout
        self._start_daemon("slurmctld", ["slurmctld"], deadline)
        while self.run(["scontrol", "ping"], check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise RigError(f"slurmctld did not answer within {timeout} s\n{self.logs_tail()}")
            time.sleep(0.2)
        self._record_helpers()

    def stop_slurmd(self, timeout: float = 10) -> None:
        """Stop slurmd alone (TERM, wait, KILL), by its PID: a node whose daemon died. The controller
        notices only after SlurmdTimeout; ``start_slurmd`` brings it back."""
        self._refresh_pids()
        slurmd = self.procs.get("slurmd")
        if slurmd is None or not _alive(*slurmd):
            raise RigError(f"slurmd is not running in {self.workdir}")
        _terminate([slurmd], timeout=timeout)
        self.procs.pop("slurmd", None)
        self._save_state()

    def start_slurmd(self, timeout: float = 60) -> None:
        """Start slurmd again after ``stop_slurmd``; returns once the node is idle."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(FileNotFoundError):
            self.pid_files["slurmd"].unlink()
        self._start_daemon("slurmd", ["slurmd", "-N", self.node], deadline)
        self._wait_idle(deadline)
        self._record_helpers()

    @contextlib.contextmanager
    def munged_frozen(self) -> Iterator[None]:
        """munged stopped with SIGSTOP meanwhile (it holds its socket and answers nothing), then
        SIGCONT: Slurm's commands hang until their timeouts."""
        self._refresh_pids()
        munged = self.procs.get("munged")
        if munged is None or not _alive(*munged):
            raise RigError(f"munged is not running in {self.workdir}")
        os.kill(munged[0], signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(munged[0], signal.SIGCONT)

    def rpc_counts(self) -> dict[str, int]:
        """slurmctld's RPC counts by message type since start or ``reset_rpc_counts`` (``sdiag``)."""
        out = self.run(["sdiag"], timeout=20).stdout
        counts: dict[str, int] = {}
        section = out.split("Remote Procedure Call statistics by message type", 1)[-1]
        section = section.split("Remote Procedure Call statistics by user", 1)[0]
        for line in section.splitlines():
            words = line.split()
            # "REQUEST_JOB_INFO_SINGLE ( 2021) count:12 ave_time:161 total_time:1939"
            if words and words[0].isupper() and "(" in line:
                count = next((w.split(":", 1)[1] for w in words if w.startswith("count:")), None)
                if count is not None:
                    counts[words[0]] = int(count)
        return counts

    #: the RPCs of status queries (squeue, scontrol show job, the PBS wrappers' qstat)
    STATUS_RPCS = frozenset(
        {
            "REQUEST_JOB_INFO",
            "REQUEST_JOB_INFO_SINGLE",
            "REQUEST_JOB_USER_INFO",
            "REQUEST_PARTITION_INFO",
            "REQUEST_FED_INFO",
            "REQUEST_NODE_INFO",
            "REQUEST_NODE_INFO_SINGLE",
        }
    )

    def status_rpcs(self) -> int:
        """How many status-query RPCs slurmctld served since start or ``reset_rpc_counts``."""
        return sum(n for kind, n in self.rpc_counts().items() if kind in self.STATUS_RPCS)

    def reset_rpc_counts(self) -> None:
        """Set slurmctld's RPC counts to zero (``sdiag --reset``, as root)."""
        self.run(["sdiag", "--reset"], timeout=20)

    def jobs(self, *, active_only: bool = False) -> list[str]:
        """Job ids known to squeue: any state (including completed jobs not yet purged,
        i.e. younger than MinJobAge), or with active_only only pending/running/completing."""
        states = (
            "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING,STOPPED,"
            "SIGNALING,STAGE_OUT,REQUEUE_HOLD,REQUEUE_FED"
            if active_only
            else "all"
        )
        cp = self.run(["squeue", "-h", "-t", states, "-o", "%i"], timeout=20)
        return [line.strip() for line in cp.stdout.splitlines() if line.strip()]

    def job_states(self) -> dict[str, str]:
        """job id -> Slurm state, for every job squeue knows."""
        cp = self.run(["squeue", "-h", "-t", "all", "-o", "%i %T"], timeout=20)
        return dict(line.split(None, 1) for line in cp.stdout.splitlines() if line.strip())

    def wait_no_jobs(self, timeout: float = 30, *, active_only: bool = False) -> None:
        """Wait until squeue knows no job (completed ones are purged MinJobAge s after the end)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.jobs(active_only=active_only)
            if not left:
                return
            if time.monotonic() > deadline:
                raise RigError(f"jobs still known after {timeout} s: {self.job_states()}")
            time.sleep(0.5)

    def cancel_all(self, timeout: float = 30, user: str | None = None) -> None:
        """scancel every active job (of *user*), then wait until none is active any more."""
        ids = self.jobs(active_only=True)
        if user is not None:
            cp = self.run(["squeue", "-h", "-u", user, "-o", "%i"], timeout=20)
            ids = [i for i in cp.stdout.split() if i in ids]
        if not ids:
            return
        self.run(["scancel", *ids], timeout=20, check=False)
        deadline = time.monotonic() + timeout
        while set(ids) & set(self.jobs(active_only=True)):
            if time.monotonic() > deadline:
                raise RigError(f"jobs survived scancel for {timeout} s: {self.job_states()}")
            time.sleep(0.2)

    def run(
        self,
        cmd: list[str],
        *,
        user: str | None = None,
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command with the rig's environment, as root or (runuser) as *user*."""
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
            if cwd is None:
                cwd = pwd.getpwnam(user).pw_dir
        return _run(cmd, env=self.command_env(), timeout=timeout, check=check, input=input, cwd=cwd)

    def node_state(self) -> str:
        """The node's state as scontrol reports it, lower case: 'idle', 'mixed', 'allocated',
        'idle+drain', ...  (Not sinfo's %T: after jobs end, sinfo can keep showing 'mixed'
        with no CPU allocated until something calls `scontrol show node`.)"""
        cp = self.run(["scontrol", "-o", "show", "node", self.node], timeout=10, check=False)
        for field in cp.stdout.split():
            if field.startswith("State="):
                return field.removeprefix("State=").lower()
        return f"unknown ({(cp.stderr or cp.stdout).strip()})"

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until the node is idle (see node_state); RigError with the logs if not."""
        self._wait_idle(time.monotonic() + timeout)

    def stray_processes(self) -> list[int]:
        """PIDs (other than this process and its ancestors) whose environment carries this
        rig's SLURM_CONF or marker: daemons, slurmstepd, job processes, client commands, or
        a hub that uses the rig.  Empty after stop() unless a client still runs."""
        conf, workdir = str(self.slurm_conf), str(self.workdir)
        return sorted(
            p for p, _ in self._scan(lambda env: env.get("SLURM_CONF") == conf or env.get(_MARKER) == workdir)
        )

    def logs_tail(self, n: int = 25) -> str:
        return "\n".join(_tail(p, n) for p in self.log_files.values())

    def __enter__(self) -> SlurmRig:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SlurmRig({str(self.workdir)!r}, ports={self.ctld_port}/{self.slurmd_port}, pids={self.pids})"

    # -- internals ---------------------------------------------------------------

    def _prepare(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        w.chmod(0o755)
        _check_traversable(w)
        for d in (
            self.etc,
            self.log_dir,
            self.run_dir,
            self.bin_dir,
            w / "spool" / "ctld",
            w / "spool" / "d",
            self.munge_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        munge = pwd.getpwnam("munge")
        # munged insists: key, log and seed dirs private to munge; socket dir 0755
        for sub, mode in (("etc", 0o700), ("log", 0o700), ("lib", 0o700), ("run", 0o755)):
            d = self.munge_dir / sub
            d.mkdir(exist_ok=True)
            os.chown(d, munge.pw_uid, munge.pw_gid)
            d.chmod(mode)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        for f in self.pid_files.values():  # stale PID files from an earlier (killed) rig
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.munge_socket.unlink()
        if not self.munge_key.exists():
            _run(
                [
                    "runuser",
                    "-u",
                    "munge",
                    "--",
                    _which("mungekey") or "mungekey",
                    "-c",
                    "-k",
                    str(self.munge_key),
                ],
                env=self._daemon_env(with_conf=False),
            )

        self.ctld_port, self.slurmd_port = _free_ports(2)
        spank = _spank_pbs()
        self.plugstack_conf.write_text(f"required {spank}\n" if spank else "")
        self.spank_pbs = spank
        self.slurm_conf.write_text(self._slurm_conf_text())
        for f in (self.slurm_conf, self.plugstack_conf):
            f.chmod(0o644)

        qsub = _which("qsub") or "/usr/bin/qsub"
        self.qsub_stdin.write_text(_QSUB_STDIN.format(qsub=qsub))
        self.qsub_stdin.chmod(0o755)

    def _slurm_conf_text(self) -> str:
        w = self.workdir
        share = f" OverSubscribe=FORCE:{self.oversubscribe}" if self.oversubscribe else ""
        parts = "\n".join(
            f"PartitionName={p} Nodes={self.node} Default={'YES' if i == 0 else 'NO'} "
            f"MaxTime=INFINITE State=UP{share}"
            for i, p in enumerate(self.partitions)
        )
        return f"""\
# written by rigs/slurm_rig.py; private to the rig in {w}
ClusterName={self.cluster_name}
SlurmctldHost=localhost
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={w}/spool/ctld
SlurmdSpoolDir={w}/spool/d
SlurmctldPidFile={self.pid_files["slurmctld"]}
SlurmdPidFile={self.pid_files["slurmd"]}
SlurmctldLogFile={self.log_files["slurmctld"]}
SlurmdLogFile={self.log_files["slurmd"]}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={self.plugstack_conf}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge={self.min_job_age}
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={_real_memory_mb()} State=UNKNOWN
{parts}
"""

    def _daemon_env(self, *, with_conf: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SLURM_ENV_PREFIXES)}
        env["PATH"] = _SBIN_PATH
        env[_MARKER] = str(self.workdir)
        if with_conf:
            env.update(self.env)
        return env

    def _spawn(self, name: str, cmd: list[str], env: Mapping[str, str]) -> None:
        """Run a self-daemonizing command; its own session, output to a file (never a pipe
        that the daemon would keep open)."""
        with open(self.log_dir / f"{name}.startup.log", "ab") as out:
            try:
                cp = subprocess.run(
                    cmd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.workdir,
                    timeout=30,
                )
            except subprocess.TimeoutExpired as exc:
                raise RigError(f"{name} did not daemonize within 30 s\n{self.logs_tail()}") from exc
        if cp.returncode != 0:
            raise RigError(
                f"{' '.join(cmd)} exited {cp.returncode}\n"
                f"{_tail(self.log_dir / f'{name}.startup.log')}\n{self.logs_tail()}"
            )

    def _read_pid(self, name: str) -> tuple[int, int] | None:
        """(pid, starttime) from the daemon's PID file if that process is alive and ours
        (carries the rig's marker: a PID file never makes us adopt a stranger)."""
        try:
            pid = int(self.pid_files[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X") or _environ(pid).get(_MARKER) != str(self.workdir):
            return None
        return pid, st[2]

    def _refresh_pids(self) -> None:
        """Adopt the PID now in a PID file if the recorded process is gone (a PID file read
        while the daemon was still forking)."""
        changed = False
        for name in self.DAEMONS:
            rec = self.procs.get(name)
            if rec is None or not _alive(*rec):
                new = self._read_pid(name)
                if new and new != rec:
                    self.procs[name] = new
                    changed = True
        if changed:
            with contextlib.suppress(OSError):
                self._save_state()

    def _wait_pid(self, name: str, deadline: float) -> None:
        while True:
            found = self._read_pid(name)
            if found:
                self.procs[name] = found
                self._save_state()
                return
            if time.monotonic() > deadline:
                raise RigError(f"{name} wrote no live PID to {self.pid_files[name]}\n{self.logs_tail()}")
            time.sleep(0.05)

    def _start_munged(self, deadline: float) -> None:
        self._spawn(
            "munged",
            [
                "runuser",
                "-u",
                "munge",
                "--",
                _which("munged") or "munged",
                f"--socket={self.munge_socket}",
                f"--key-file={self.munge_key}",
                f"--log-file={self.log_files['munged']}",
                f"--pid-file={self.pid_files['munged']}",
                f"--seed-file={self.munge_dir / 'lib' / 'munged.seed'}",
            ],
            self._daemon_env(with_conf=False),
        )
        self._wait_pid("munged", deadline)
        # a credential round trip proves the socket works
        while True:
            enc = _run(["munge", "-S", str(self.munge_socket), "-n"], check=False, timeout=10)
            if enc.returncode == 0:
                dec = _run(
                    ["unmunge", "-S", str(self.munge_socket)], input=enc.stdout, check=False, timeout=10
                )
                if dec.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise RigError(f"munge round trip failed: {enc.stderr.strip()}\n{self.logs_tail()}")
            time.sleep(0.1)

    def _start_daemon(self, name: str, cmd: list[str], deadline: float) -> None:
        t0 = time.monotonic()
        self._spawn(name, [_which(cmd[0]) or cmd[0], *cmd[1:]], self._daemon_env())
        self._wait_pid(name, deadline)
        self.timings[name] = time.monotonic() - t0

    def _wait_idle(self, deadline: float) -> None:
        while True:
            state = self.node_state()
            if state == "idle":
                return
            self._refresh_pids()
            for name, (pid, start) in self.procs.items():
                if not _alive(pid, start):
                    raise RigError(f"{name} ({pid}) died during start-up\n{self.logs_tail()}")
            if time.monotonic() > deadline:
                node = self.run(["scontrol", "show", "node", self.node], check=False, timeout=10)
                raise RigError(
                    f"node {self.node} not idle (state: {state!r})\n"
                    f"{node.stdout.strip() or node.stderr.strip()}\n{self.logs_tail()}"
                )
            time.sleep(0.1)

    def _record_helpers(self) -> None:
        """Remember the processes the daemons forked (slurmctld's slurmscriptd, ...)."""
        for pid, start in self.procs.values():
            if _alive(pid, start):
                for child in _descendants(pid):
                    st = _proc_stat(child)
                    if st:
                        self.helpers.setdefault(child, st[2])
        if self.procs:
            with contextlib.suppress(OSError):
                self._save_state()

    def _scan(self, match) -> list[tuple[int, int]]:
        """(pid, starttime) of live processes (not this one or its ancestors) whose
        environment satisfies match(env)."""
        mine = {os.getpid()}
        p = os.getpid()
        while p > 1 and (st := _proc_stat(p)):
            p = st[1]
            mine.add(p)
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            st = _proc_stat(int(entry))
            if st and st[0] not in ("Z", "X") and match(_environ(int(entry))):
                out.append((int(entry), st[2]))
        return out

    def _own_processes(self) -> list[tuple[int, int]]:
        """Processes carrying this rig's marker: its daemons and what they forked."""
        workdir = str(self.workdir)
        return self._scan(lambda env: env.get(_MARKER) == workdir)

    def _job_processes(self) -> list[tuple[int, int]]:
        """Processes of this rig's jobs (SLURM_CONF of this rig and a SLURM_JOB_ID)."""
        conf = str(self.slurm_conf)
        return self._scan(lambda env: env.get("SLURM_CONF") == conf and "SLURM_JOB_ID" in env)

    def _save_state(self) -> None:
        data = {
            "procs": self.procs,
            "helpers": self.helpers,
            "ctld_port": self.ctld_port,
            "slurmd_port": self.slurmd_port,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    def _load_state(self) -> None:
        """Adopt the PIDs recorded by an earlier SlurmRig on this workdir (``down`` command)."""
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self.procs = {k: (int(v[0]), int(v[1])) for k, v in data.get("procs", {}).items()}
        self.helpers = {int(k): int(v) for k, v in data.get("helpers", {}).items()}
        self.ctld_port, self.slurmd_port = data.get("ctld_port"), data.get("slurmd_port")


_QSUB_STDIN = """\
#!/bin/sh
# qsub-stdin: Torque-style qsub that reads the job script on stdin, as batchspawner pipes it.
# slurm-wlm-torque's qsub needs a script *file*: save stdin as STDIN in a private temp dir
# (the job is then named STDIN, its output STDIN.o<id>, as with Torque) and submit that.
d=$(mktemp -d 2>/dev/null) || d=$(mktemp -d -p /tmp) || exit 1
trap 'rm -rf "$d"' EXIT HUP INT TERM
cat > "$d/STDIN" || exit 1
if [ ! -s "$d/STDIN" ]; then
    echo "qsub-stdin: empty job script on stdin" >&2
    exit 1
fi
{qsub} "$@" "$d/STDIN"
rc=$?
rm -rf "$d"
trap - EXIT
exit $rc
"""


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="A private single-node Slurm with PBS commands.")
    ap.add_argument("action", choices=("up", "down", "run"))
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--partitions", default="debug,batch")
    args = ap.parse_args(argv)
    rig = SlurmRig(args.workdir, partitions=args.partitions.split(","))
    if args.action == "down":
        rig.stop()
        print(f"stopped the rig in {args.workdir}")
        return 0
    rig.start()
    print(f"# rig up in {rig.timings['start_to_idle']:.1f} s, pids {rig.pids}")
    print(f"export SLURM_CONF={rig.slurm_conf}")
    print(f"# PBS submit from stdin: {rig.qsub_stdin}")
    if args.action == "run":
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            rig.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
