"""The hub's configuration and batch scripts, tested by value (no scheduler, no hub)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from traitlets.config import Config

from hubstock.errors import SiteError
from hubstock.hub.config import apply_site
from hubstock.hub.spawner import PBSSpawner, SlurmSpawner, render_batch_script

REPO = Path(__file__).resolve().parent.parent

SUBVARS = {
    "username": "alice",
    "homedir": "/home/alice",
    "keepvars": "PATH,JUPYTERHUB_API_TOKEN,JUPYTER_PATH",
    "prologue": "module load foo",
    "epilogue": "",
    "cmd": "/sw/envs/server/abc/bin/batchspawner-singleuser /sw/envs/server/abc/bin/jupyterhub-singleuser",
}


def test_the_slurm_script_by_value():
    template = (REPO / "spawner" / "slurm.sh").read_text()
    script = render_batch_script(
        template,
        {
            **SUBVARS,
            "partition": "debug",
            "runtime": "01:30:00",
            "memory": "4096M",
            "nprocs": "2",
            "gres": "",
            "srun": "srun",
        },
    )
    body = [ln for ln in script.splitlines() if not ln.startswith("# ")]
    assert body == [
        "#!/bin/bash",
        "#SBATCH --job-name=jupyterhub-alice",
        "#SBATCH --output=/home/alice/.jupyterhub-slurm-%j.log",
        "#SBATCH --chdir=/home/alice",
        "#SBATCH --export=PATH,JUPYTERHUB_API_TOKEN,JUPYTER_PATH",
        "#SBATCH --partition=debug",
        "#SBATCH --time=01:30:00",
        "#SBATCH --mem=4096M",
        "#SBATCH --cpus-per-task=2",
        "",
        "set -euo pipefail",
        "trap 'echo SIGTERM received' TERM",
        "module load foo",
        "srun /sw/envs/server/abc/bin/batchspawner-singleuser /sw/envs/server/abc/bin/jupyterhub-singleuser",
    ]
    gpu = render_batch_script(
        template,
        {
            **SUBVARS,
            "partition": "gpu",
            "runtime": "01:00:00",
            "memory": "1024M",
            "nprocs": "1",
            "gres": "gpu:2",
            "srun": "",
        },
    )
    assert "#SBATCH --gres=gpu:2\n" in gpu and "\n/sw/envs/server/abc/bin/batchspawner-singleuser" in gpu


@pytest.mark.parametrize("flavour", ["pro", "torque"])
def test_the_pbs_script_by_value(flavour):
    template = (REPO / "spawner" / "pbs.sh").read_text()
    script = render_batch_script(
        template,
        {
            **SUBVARS,
            "queue": "batch",
            "runtime": "02:00:00",
            "memory": "2048mb",
            "nprocs": "4",
            "ngpus": "1",
            "flavour": flavour,
        },
    )
    body = [ln for ln in script.splitlines() if not ln.startswith("# ")]
    resources = (
        ["#PBS -l nodes=1:ppn=4", "#PBS -l mem=2048mb"]
        if flavour == "torque"
        else ["#PBS -l select=1:ncpus=4:mem=2048mb:ngpus=1"]
    )
    assert body == [
        "#!/bin/sh",
        "#PBS -N jupyterhub-alice",
        "#PBS -q batch",
        "#PBS -l walltime=02:00:00",
        *resources,
        "#PBS -v PATH,JUPYTERHUB_API_TOKEN,JUPYTER_PATH",
        "#PBS -j oe",
        "#PBS -o /home/alice/.jupyterhub-pbs.log",
        "",
        "set -eu",
        'cd "/home/alice"',
        "module load foo",
        SUBVARS["cmd"],
    ]
    assert "JUPYTERHUB_API_TOKEN=" not in script  # names only: secrets never enter a script


def _site(tmp_path: Path, toml: str) -> Path:
    site = tmp_path / "site"
    for part in ("spawner", "hooks"):
        shutil.copytree(REPO / part, site / part)
    (site / "envs").mkdir()
    (site / "hubstock.toml").write_text(toml)
    return site


HUB_TOML = """\
root = "{root}"
[hub]
port = 18000
hub_port = 18081
hub_connect_ip = "hub.cluster.local"
state_dir = "{state}"
allowed_group = "jupyter"
idle_timeout = 1800
[spawner]
scheduler = "{scheduler}"
exec_prefix = "sudo -E -u {{username}}"
environment = {{SLURM_CONF = "/etc/slurm/slurm.conf"}}
[[spawner.queues]]
name = "debug"
max_cpus = 4
max_memory = "16G"
max_walltime = "04:00:00"
[[spawner.queues]]
name = "gpu"
description = "GPU nodes"
max_cpus = 16
max_memory = "64G"
max_gpus = 2
max_walltime = "24:00:00"
[spawner.defaults]
queue = "debug"
memory = "2G"
walltime = "00:30:00"
"""


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "torque"])
def test_the_hub_config_applied_to_a_real_config(tmp_path, scheduler):
    state = tmp_path / "state"
    site = _site(tmp_path, HUB_TOML.format(root=tmp_path / "root", state=state, scheduler=scheduler))
    c = Config()
    apply_site(c, site)
    assert c.JupyterHub.port == 18000 and c.JupyterHub.hub_connect_ip == "hub.cluster.local"
    assert c.JupyterHub.authenticator_class == "pam" and c.PAMAuthenticator.allowed_groups == {"jupyter"}
    assert c.JupyterHub.db_url == f"sqlite:///{state}/jupyterhub.sqlite"
    token_file = state / "proxy_auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
    assert c.ConfigurableHTTPProxy.auth_token == token_file.read_text().strip()
    services = c.JupyterHub.services.get_value([])  # appended to whatever else configures services
    assert services[0]["name"] == "idle-culler" and "--timeout=1800" in services[0]["command"]
    assert callable(c.Spawner.pre_spawn_hook) and callable(c.Spawner.post_stop_hook)
    assert c.Spawner.environment == {"SLURM_CONF": "/etc/slurm/slurm.conf"}

    # a spawner made from this config has the site's limits, form and scheduler settings
    cls = SlurmSpawner if scheduler == "slurm" else PBSSpawner
    assert c.JupyterHub.spawner_class == f"hubstock.hub.spawner.{cls.__name__}"
    sp = cls(config=c)
    assert [q["name"] for q in sp.queues] == ["debug", "gpu"]
    assert sp.limits.defaults_for(sp.limits.queue("debug")).walltime_s == 1800
    assert 'name="queue"' in sp.options_form and "GPU nodes" in sp.options_form
    assert sp.exec_prefix == "sudo -E -u {username}"
    if scheduler == "torque":
        assert sp.batch_query_cmd == "qstat -f {job_id}" and sp.req_flavour == "torque"
    elif scheduler == "pbs":
        assert sp.batch_query_cmd == "qstat -fx {job_id}" and sp.req_flavour == "pro"

    # a second load reuses the secret; a secret readable by others is refused
    apply_site(Config(), site)
    assert c.ConfigurableHTTPProxy.auth_token == token_file.read_text().strip()
    os.chmod(token_file, 0o644)
    with pytest.raises(SiteError, match="readable by others"):
        apply_site(Config(), site)


def test_limits_that_do_not_fit_are_refused_at_hub_start(tmp_path):
    toml = HUB_TOML.format(root=tmp_path / "r", state=tmp_path / "s", scheduler="slurm").replace(
        'memory = "2G"', 'memory = "99G"'
    )
    with pytest.raises(SiteError, match=r"\[spawner\] limits"):
        apply_site(Config(), _site(tmp_path, toml))


def test_explicit_settings_win_over_the_pbs_flavour_preset():
    c = Config()
    c.PBSSpawner.flavour = "torque"
    c.PBSSpawner.batch_query_cmd = "my-qstat {job_id}"
    sp = PBSSpawner(config=c)
    assert sp.batch_query_cmd == "my-qstat {job_id}" and sp.state_pending_re == r"job_state = [QHW]"
