"""One face for the tests' schedulers: the Slurm rig (``slurm`` and ``torque`` flavours) and the
OpenPBS rig (``pbs``), as the hub tests, the benchmarks and the demo need them.

A :class:`Cluster` says how to run a hub against its scheduler (the ``hubstock.toml`` keys,
the hub's environment, where the hub and its client run) and answers the questions a test
asks of the scheduler, whatever it is: which jobs are active, whose and where
(:meth:`Cluster.active_jobs`), what a job was given (:meth:`Cluster.resources`), and it can
delete a job from outside the hub or keep the node busy (:meth:`Cluster.occupy`).

The OpenPBS rig lives in a private network namespace: its cluster starts the hub there
(``launcher``) and gives the hub's client a :class:`~rigs.hub_rig.NetNamespace` (``netns``),
so that the hub, the proxy, the servers and the test's requests never leave it.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .hub_rig import NetNamespace
from .slurm_rig import RigError, SlurmRig

#: the hub's PATH (the venv first: jupyterhub, configurable-http-proxy's node comes from /usr/bin)
BASE_PATH = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@dataclasses.dataclass(frozen=True)
class Job:
    """An active job as the scheduler shows it (``state`` in the scheduler's own words)."""

    id: str
    user: str
    state: str
    queue: str
    node: str | None
    running: bool


class Cluster:
    """What the hub tests need from a scheduler rig (see the module's docstring)."""

    #: the rig's kind: "slurm" or "pbs"
    name: str
    #: hubstock.toml's [spawner] scheduler
    scheduler: str
    #: the node's name, as the job's exec host shows it
    node: str
    #: prefixes the hub's command line (None: the hub runs here)
    launcher: Callable[[Sequence[str]], list[str]] | None = None
    #: where the hub's client runs (None: here)
    netns: NetNamespace | None = None

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`rigs.hubsite.hub_settings` for this scheduler."""
        raise NotImplementedError

    def hub_env(self) -> dict[str, str]:
        """What the hub's environment needs to run the scheduler's commands."""
        raise NotImplementedError

    def active_jobs(self) -> dict[str, Job]:
        raise NotImplementedError

    def jobs(self, *, active_only: bool = True) -> list[str]:
        raise NotImplementedError

    def wait_no_jobs(self, timeout: float = 60, *, active_only: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while self.jobs(active_only=active_only):
            if time.monotonic() > deadline:
                raise RigError(f"jobs still active after {timeout} s: {self.active_jobs()}")
            time.sleep(0.5)

    def user_job(self, user: str) -> Job:
        """The user's only active job."""
        (job,) = [j for j in self.active_jobs().values() if j.user == user]
        return job

    def delete(self, job_id: str) -> None:
        """Delete the job as an admin would, from outside the hub."""
        raise NotImplementedError

    def resources(self, job_id: str) -> dict[str, str]:
        """What the scheduler gave the job, in its own words (queue, CPUs, memory, walltime)."""
        raise NotImplementedError

    def occupy(self, user: str, queue: str) -> str:
        """Submit, as ``user``, a job that takes the whole node in ``queue``; its id."""
        raise NotImplementedError

    def cancel_all(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.netns:
            self.netns.close()
            self.netns = None


class SlurmCluster(Cluster):
    """The Slurm rig, through Slurm's own commands (``slurm``) or its PBS wrappers (``torque``)."""

    name = "slurm"
    node = "localhost"

    def __init__(self, rig: SlurmRig, scheduler: str = "slurm") -> None:
        self.rig, self.scheduler = rig, scheduler

    def settings(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "slurm_conf": self.rig.slurm_conf}

    def hub_env(self) -> dict[str, str]:
        return dict(self.rig.env)

    def active_jobs(self) -> dict[str, Job]:
        ids = set(self.rig.jobs(active_only=True))
        out = self.rig.run(["squeue", "-h", "-t", "all", "-o", "%i|%u|%T|%P|%N"], timeout=20).stdout
        jobs = {}
        for line in out.splitlines():
            jid, user, state, queue, node = (line.strip().split("|") + [""] * 5)[:5]
            if jid in ids:
                running = state == "RUNNING"
                jobs[jid] = Job(jid, user, state, queue, node or None, running)
        return jobs

    def jobs(self, *, active_only: bool = True) -> list[str]:
        return self.rig.jobs(active_only=active_only)

    def delete(self, job_id: str) -> None:
        self.rig.run(["scancel", job_id], timeout=30)

    def resources(self, job_id: str) -> dict[str, str]:
        out = self.rig.run(["scontrol", "show", "job", job_id], timeout=20).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def occupy(self, user: str, queue: str) -> str:
        cp = self.rig.run(
            ["runuser", "-u", user, "--", "sbatch", "--parsable", "--exclusive", "-p", queue, "-t", "10"]
            + ["-o", "/dev/null", "--wrap", "sleep 600"],
            timeout=30,
        )
        return cp.stdout.strip().split(";")[0]

    def cancel_all(self) -> None:
        self.rig.cancel_all()


class PBSCluster(Cluster):
    """The OpenPBS rig: the hub, its proxy and its client run in the rig's network namespace.

    The hub's API listens on the rig's address and the jobs reach it by the rig's host name
    (``hub_connect_ip``), as compute nodes reach a hub node by its cluster-network name."""

    name = "pbs"
    scheduler = "pbs"

    def __init__(self, rig: Any) -> None:  # rigs.openpbs.OpenPBSRig
        self.rig = rig
        self.node = rig.host
        self.launcher = rig.ns_argv
        self.netns = NetNamespace(rig.holder[0])

    @property
    def bin(self) -> Path:
        return Path(self.rig.exec_dir) / "bin"

    def settings(self) -> dict[str, Any]:
        return {
            "scheduler": "pbs",
            "hub_ip": self.rig.address,
            "hub_connect_ip": self.rig.host,
            "environment": {"PBS_CONF_FILE": str(self.rig.conf)},
            # the submit command runs with the job's PATH (the published builds and /usr/bin);
            # -f as in the flavour's default (no background qsub daemon)
            "submit_cmd": f"{self.bin / 'qsub'} -f",
        }

    def hub_env(self) -> dict[str, str]:
        # the status and cancel commands run with the hub's environment
        return {"PBS_CONF_FILE": str(self.rig.conf), "PATH": f"{self.bin}:{BASE_PATH}"}

    def active_jobs(self) -> dict[str, Job]:
        jobs = {}
        for jid, a in self.rig.qstat(history=False).items():
            state = a.get("job_state", "?")
            if state in ("F", "X", "M"):
                continue
            host = a.get("exec_host", "").split("/")[0] or None
            owner = a.get("Job_Owner", "").split("@")[0]
            jobs[jid] = Job(jid, owner, state, a.get("queue", ""), host, state == "R")
        return jobs

    def jobs(self, *, active_only: bool = True) -> list[str]:
        return list(self.rig.jobs(active_only=active_only))

    def delete(self, job_id: str) -> None:
        self.rig.run(["qdel", job_id], timeout=30)

    def resources(self, job_id: str) -> dict[str, str]:
        return self.rig.qstat(job_id)[job_id]

    def occupy(self, user: str, queue: str) -> str:
        out = self.rig.run(["pbsnodes", "-v", self.rig.host], timeout=20).stdout
        ncpus = re.search(r"resources_available\.ncpus = (\d+)", out)
        assert ncpus, out
        cp = self.rig.run(
            ["qsub", "-f", "-q", queue, "-l", f"select=1:ncpus={ncpus.group(1)}", "-l", "walltime=00:10:00"]
            + ["-j", "oe", "-o", "/dev/null"],
            user=user,
            input="sleep 600\n",
        )
        return cp.stdout.strip()

    def cancel_all(self) -> None:
        self.rig.delete_jobs(force=True)
