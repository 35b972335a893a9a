"""OpenPBSRig's bookkeeping of processes: daemons found by their lock files, clients found by
their environment, and the state file through which another process adopts the rig."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from rigs.slurm_rig import _environ, _proc_stat  # shared process helpers

from .config import _MARKER


class _ProcessesMixin:
    """OpenPBSRig's daemons by their lock files, its client processes, and its state file."""

    def stray_processes(self) -> list[int]:
        """PIDs still in the rig's namespace or carrying its PBS_CONF_FILE (not this process).
        Empty after stop()."""
        return sorted({p for p, _ in self._ns_processes()} | {p for p, _ in self._client_processes()})

    @staticmethod
    def _pid_from(path: Path) -> tuple[int, int] | None:
        """(pid, starttime) of the live process whose PID starts *path* (a lock or PID file)."""
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        m = re.match(r"\D*(\d+)", text)
        if not m:
            return None
        pid = int(m.group(1))
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X"):
            return None
        return pid, st[2]

    def _client_processes(self) -> list[tuple[int, int]]:
        """Processes outside the namespace that carry this rig's PBS_CONF_FILE or marker (this
        process and its ancestors excepted)."""
        mine = {os.getpid()}
        p = os.getpid()
        while p > 1 and (st := _proc_stat(p)):
            p = st[1]
            mine.add(p)
        conf, workdir = str(self.conf), str(self.workdir)
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in mine:
                continue
            env = _environ(int(entry))
            if env.get("PBS_CONF_FILE") == conf or env.get(_MARKER) == workdir:
                st = _proc_stat(int(entry))
                if st and st[0] not in ("Z", "X"):
                    out.append((int(entry), st[2]))
        return out

    def _save_state(self) -> None:
        data = {
            "holder": self.holder,
            "netns": self.netns,
            "procs": self.procs,
            "prefix": str(self.prefix) if self.prefix else None,
            "exec_dir": str(self.exec_dir) if self.exec_dir else None,
            "host": self.host,
            "address": self.address,
            "timings": self.timings,
            "start_kind": self.start_kind,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    def _load_state(self) -> None:
        """Adopt what an earlier OpenPBSRig on this workdir recorded (``down``, ``exec``)."""
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self.holder = tuple(data["holder"]) if data.get("holder") else None  # type: ignore[assignment]
        self.netns = data.get("netns")
        self.procs = {k: (int(v[0]), int(v[1])) for k, v in data.get("procs", {}).items()}
        if data.get("prefix") and self.prefix is None:
            self.prefix = Path(data["prefix"])
        if data.get("exec_dir"):
            self.exec_dir = Path(data["exec_dir"])
        self.host = data.get("host") or self.host
        self.address = data.get("address") or self.address
        self.timings = data.get("timings") or {}
        self.start_kind = data.get("start_kind")
