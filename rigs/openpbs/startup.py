"""OpenPBSRig's start-up: the workdir, pbs.conf and the namespace's /etc/hosts, the daemons,
then the queues, the server's settings and the node."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from rigs.slurm_rig import RigError, _alive, _check_traversable  # shared process helpers

from .config import _MARKER, _SBIN_PATH, pbs_size
from .qstat import parse_qstat_f


class _StartupMixin:
    """OpenPBSRig's start-up steps, apart from the namespace (namespace.py) and a cold start's
    initialisation (datastore.py)."""

    def _daemon_env(self) -> dict[str, str]:
        env = {
            "PATH": f"{self.exec_dir}/bin:{self.exec_dir}/sbin:{_SBIN_PATH}",
            "PBS_CONF_FILE": str(self.conf),
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            _MARKER: str(self.workdir),
        }
        if os.environ.get("TZ"):
            env["TZ"] = os.environ["TZ"]
        return env

    def _prepare(self, cold: bool) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        w.chmod(0o755)
        _check_traversable(w)
        if cold:  # a half-done initialisation (no marker) is redone from scratch
            shutil.rmtree(self.home, ignore_errors=True)
        for d in (self.etc, self.log_dir, self.run_dir):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        self.tmp_dir.mkdir(exist_ok=True)
        self.tmp_dir.chmod(0o1777)
        assert self.prefix is not None
        # The build may live in a cache under a mode-700 home: job users reach it through a
        # read-only bind mount inside the namespace.  An installed PBS is used where it is.
        if _world_searchable(self.prefix):
            self.exec_dir = self.prefix
        else:
            self.exec_dir = w / "exec"
            self.exec_dir.mkdir(exist_ok=True)
            self.exec_dir.chmod(0o755)
        self._ensure_data_user()
        self.conf.write_text(self._conf_text())
        self.conf.chmod(0o644)
        self.hosts_file.write_text(self._hosts_text())
        self.hosts_file.chmod(0o644)
        for f in self.lock_files.values():  # stale locks of an earlier (killed) rig
            with contextlib.suppress(FileNotFoundError):
                f.unlink()

    def _conf_text(self) -> str:
        p, a = self.ports, self.address
        return f"""\
PBS_EXEC={self.exec_dir}
PBS_HOME={self.home}
PBS_SERVER={self.host}
PBS_SERVER_HOST_NAME={a}
PBS_MOM_NODE_NAME={self.host}
PBS_LEAF_NAME={a}
PBS_COMM_NAME={a}:{p["comm"]}
PBS_LEAF_ROUTERS={a}:{p["comm"]}
PBS_START_SERVER=1
PBS_START_SCHED=1
PBS_START_COMM=1
PBS_START_MOM=1
PBS_CORE_LIMIT=unlimited
PBS_TMPDIR={self.tmp_dir}
PBS_BATCH_SERVICE_PORT={p["batch"]}
PBS_MOM_SERVICE_PORT={p["mom"]}
PBS_MANAGER_SERVICE_PORT={p["manager"]}
PBS_DATA_SERVICE_PORT={p["data"]}
"""

    def _hosts_text(self) -> str:
        """The machine's /etc/hosts without the rig's host name, plus that name on the rig's
        address (the daemons resolve it, and its reverse, on every connection)."""
        keep = []
        with contextlib.suppress(OSError):
            for line in Path("/etc/hosts").read_text().splitlines():
                fields = line.split("#", 1)[0].split()
                if self.host in fields[1:]:
                    continue
                keep.append(line)
        return (
            f"# written by the OpenPBS rig (rigs/openpbs), mounted on /etc/hosts in the rig's namespace\n"
            f"{self.address}\t{self.host}\n" + "\n".join(keep) + "\n"
        )

    def _start_daemon(self, name: str, args: Sequence[str], deadline: float) -> None:
        t0 = time.monotonic()
        assert self.exec_dir is not None
        self._ns_exec(
            name, [f"{self.exec_dir}/sbin/{name}", *args], timeout=max(10.0, deadline - time.monotonic())
        )
        while True:
            found = self._pid_from(self.lock_files[name])
            if found and self._in_ns(found[0]):
                self.procs[name] = found
                self._save_state()
                break
            if time.monotonic() > deadline:
                raise RigError(f"{name} wrote no live PID to {self.lock_files[name]}\n{self.logs_tail()}")
            time.sleep(0.05)
        self.timings[name] = time.monotonic() - t0

    def _wait_server(self, deadline: float) -> None:
        while True:
            cp = self.run(["qstat", "-B"], timeout=10, check=False)
            if cp.returncode == 0:
                return
            self._check_daemons()
            if time.monotonic() > deadline:
                raise RigError(f"pbs_server does not answer: {cp.stderr.strip()}\n{self.logs_tail()}")
            time.sleep(0.2)

    def _configure(self, *, fresh: bool) -> None:
        """Queues as asked (others removed when empty), scheduling, job history, the node."""
        existing = set(parse_qstat_f(self.run(["qstat", "-Qf"], timeout=20).stdout))
        lines = []
        for q in self.queues:
            if q.name not in existing:
                lines.append(f"create queue {q.name} queue_type = execution")
            lines += [
                f"set queue {q.name} enabled = True",
                f"set queue {q.name} started = True",
                f"set queue {q.name} resources_max.ncpus = {q.max_cpus}",
                f"set queue {q.name} resources_max.mem = {pbs_size(q.max_memory)}",
                f"set queue {q.name} resources_max.walltime = {q.max_walltime}",
            ]
        lines += [
            f"set server default_queue = {self.queues[0].name}",
            "set server scheduling = True",
            "set server job_history_enable = True",  # qstat -x: finished jobs stay, as F
            "set server flatuid = True",
            "set server scheduler_iteration = 10",
        ]
        wanted = {q.name for q in self.queues}
        lines += [f"delete queue {name}" for name in sorted(existing - wanted)]  # e.g. -t create's workq
        nodes = self.run(["pbsnodes", "-av"], timeout=20, check=False).stdout
        if not re.search(rf"^{re.escape(self.host)}$", nodes, re.M):
            lines.append(f"create node {self.host} Mom={self.address},Port={self.ports['mom']}")
        cp = self.run(["qmgr"], input="\n".join(lines) + "\n", timeout=30, check=False)
        if cp.returncode != 0:
            raise RigError(
                f"qmgr failed ({cp.returncode}): {cp.stderr.strip() or cp.stdout.strip()}\n"
                + "\n".join(lines)
            )

    def _wait_free(self, deadline: float) -> None:
        while True:
            state = self.node_state()
            if state == "free":
                return
            self._check_daemons()
            if time.monotonic() > deadline:
                raise RigError(f"node {self.host} not free (state: {state!r})\n{self.logs_tail()}")
            time.sleep(0.2)

    def _check_daemons(self) -> None:
        for name, (pid, start) in self.procs.items():
            if not _alive(pid, start):
                raise RigError(f"{name} ({pid}) died during start-up\n{self.logs_tail()}")


def _world_searchable(path: Path) -> bool:
    try:
        _check_traversable(Path(path))
    except (RigError, OSError):
        return False
    return True
