"""Spawning through a batch scheduler: ``spawn_to_ready`` (the private Slurm rig) and
``spawn_to_ready_pbs`` (the private OpenPBS rig), each against JupyterHub's local-process
spawner in the same run; and the helpers that run a hub and spawn its users' servers."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rigs.channel import cached_channel
from rigs.clusters import Cluster, PBSCluster
from rigs.hub_rig import Hub
from rigs.hubsite import free_port, hub_settings, start_hub
from rigs.slurm_rig import SlurmRig, create_user, remove_user, require_binaries

from .common import Bench, median, result, rounded, skipped, timings

# --------------------------------------------------------------------------- spawn_to_ready


def spawn_to_ready(b: Bench) -> list[dict[str, Any]]:
    """From the spawn request to a ready server through the local Slurm, for 1 and N users at once,
    against the same servers started by JupyterHub's LocalProcessSpawner (as root, as each user).

    Two hubs run side by side on the same published site (one per spawner) and the rounds
    alternate between them; one untimed round of every user first warms the users' homes.
    Where the time goes: the median of each phase the Slurm spawner logs per start (``phases_s``),
    and JupyterHub's own time to start of both spawners (``hub_took_s``, ``hub_took_local_s``).
    """
    counts = (1, 2) if b.tiny else (1, 10)
    base, goal = "the same with the local-process spawner", "report (no target)"
    if os.geteuid() != 0:
        reason = "needs root (the Slurm rig, PAM users and a hub that switches users)"
        return [skipped("spawn_to_ready", f"spawn_to_ready_{n}", "s", base, goal, reason) for n in counts]
    require_binaries()
    site = b.hub_site()
    run = secrets.token_hex(2)
    users = {f"hsbench{run}u{i}": secrets.token_urlsafe(12) for i in range(max(counts))}
    times: dict[tuple[str, int], list[list[float]]] = {}
    logs: dict[tuple[str, int], str] = {}
    checks: dict[str, Any] = {}
    rig = OversubscribedRig(site.parent / "slurm", share=max(counts))
    rig.start()
    try:
        for name, pw in users.items():
            create_user(name, pw, site.parent / "homes")
        with running_hub(site, "slurm", rig) as slurm, running_hub(site, "local", rig) as local:
            hubs = {"slurm": (slurm, user_tokens(slurm, users)), "local": (local, user_tokens(local, users))}
            for scheduler, (hub, tokens) in hubs.items():
                if not b.tiny:  # the tiny run checks the code runs: no warm-up round
                    checks[f"first_round_{scheduler}_s"] = rounded(max(spawn_round(hub, rig, tokens)))
            for n in counts:
                for _ in range(b.repeat if n == 1 else max(1, min(b.repeat, 3))):
                    for scheduler, (hub, tokens) in hubs.items():
                        some = dict(list(tokens.items())[:n])
                        took, logged = logged_round(hub, rig, some)
                        times.setdefault((scheduler, n), []).append(took)
                        logs[(scheduler, n)] = logs.get((scheduler, n), "") + logged
        checks["active_jobs_after"] = len(rig.jobs(active_only=True))
    finally:
        for name in users:
            remove_user(name)
        rig.stop()
    checks["rig_processes_after"] = len(rig.stray_processes())
    out = []
    for n in counts:
        slurm_all, local_all = times[("slurm", n)], times[("local", n)]
        slurm_s, local_s = [max(t) for t in slurm_all], [max(t) for t in local_all]
        out.append(
            result(
                "spawn_to_ready",
                median(slurm_s),
                "s",
                base,
                median(local_s),
                goal,
                name=f"spawn_to_ready_{n}",
                users=n,
                measure="until the last of the users' servers is ready" if n > 1 else "one user",
                per_user_median_s=rounded(median([x for t in slurm_all for x in t])),
                per_user_median_local_s=rounded(median([x for t in local_all for x in t])),
                **spawn_log_figures(logs[("slurm", n)], logs[("local", n)]),
                **checks,
                **timings(slurm_s, local_s),
            )
        )
    return out


#: the line the batch spawners log per start (hubstock.hub.job_status.phase_line), and JupyterHub's own
_PHASE_LINE = re.compile(r"Spawn phases of \S+'s server, job \S+ \(s\): ([^\n]*)")
_TOOK_LINE = re.compile(r"User \S+ took ([0-9.]+) seconds to start")


def spawn_log_figures(batch_log: str, local_log: str) -> dict[str, Any]:
    """Where the time of the starts went, from the hubs' logs: the median of each phase of the batch
    spawner's starts (``phases_s``, from its one line per start) and JupyterHub's own time to start
    (from the spawn request to the proxy route: ``hub_took_s``, and the local-process spawner's
    ``hub_took_local_s``)."""
    starts = [
        {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", m.group(1))}
        for m in _PHASE_LINE.finditer(batch_log)
        if "failed" not in m.group(1)
    ]
    out: dict[str, Any] = {"phased_starts": len(starts)}
    if starts:
        out["phases_s"] = {k: rounded(median([s[k] for s in starts if k in s])) for k in starts[0]}
    for key, text in (("hub_took_s", batch_log), ("hub_took_local_s", local_log)):
        took = [float(x) for x in _TOOK_LINE.findall(text)]
        out[key] = rounded(median(took)) if took else None
    return out


def logged_round(hub: Hub, rig: SlurmRig | Cluster, tokens: dict[str, str]) -> tuple[list[float], str]:
    """:func:`spawn_round`, and what the hub logged meanwhile."""
    start = hub.log_path.stat().st_size if hub.log_path.exists() else 0
    took = spawn_round(hub, rig, tokens)
    with open(hub.log_path, "rb") as f:
        f.seek(start)
        return took, f.read().decode(errors="replace")


def user_tokens(hub: Hub, users: dict[str, str]) -> dict[str, str]:
    """An API token per user, from a PAM login with the user's password."""
    tokens = {}
    for name, pw in users.items():
        status, token = hub.token_for(name, pw)
        if status != 201 or not token:
            raise RuntimeError(f"no token for {name}: {status}\n{hub.log_tail()}")
        tokens[name] = token
    return tokens


def spawn_to_ready_pbs(b: Bench) -> list[dict[str, Any]]:
    """``spawn_to_ready_1`` on the private OpenPBS (PBS Pro): from the spawn request to a ready server
    for one user, against the same server started by the local-process spawner. Both hubs, their
    proxies and the client run in the OpenPBS rig's network namespace; rounds alternate between them.
    Not in the tiny run (it builds OpenPBS the first time); skipped without root or OpenPBS."""
    if b.tiny:
        return []
    name, base = "spawn_to_ready_1_pbs", "the same with the local-process spawner (in the rig's namespace)"
    goal = "report (no target)"
    if os.geteuid() != 0:
        return [
            skipped("spawn_to_ready_pbs", name, "s", base, goal, "needs root (the OpenPBS rig, PAM users)")
        ]
    from rigs.openpbs import OpenPBSMissing, OpenPBSRig, locate_openpbs

    try:
        prefix, built = locate_openpbs(log=b.say)
    except OpenPBSMissing as e:
        return [skipped("spawn_to_ready_pbs", name, "s", base, goal, str(e))]
    site = b.hub_site()
    user = f"hsbench{secrets.token_hex(2)}p"
    users = {user: secrets.token_urlsafe(12)}
    times: dict[str, list[float]] = {"pbs": [], "local": []}
    logs = {"pbs": "", "local": ""}
    checks: dict[str, Any] = {}
    rig = OpenPBSRig(site.parent / "openpbs", prefix=prefix)
    rig.start()
    checks["openpbs_start_s"] = rounded(rig.timings.get("start"))
    if built is not None:
        checks["openpbs_build_s"] = rounded(built)
    cluster = PBSCluster(rig)
    try:
        create_user(user, users[user], site.parent / "homes")
        with (
            running_hub(site, "pbs", rig, cluster) as pbs,
            running_hub(site, "local", rig, cluster) as local,
        ):
            hubs = {"pbs": (pbs, user_tokens(pbs, users)), "local": (local, user_tokens(local, users))}
            for scheduler, (hub, tokens) in hubs.items():  # warms the user's home
                checks[f"first_round_{scheduler}_s"] = rounded(max(spawn_round(hub, cluster, tokens)))
            for _ in range(b.repeat):
                for scheduler, (hub, tokens) in hubs.items():
                    took, logged = logged_round(hub, cluster, tokens)
                    times[scheduler] += took
                    logs[scheduler] += logged
        checks["active_jobs_after"] = len(cluster.jobs(active_only=True))
    finally:
        remove_user(user)
        cluster.close()
        rig.stop()
    checks["rig_processes_after"] = len(rig.stray_processes())
    return [
        result(
            "spawn_to_ready_pbs",
            median(times["pbs"]),
            "s",
            base,
            median(times["local"]),
            goal,
            name=name,
            users=1,
            measure="one user, OpenPBS (PBS Pro) job",
            **spawn_log_figures(logs["pbs"], logs["local"]),
            **checks,
            **timings(times["pbs"], times["local"]),
        )
    ]


def spawn_round(hub: Hub, rig: SlurmRig | Cluster, tokens: dict[str, str]) -> list[float]:
    """Start the users' servers at once, then stop them (and wait for their jobs to end)."""
    took = spawn_all(hub, tokens)
    stop_all(hub, tokens)
    rig.wait_no_jobs(timeout=120, active_only=True)
    return took


class OversubscribedRig(SlurmRig):
    """The tests' Slurm rig, with its cores shared by up to ``share`` jobs (ten servers on two cores)."""

    def __init__(self, workdir: Path, share: int) -> None:
        self.share = share
        super().__init__(workdir)

    def _slurm_conf_text(self) -> str:
        return (
            super()._slurm_conf_text().replace("State=UP\n", f"State=UP OverSubscribe=FORCE:{self.share}\n")
        )


@contextmanager
def running_hub(site: Path, scheduler: str, rig: Any, cluster: Cluster | None = None) -> Iterator[Hub]:
    """JupyterHub on the hub site with ``scheduler`` (slurm, pbs or local); stopped by PID afterwards.
    With ``cluster`` (the OpenPBS rig's), the hub and its client run in the rig's network namespace."""
    hub_dir = site.parent
    ports = [free_port() for _ in range(3)]
    label = scheduler if cluster is None else f"{scheduler}-{cluster.name}"
    if cluster is not None and scheduler != "local":
        settings, env = cluster.settings(), cluster.hub_env()
    else:
        conf = rig.slurm_conf if scheduler == "slurm" else None
        settings = {"scheduler": scheduler, "slurm_conf": conf}
        env = rig.env if scheduler == "slurm" else None
    (site / "hubstock.toml").write_text(
        hub_settings(hub_dir / "root", cached_channel(), hub_dir / f"state-{label}", ports=ports, **settings)
    )
    hub = start_hub(
        site,
        ports[0],
        hub_dir / f"hub-{label}.log",
        extra_env=env,
        launcher=cluster.launcher if cluster else None,
        netns=cluster.netns if cluster else None,
    )
    try:
        yield hub
    finally:
        hub.stop()
        if scheduler != "local":
            (cluster or rig).wait_no_jobs(timeout=120, active_only=True)


def spawn_all(hub: Hub, tokens: dict[str, str]) -> list[float]:
    """Ask for every user's server at the same moment; seconds until each one is ready."""
    took: dict[str, float] = {}
    errors: list[str] = []
    gate = threading.Barrier(len(tokens))

    def one(user: str, token: str) -> None:
        try:
            gate.wait()
            t0 = time.perf_counter()
            status, body = hub.request(
                "POST", f"/hub/api/users/{user}/server", token=token, body={}, timeout=300
            )
            if status == 202:  # still starting after slow_spawn_timeout: follow its progress
                hub.progress(user, token, timeout=300)
            elif status != 201:
                raise RuntimeError(f"spawn of {user}: {status} {body}")
            took[user] = time.perf_counter() - t0
            hub.wait_for_server(user, token, timeout=10)  # it is ready (not failed)
        except Exception as e:  # reported below, with the hub's log
            errors.append(f"{user}: {e}")

    threads = [threading.Thread(target=one, args=item) for item in tokens.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors) + "\n" + hub.log_tail())
    return [took[u] for u in tokens]


def stop_all(hub: Hub, tokens: dict[str, str]) -> None:
    for user, token in tokens.items():
        hub.request("DELETE", f"/hub/api/users/{user}/server", token=token, timeout=120)
    for user, token in tokens.items():
        hub.wait_stopped(user, token, timeout=120)
