"""OpenPBSRig's jobs and node, through the PBS client commands run in its namespace."""

from __future__ import annotations

import re
import time

from rigs.slurm_rig import RigError, _tail  # shared process helpers

from .qstat import parse_qstat_f


class _JobsMixin:
    """OpenPBSRig's jobs and nodes (qstat, qdel, pbsnodes) and its logs."""

    def qstat(self, job_id: str | None = None, *, history: bool = True) -> dict[str, dict[str, str]]:
        """``qstat -f[x] [ID]`` parsed: {job id: {attribute: value}} (finished jobs too with history)."""
        argv = ["qstat", "-fx" if history else "-f"] + ([job_id] if job_id else [])
        cp = self.run(argv, timeout=20, check=False)
        if cp.returncode != 0 and not cp.stdout.strip():
            if re.search(r"Unknown Job Id|Job has finished", cp.stderr):
                return {}
            raise RigError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}")
        return parse_qstat_f(cp.stdout)

    def job_state(self, job_id: str) -> str | None:
        """The job's job_state letter (Q, R, E, F, H, S, ...), or None if PBS does not know it."""
        return self.qstat(job_id).get(job_id, {}).get("job_state")

    def jobs(self, *, active_only: bool = False) -> dict[str, str]:
        """job id -> job_state for every job (finished ones too, unless active_only)."""
        states = {j: a.get("job_state", "?") for j, a in self.qstat().items()}
        if active_only:
            states = {j: s for j, s in states.items() if s not in ("F", "X", "M")}
        return states

    def delete_jobs(
        self, *, user: str | None = None, wait: bool = True, force: bool = False, timeout: float = 60
    ) -> None:
        """qdel every unfinished job (of *user*); wait until none is left unless wait=False."""
        active = self.jobs(active_only=True)
        if user is not None:
            owners = {j: a.get("Job_Owner", "").split("@")[0] for j, a in self.qstat().items()}
            active = {j: s for j, s in active.items() if owners.get(j) == user}
        if not active:
            return
        self.run(["qdel", *(["-W", "force"] if force else []), *active], timeout=30, check=False)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while set(active) & set(self.jobs(active_only=True)):
            if time.monotonic() > deadline:
                raise RigError(f"jobs survived qdel for {timeout} s: {self.jobs()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        """The node's state as pbsnodes reports it: 'free', 'job-busy', 'down', ..."""
        cp = self.run(["pbsnodes", "-v", self.host], timeout=10, check=False)
        m = re.search(r"^\s*state = (.+)$", cp.stdout, re.M)
        return m.group(1).strip() if m else f"unknown ({(cp.stderr or cp.stdout).strip()})"

    def wait_free(self, timeout: float = 30) -> None:
        self._wait_free(time.monotonic() + timeout)

    def logs_tail(self, n: int = 25) -> str:
        day = time.strftime("%Y%m%d")
        paths = [self.home / f"{d}_logs" / day for d in ("server", "sched", "mom", "comm")]
        paths += sorted(self.log_dir.glob("*.log"))
        return "\n".join(_tail(p, n) for p in paths if p.exists())
