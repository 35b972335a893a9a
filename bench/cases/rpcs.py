"""``status_rpcs_per_interval``: the status queries slurmctld serves per poll interval with N
servers running, against batchspawner's own per-job polling of the same jobs."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from typing import Any

from rigs.channel import cached_channel
from rigs.hub_rig import Hub
from rigs.hubsite import free_port, hub_settings, start_hub
from rigs.slurm_rig import SlurmRig, create_user, remove_user, require_binaries

from .common import Bench, result, skipped
from .hub import spawn_all, user_tokens

# --------------------------------------------------------------------------- status_rpcs_per_interval


def status_rpcs_per_interval(b: Bench) -> list[dict[str, Any]]:
    """The status RPCs slurmctld serves per poll interval (``sdiag``, by message type) with N servers
    running, against batchspawner's own per-job polling of the same N jobs (``SlurmSpawner.poll``
    once per interval for each, as JupyterHub calls it), measured in the same run; and with 1 server.

    The servers are real (JupyterHub, PAM users, the Slurm rig with its cores shared); the hub's
    ``status_interval`` is 5 s (2 s in the tiny run, with 4 servers over 3 intervals). The baseline runs while the hub is down,
    so that only batchspawner's queries are counted.
    """
    n, interval, windows = (4, 2, 3) if b.tiny else (20, 5, 4)  # tiny: tests/test_bench.py's check
    unit, base = "RPCs", "batchspawner's per-job polling of the same servers"
    goal = "the same as with 1 server (one query per interval, whatever N)"
    if os.geteuid() != 0:
        reason = "needs root (the Slurm rig, PAM users and a hub that switches users)"
        return [skipped("status_rpcs_per_interval", "status_rpcs_per_interval", unit, base, goal, reason)]
    require_binaries()
    site = b.hub_site()
    run = secrets.token_hex(2)
    users = {f"hsrpc{run}u{i:02d}": secrets.token_urlsafe(12) for i in range(n)}
    rig = SlurmRig(site.parent / "slurm-rpcs", oversubscribe=max(n, 2))
    rig.start()
    hub: Hub | None = None
    try:
        for name, pw in users.items():
            create_user(name, pw, site.parent / "homes")
        ports = [free_port() for _ in range(3)]
        text = hub_settings(
            site.parent / "root", cached_channel(), site.parent / "state-rpcs", "slurm", ports, rig.slurm_conf
        )
        (site / "hubstock.toml").write_text(
            text.replace("[spawner]\n", f"[spawner]\nstatus_interval = {interval}\n", 1)
        )
        hub = start_hub(
            site, ports[0], site.parent / "hub-rpcs.log", extra_env=rig.env, cleanup_servers=False
        )
        tokens = list(user_tokens(hub, users).items())
        spawn_all(hub, dict(tokens[:1]))
        with_one, one_counts = _status_rpcs(rig, interval, windows)
        for i in range(1, n, 5):  # a few at a time: the machine may have two cores
            spawn_all(hub, dict(tokens[i : i + 5]))
        with_n, n_counts = _status_rpcs(rig, interval, windows)
        jobs = dict(line.split() for line in rig.run(["squeue", "-h", "-o", "%i %u"]).stdout.splitlines())
        if len(jobs) != n:
            raise RuntimeError(f"{len(jobs)} jobs for {n} servers: {jobs}")
        hub.stop()  # the jobs stay (cleanup_servers off), and only batchspawner asks about them now
        baseline, base_counts = _batchspawner_rpcs(rig, jobs, interval, windows)
        hub.cleanup_servers = True  # start it once more to stop the servers as the hub does
        hub.start()
    finally:
        if hub is not None:
            hub.stop()
        rig.cancel_all()
        for name in users:
            remove_user(name)
        rig.stop()
    return [
        result(
            "status_rpcs_per_interval",
            with_n,
            unit,
            base,
            baseline,
            goal,
            met=with_n <= with_one,
            servers=n,
            with_1_server=with_one,
            interval_s=interval,
            intervals=windows,
            rpcs_by_type={"1": one_counts, str(n): n_counts, "baseline": base_counts},
            runs=1,
        )
    ]


def _status_rpcs(rig: SlurmRig, interval: float, windows: int) -> tuple[float, dict[str, int]]:
    """Status RPCs per interval over ``windows`` intervals, after one interval of quiet; and by type."""
    time.sleep(interval)
    rig.reset_rpc_counts()
    time.sleep(interval * windows)
    counts = {k: v for k, v in rig.rpc_counts().items() if k in rig.STATUS_RPCS}
    return sum(counts.values()) / windows, counts


def _batchspawner_rpcs(
    rig: SlurmRig, jobs: dict[str, str], interval: float, windows: int
) -> tuple[float, dict[str, int]]:
    """What batchspawner's own SlurmSpawner costs: each job's ``poll()`` once per interval, as the
    hub's user (``runuser -u USER --``, as the hub runs it)."""
    import asyncio
    from types import SimpleNamespace

    import batchspawner
    from jupyterhub.objects import Hub as JupyterHubHub

    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    spawners = []
    for job_id, user in jobs.items():
        who = SimpleNamespace(name=user, url=f"/user/{user}/", escaped_name=user)
        sp = batchspawner.SlurmSpawner(user=who, hub=JupyterHubHub(), name="")
        sp.exec_prefix = f"{runuser} -u {{username}} --"
        sp.api_token = secrets.token_hex(16)
        sp.job_id = job_id
        spawners.append(sp)

    async def rounds() -> None:
        for _ in range(windows):
            t0 = time.monotonic()
            states = await asyncio.gather(*(sp.poll() for sp in spawners))
            if any(s is not None for s in states):
                raise RuntimeError(f"batchspawner saw a server end: {states}")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(rig.slurm_conf)  # batchspawner queries with the hub's environment
    try:
        rig.reset_rpc_counts()
        asyncio.run(rounds())
        counts = {k: v for k, v in rig.rpc_counts().items() if k in rig.STATUS_RPCS}
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    return sum(counts.values()) / windows, counts
