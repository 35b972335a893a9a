"""What an OpenPBS rig is made of: its address, ports, queues and data user, and the
environment rules shared by the build and the rig."""

from __future__ import annotations

import dataclasses
import re
import socket

#: the rig's address, on the namespace's lo (198.18.0.0/15: reserved for benchmarking, never routed)
ADDRESS = "198.18.0.1"
# PBS's own port numbers: the rig's namespace is private, so they cannot clash with anything
DEFAULT_PORTS = {"batch": 15001, "mom": 15002, "manager": 15003, "data": 15007, "comm": 17001}
# the system's program folders, last on every PATH the rig sets
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables read by PBS commands; a user's or an outer job's must not leak into the rig's
_PBS_ENV_PREFIXES = ("PBS_", "SLURM_", "PGHOST", "PGPORT", "PGUSER", "PGDATA")
# Set in the environment of every process the rig starts inside its namespace
_MARKER = "HUBSTOCK_OPENPBS_RIG"
_DATA_USER = "hspbsdata"  # runs the datastore (PostgreSQL refuses root); a system user, kept


@dataclasses.dataclass(frozen=True)
class Queue:
    """An execution queue and its limits (the fields of the site's ``[[spawner.queues]]``)."""

    name: str
    max_cpus: int
    max_memory: str  # "2G", "512M", "16gb"
    max_walltime: str  # "01:00:00"

    @classmethod
    def of(cls, q: object) -> Queue:
        """A Queue from anything with name, max_cpus, max_memory and max_walltime (a site's
        QueueSettings, for example)."""
        return q if isinstance(q, Queue) else cls(q.name, q.max_cpus, q.max_memory, q.max_walltime)  # type: ignore[attr-defined]


DEFAULT_QUEUES = (
    Queue("debug", max_cpus=2, max_memory="2G", max_walltime="01:00:00"),
    Queue("batch", max_cpus=4, max_memory="16G", max_walltime="08:00:00"),
)


def pbs_size(value: str) -> str:
    """A memory size as PBS writes it: '2G' -> '2gb', '512M' -> '512mb', '16gb' -> '16gb'."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)(i?b)?\s*", value, re.I)
    if not m:
        raise ValueError(f"not a memory size: {value!r} (e.g. '2G' or '512mb')")
    return f"{m.group(1)}{m.group(2).lower()}b"


def _default_host() -> str:
    name = socket.gethostname().split(".")[0]
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,62}", name) or name.startswith("localhost"):
        name = "pbshost"
    return name
