"""Users' own environments: ``personal_build``, from ``hubstock mine create`` to the kernel ready,
as a PAM user through the private Slurm rig, against the same packages installed by hand in a
job of the same user (``uv venv`` on the stock interpreter, then ``uv pip install``)."""

from __future__ import annotations

import json
import os
import pwd
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

        def ours() -> float:
            n["ours"] += 1
            name = f"b{n['ours']}"
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
            return _submit_and_wait(user, script, done, time.perf_counter(), rig, d)

        from hubstock.admin.uv import uv_command

        uv = uv_command()[0]
        ours()  # untimed: the user's uv cache gets the packages, the site its first look
        samples, baselines = b.interleaved(ours, by_hand)
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
            **timings(samples, baselines),
        )
    ]


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
