"""Users' own environments: ``personal_build``, from ``hubstock mine create`` to the kernel ready,
as a PAM user through the private Slurm rig, against the same packages installed by hand in a
job of the same user (``uv venv`` on the stock interpreter, then ``uv pip install``)."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from rigs.channel import cached_channel
from rigs.hubsite import base_settings, tools_python, tree_bytes
from rigs.slurm_rig import SlurmRig, create_user, remove_user, require_binaries

from hubstock.store.root import Root

from .common import Bench, median, result, rounded, skipped, timings

PKGS = ("tabulate", "humanize", "six")
#: Slurm's batch_sched_delay (22.05's default): a submitted batch job starts at the scheduler's
#: next pass, up to this many seconds later. Run k of each kind (ours, by hand) submits at the same
#: point of that cycle, (k + 1/2) / runs of it after the rig went idle: the runs see every part
#: of the cycle alike, instead of the phase the loop happens to fall into (which once made every
#: run of one kind wait 1.5 s longer than the other's)
SCHED_CYCLE = 3.0
#: how often the baseline's completion is looked for: as often as `mine create` looks at its job
POLL = 0.5


def _as_user(
    user: str, *argv: str, timeout: float = 900, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` (a login session's basics, its certificates and proxies, and ``env``)."""
    from hubstock.personal.job import PASSED_ON

    pw = pwd.getpwnam(user)
    full = {"HOME": pw.pw_dir, "USER": user, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    full.update({k: os.environ[k] for k in PASSED_ON if k in os.environ})
    full.update(env or {})
    cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "/bin/sh", "-c"]
    return subprocess.run(
        [*cmd, 'exec "$@"', "sh", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=full,
        cwd=pw.pw_dir,
        timeout=timeout,
        check=False,
    )


def personal_build(b: Bench) -> list[dict[str, Any]]:
    """``hubstock mine create NAME tabulate humanize six`` on the stock Python kernel, submit to kernel
    ready (lock against the stock, hash-checked install, file hashes, smoke test), against a job of
    the same user that makes a venv of the stock interpreter and ``uv pip install``s the same
    packages (both from the user's warm uv cache). Also the build's size against the stock build's."""
    base, goal = "`uv venv` + `uv pip install` of the same packages in a job of the user", "ratio <= 1.3"
    if os.geteuid() != 0:
        return [
            skipped(
                "personal_build",
                "personal_build",
                "s",
                base,
                goal,
                "needs root (the Slurm rig and a PAM user)",
            )
        ]
    require_binaries()
    hub_site = b.hub_site()
    tools = tools_python(b.work / "hubstock-tools")
    user = f"hsbench{secrets.token_hex(2)}m"
    rig = SlurmRig(hub_site.parent / "slurm-mine").start()
    try:
        create_user(user, secrets.token_urlsafe(12), hub_site.parent / "homes")
        site = hub_site.parent / "site-mine"
        if not site.exists():
            shutil.copytree(hub_site, site, symlinks=True)
        # the hub site's own settings are rewritten by the benchmarks that run a hub on it
        (site / "hubstock.toml").write_text(
            base_settings(hub_site.parent / "root", cached_channel())
            + f'\n[spawner]\nscheduler = "slurm"\nenvironment = {{ SLURM_CONF = "{rig.slurm_conf}" }}\n'
            + '\n[[spawner.queues]]\nname = "debug"\nmax_cpus = 2\nmax_memory = "2G"\nmax_walltime = "01:00:00"\n'
            + '\n[spawner.defaults]\nqueue = "debug"\nmemory = "1G"\nwalltime = "00:30:00"\n'
            + f'\n[personal]\ntools = "{tools}"\nmax_envs = 100\n'
        )
        manifest = json.loads((Root(hub_site.parent / "root").current / "manifest.json").read_text())
        stock = Path(manifest["builds"]["python"]["prefix"])
        home = Path(pwd.getpwnam(user).pw_dir)
        mine_dir = home / ".hubstock" / "envs"
        n = {"ours": 0, "hand": 0}
        sizes: list[int] = []
        steps: list[dict[str, float]] = []

        def ours() -> float:
            n["ours"] += 1
            name = f"b{n['ours']}"
            _idle(rig, phase(n["ours"] - 1, b.repeat))
            t0 = time.perf_counter()
            res = _as_user(
                user, str(tools), "-m", "hubstock", "--site", str(site), "-q", "mine", "create", name, *PKGS
            )
            took = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(f"mine create failed: {res.stderr[-1500:]}")
            bid = json.loads(
                _as_user(
                    user, str(tools), "-m", "hubstock", "--site", str(site), "mine", "show", name, "--json"
                ).stdout
            )["build"]
            sizes.append(tree_bytes(mine_dir / name / "builds" / bid))
            steps.append(job_steps((mine_dir / name / "build.log").read_text()))
            _as_user(user, str(tools), "-m", "hubstock", "--site", str(site), "-q", "mine", "remove", name)
            return took

        def by_hand() -> float:
            n["hand"] += 1
            d = home / f"hand{n['hand']}"
            done = home / f"hand{n['hand']}.done"
            script = (
                "#!/bin/sh\n#SBATCH --partition=debug\n#SBATCH --output=/dev/null\n#SBATCH --mem=1G\n"
                f"export UV_CACHE_DIR={mine_dir}/.uv-cache UV_PYTHON_DOWNLOADS=never\n"
                f"{uv} venv -q --python {stock}/bin/python {d} && "
                f"{uv} pip install -q --python {d}/bin/python {' '.join(PKGS)} && touch {done}\n"
            )
            _idle(rig, phase(n["hand"] - 1, b.repeat))
            return _submit_and_wait(user, script, done, time.perf_counter(), rig, d)

        from hubstock.admin.uv import uv_command

        uv = uv_command()[0]
        ours()  # untimed: the user's uv cache gets the packages, the site its first look
        samples, baselines = b.interleaved(ours, by_hand)  # its spread is the scheduler's cycle, by design
    finally:
        remove_user(user)
        rig.stop()
    stock_size = tree_bytes(stock)
    return [
        result(
            "personal_build",
            median(samples),
            "s",
            base,
            median(baselines),
            goal,
            1.3,
            packages=list(PKGS),
            size_bytes=median([float(s) for s in sizes]) if sizes else None,
            stock_size_bytes=stock_size,
            size_ratio=rounded(median([float(s) for s in sizes]) / stock_size, 4)
            if sizes and stock_size
            else None,
            job_steps={k: rounded(median([s[k] for s in steps if k in s]), 3) for k in steps[-1]}
            if steps
            else None,
            **timings(samples, baselines),
        )
    ]


#: a line of the build job's log: seconds since its build began, then what it does
_STEP = re.compile(r"^\[\s*([\d.]+)s\] (\w+)")


def job_steps(log: str) -> dict[str, float]:
    """Seconds of each step of a build job (named by the first word of its log line: reading,
    locking, making, installing, starting), and ``job total`` (from the build's start to the
    kernel ready); the rest of submit-to-ready is the command, the scheduler and the polling."""
    marks = [(float(m[1]), m[2]) for m in map(_STEP.match, log.splitlines()) if m]
    out = {word: round(t2 - t, 3) for (t, word), (t2, _) in zip(marks, marks[1:], strict=False)}
    if marks:
        out["job total"] = marks[-1][0]
    return out


def phase(k: int, runs: int) -> float:
    """Where in the scheduler's cycle run ``k`` (0-based) of ``runs`` submits (see SCHED_CYCLE)."""
    return (k % max(runs, 1) + 0.5) / max(runs, 1) * SCHED_CYCLE


def _idle(rig: SlurmRig, then: float, timeout: float = 120) -> None:
    """Wait until the rig runs no job (the last run's job may still be ending after it said it was
    done), then ``then`` seconds more: each run starts on an idle cluster, the same for both."""
    deadline = time.monotonic() + timeout
    while rig.jobs(active_only=True):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the rig's jobs did not end in {timeout:.0f} s")
        time.sleep(0.2)
    time.sleep(then)


def _submit_and_wait(user: str, script: str, done: Path, t0: float, rig: SlurmRig, d: Path) -> float:
    """Submit ``script`` as ``user``; seconds from ``t0`` until ``done`` appears (polled like `mine create`)."""
    p = _as_user(
        user, "sbatch", "--parsable", stdin=script, env={"SLURM_CONF": str(rig.slurm_conf)}, timeout=60
    )
    if p.returncode != 0:
        raise RuntimeError(f"sbatch refused the baseline job: {p.stderr}")
    deadline = time.monotonic() + 600
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the baseline job did not finish in 600 s")
        time.sleep(POLL)
    took = time.perf_counter() - t0
    subprocess.run(["rm", "-rf", str(d), str(done)], check=False)
    return took
