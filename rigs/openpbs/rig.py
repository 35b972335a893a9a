"""The OpenPBSRig class: its settings and paths, how to run commands in its namespace, and
start() and stop().  The steps live in mixins beside it: startup.py (workdir, pbs.conf, daemons,
queues), datastore.py (a cold start's PBS_HOME and PostgreSQL), namespace.py (the holder and
the processes in the namespace), processes.py (lock files, clients, the state file) and jobs.py
(qstat, qdel, pbsnodes)."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rigs.slurm_rig import RigError, _alive, _run, _terminate  # shared process helpers

from .build import locate_openpbs
from .config import (
    _DATA_USER,
    _PBS_ENV_PREFIXES,
    _SBIN_PATH,
    ADDRESS,
    DEFAULT_PORTS,
    DEFAULT_QUEUES,
    Queue,
    _default_host,
)
from .datastore import _DatastoreMixin
from .jobs import _JobsMixin
from .namespace import _Holder, _NamespaceMixin
from .packages import (
    RUN_DEBIAN_PACKAGES,
    _pg_bin,
    _require_root,
    _which,
    ensure_debian_packages,
    require_binaries,
)
from .processes import _ProcessesMixin
from .startup import _StartupMixin


class OpenPBSRig(_StartupMixin, _DatastoreMixin, _NamespaceMixin, _ProcessesMixin, _JobsMixin):
    """A private single-node OpenPBS in its own network namespace, everything under workdir."""

    DAEMONS = ("pbs_comm", "pbs_mom", "pbs_sched", "pbs_server")  # start order; stopped in reverse

    def __init__(
        self,
        workdir: Path,
        *,
        prefix: Path | None = None,
        queues: Iterable[object] = DEFAULT_QUEUES,
        address: str = ADDRESS,
        host: str | None = None,
        data_user: str = _DATA_USER,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.queues = tuple(Queue.of(q) for q in queues)
        if not self.queues:
            raise ValueError("at least one queue is needed")
        self.address = address
        self.host = host or _default_host()
        self.data_user = data_user
        self.ports = {**DEFAULT_PORTS, **(ports or {})}
        w = self.workdir
        self.conf = w / "pbs.conf"
        self.home = w / "home"  # PBS_HOME
        self.datastore = self.home / "datastore"
        self.etc, self.log_dir, self.run_dir, self.tmp_dir = w / "etc", w / "log", w / "run", w / "tmp"
        self.hosts_file = self.etc / "hosts"
        self.state_file = self.run_dir / "rig.json"
        self.init_marker = self.run_dir / "initialised"
        self.lock_files = {
            "pbs_comm": self.home / "server_priv" / "comm.lock",
            "pbs_mom": self.home / "mom_priv" / "mom.lock",
            "pbs_sched": self.home / "sched_priv" / "sched.lock",
            "pbs_server": self.home / "server_priv" / "server.lock",
        }
        self.prefix = Path(prefix).resolve() if prefix else None
        self.exec_dir: Path | None = None  # PBS_EXEC as seen inside the namespace
        self.holder: tuple[int, int] | None = None  # (pid, starttime)
        self.netns: str | None = None  # "net:[inode]" of the private namespace
        self.procs: dict[str, tuple[int, int]] = {}  # daemon -> (pid, starttime)
        self.timings: dict[str, float] = {}
        self.start_kind: str | None = None  # "cold" (first start of this workdir) or "warm"
        self.last_stop: dict[str, list[int]] = {}
        self._holder: _Holder | None = None
        self._load_state()

    # -- public API --------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Variables any PBS client command needs (inside the namespace)."""
        assert self.exec_dir is not None, "the rig has not been started"
        return {"PBS_CONF_FILE": str(self.conf), "PATH": f"{self.exec_dir}/bin:{_SBIN_PATH}"}

    def command_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """*base* (default os.environ) without PBS/Slurm variables, with PBS's bin first on PATH
        and PBS_CONF_FILE set."""
        base = os.environ if base is None else base
        env = {k: v for k, v in base.items() if not k.startswith(_PBS_ENV_PREFIXES)}
        path = env.get("PATH", "")
        env.update(self.env)
        env["PATH"] = f"{self.exec_dir}/bin" + (os.pathsep + path if path else "") + os.pathsep + _SBIN_PATH
        return env

    @property
    def pids(self) -> dict[str, int]:
        return {name: pid for name, (pid, _) in self.procs.items()}

    @property
    def server_name(self) -> str:
        """The PBS server's name: the suffix of job ids (``12.<server_name>``)."""
        return self.host

    def running(self) -> bool:
        return any(_alive(p, s) for p, s in self.procs.values()) or bool(self.holder and _alive(*self.holder))

    def ns_argv(
        self, argv: Sequence[str], *, user: str | None = None, cwd: str | Path | None = None
    ) -> list[str]:
        """The command line that runs *argv* inside the rig's namespaces (as *user* with runuser).

        For code that starts its own processes: ``subprocess.Popen(rig.ns_argv([...]),
        env=rig.command_env(), cwd=...)``.  The working directory is *cwd*, else the user's home
        for a user, else the one the command is started in (``--wd=.``: nsenter opens it before
        it enters the mount namespace, which would otherwise leave it in /)."""
        pid = self._ns_pid()
        if cwd is None:
            cwd = pwd.getpwnam(user).pw_dir if user else "."
        prefix = [_which("nsenter") or "nsenter", "-t", str(pid), "-n", "-m", f"--wd={cwd}", "--"]
        if user is not None:
            prefix += [_which("runuser") or "runuser", "-u", user, "--"]
        return [*prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace with the rig's environment, as root or as *user*."""
        return _run(
            self.ns_argv(argv, user=user, cwd=cwd),
            env=self.command_env(env),
            timeout=timeout,
            check=check,
            input=input,
        )

    def popen(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs,
    ) -> subprocess.Popen:
        """Start a long-running command inside the namespace (a hub, a proxy, a browser), with
        the rig's environment added to *env*.  Stop it before the rig: stop() ends whatever
        is still in the namespace."""
        return subprocess.Popen(
            self.ns_argv(argv, user=user, cwd=cwd), env=self.command_env(env), cwd=cwd, **kwargs
        )

    def start(self, timeout: float = 120) -> OpenPBSRig:
        """Start the namespace and the four daemons; initialise PBS_HOME and the datastore the
        first time (a cold start); create the queues; wait for a free node."""
        _require_root()
        if self.running():
            raise RigError(f"a rig is already running in {self.workdir} (pids {self.pids})")
        ensure_debian_packages(RUN_DEBIAN_PACKAGES, "the OpenPBS rig")
        require_binaries()
        if self.prefix is None:
            self.prefix, built = locate_openpbs()
            if built is not None:
                self.timings["build"] = built
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.timings = {k: v for k, v in self.timings.items() if k == "build"}
        try:
            cold = not self.init_marker.exists()
            self.start_kind = "cold" if cold else "warm"
            self._prepare(cold)
            self._start_holder(deadline)
            self.timings["namespace"] = time.monotonic() - t0
            if cold:
                self._initialise(deadline)
                self.timings["initialise"] = time.monotonic() - t0 - self.timings["namespace"]
            t1 = time.monotonic()
            for name in self.DAEMONS:
                args = ["-t", "create"] if (cold and name == "pbs_server") else []
                self._start_daemon(name, args, deadline)
            self._wait_server(deadline)
            self.timings["daemons"] = time.monotonic() - t1
            self._configure(fresh=cold)
            if cold:
                self.init_marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
            self._wait_free(deadline)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        self._save_state()
        return self

    def stop(self, timeout: float = 20) -> None:
        """Delete the jobs, stop pbs_server (qterm; it stops the datastore), pbs_sched,
        pbs_mom, pbs_comm by PID, then the datastore if still up, then every process left in
        the namespace, then the holder.  Idempotent; touches nothing outside the namespace but
        client processes carrying this rig's PBS_CONF_FILE."""
        if not self.procs and not self.holder:
            self._load_state()
        if not self.holder and not self.procs:
            self._close_holder()
            return
        ns_pid = self._ns_pid(required=False)
        server = self.procs.get("pbs_server")
        if ns_pid and server and _alive(*server):
            with contextlib.suppress(RigError):
                self.delete_jobs(wait=False, force=True)
            with contextlib.suppress(RigError):
                self.run(["qterm", "-t", "quick"], timeout=timeout, check=False)
            deadline = time.monotonic() + timeout
            while _alive(*server) and time.monotonic() < deadline:
                time.sleep(0.05)
        killed: list[int] = []
        for name in reversed(self.DAEMONS):
            if name in self.procs:
                killed += _terminate([self.procs[name]], timeout=timeout)
        # the datastore: pbs_server stops it on qterm; if not (a killed server), pg_ctl, then TERM
        pg = self._pid_from(self.datastore / "postmaster.pid")
        if pg and ns_pid and self._in_ns(pg[0]):
            with contextlib.suppress(RigError):
                self.run(
                    [_pg_bin("pg_ctl"), "-D", str(self.datastore), "-w", "-m", "fast", "stop"],
                    user=self.data_user,
                    cwd="/",
                    timeout=timeout,
                    check=False,
                )
        leftovers = self._ns_processes()
        holder = self.holder
        leftovers = [p for p in leftovers if not holder or p != holder]
        killed += _terminate(leftovers, timeout=timeout)
        if holder:
            killed += _terminate([holder], timeout=timeout)
        self._close_holder()
        clients = self._client_processes()
        killed += _terminate(clients, timeout=timeout)
        self.last_stop = {
            "leftovers": sorted(p for p, _ in leftovers),
            "clients": sorted(p for p, _ in clients),
            "killed": sorted(killed),
        }
        left = [p for p, _ in self._ns_processes()] if self.netns else []
        if holder and _alive(*holder):
            left.append(holder[0])
        if left:
            raise RigError(f"processes of the OpenPBS rig survived SIGKILL: {left}")
        self.procs.clear()
        self.holder = None
        self.netns = None
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def stop_mom(self, timeout: float = 20) -> None:
        """Stop pbs_mom alone (TERM, wait, KILL), by its PID: a node whose daemon died."""
        mom = self.procs.get("pbs_mom")
        if mom is None or not _alive(*mom):
            raise RigError(f"pbs_mom is not running in {self.workdir}")
        _terminate([mom], timeout=timeout)
        self.procs.pop("pbs_mom", None)
        self._save_state()

    def start_mom(self, timeout: float = 60) -> None:
        """Start pbs_mom again after ``stop_mom``; returns once the node is free."""
        deadline = time.monotonic() + timeout
        self._start_daemon("pbs_mom", [], deadline)
        self._wait_free(deadline)
        self._save_state()

    def stop_controller(self, timeout: float = 20) -> None:
        """Stop pbs_server alone (``qterm -t quick``: running jobs keep running), then by its PID
        if it lingers: a controller outage. pbs_server stops its datastore as it goes."""
        server = self.procs.get("pbs_server")
        if server is None or not _alive(*server):
            raise RigError(f"pbs_server is not running in {self.workdir}")
        self.run(["qterm", "-t", "quick"], timeout=timeout, check=False)
        deadline = time.monotonic() + timeout
        while _alive(*server) and time.monotonic() < deadline:
            time.sleep(0.05)
        _terminate([server], timeout=timeout)
        self.procs.pop("pbs_server", None)
        self._save_state()

    def start_controller(self, timeout: float = 60) -> None:
        """Start pbs_server again after ``stop_controller`` (it recovers its jobs from its
        datastore); returns once it answers."""
        deadline = time.monotonic() + timeout
        self._start_daemon("pbs_server", [], deadline)
        self._wait_server(deadline)
        self._save_state()

    def __enter__(self) -> OpenPBSRig:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"OpenPBSRig({str(self.workdir)!r}, host={self.host!r}, address={self.address}, pids={self.pids})"
        )
