"""The hub's configuration and batch scripts, tested by value (no scheduler, no hub)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from traitlets import Unicode
from traitlets.config import Config

from hubstock.errors import SiteError
from hubstock.hub.batch import batch_vars, render_batch_script
from hubstock.hub.config import apply_site
from hubstock.hub.options import limits_from_config
from hubstock.hub.spawner import PBSSpawner, SlurmSpawner
from hubstock.limits import Limits, Options
from hubstock.site import Settings

REPO = Path(__file__).resolve().parent.parent

#: what batchspawner and the pre-spawn hook give the template besides batch_vars
SUBVARS = {
    "username": "alice",
    "homedir": "/home/alice",
    "keepvars": "PATH,JUPYTERHUB_API_TOKEN,JUPYTER_PATH",
    "prologue": "module load foo",
    "epilogue": "",
    "host": "",
    "cmd": "/sw/envs/server/abc/bin/batchspawner-singleuser /sw/envs/server/abc/bin/jupyterhub-singleuser",
}
LIMITS = limits_from_config(
    [
        {"name": "debug", "max_cpus": 4, "max_memory": "16G", "max_walltime": "04:00:00"},
        {
            "name": "gpu",
            "max_cpus": 16,
            "max_memory": "64G",
            "max_gpus": 2,
            "max_walltime": "24:00:00",
            "account": "gpu-proj",
            "qos": "",
            "directives": [],
        },
    ],
    {"queue": "debug", "memory": "2G", "walltime": "00:30:00"},
)
EXTRAS = {
    "slurm": {
        "account": "proj42",
        "reservation": "training",
        "qos": "interactive",
        "constraint": "intel&ib",
        "directives": ["#SBATCH --exclusive", "#SBATCH --comment=hub"],
    },
    "pbs": {"account": "proj42", "directives": ["#PBS -W group_list=hpc"]},
}
WITH_EXTRAS = {s: LIMITS.model_copy(update=e) for s, e in EXTRAS.items()}


def _options(queue: str, cpus: int, memory: str, gpus: int, walltime: str) -> Options:
    return Options(queue=queue, cpus=cpus, memory=memory, gpus=gpus, walltime=walltime)


def test_batch_vars_by_value_for_slurm():
    assert batch_vars(_options("debug", 2, "4G", 0, "1:30:00"), "slurm", LIMITS) == {
        "partition": "debug",
        "runtime": "01:30:00",
        "memory": "4096M",
        "nprocs": "2",
        "gres": "",
        "ngpus": "",
        "account": "",
        "reservation": "",
        "qos": "",
        "constraint": "",
        "directives": "",
    }
    # the site's extras, and a queue's own overriding them ("" and [] there: none on that queue)
    assert batch_vars(_options("debug", 1, "1536M", 0, "00:01:00"), "slurm", WITH_EXTRAS["slurm"]) == {
        "partition": "debug",
        "runtime": "00:01:00",
        "memory": "1536M",
        "nprocs": "1",
        "gres": "",
        "ngpus": "",
        "account": "proj42",
        "reservation": "training",
        "qos": "interactive",
        "constraint": "intel&ib",
        "directives": "#SBATCH --exclusive\n#SBATCH --comment=hub",
    }
    gpu = batch_vars(_options("gpu", 8, "64G", 2, "1-00:00:00"), "slurm", WITH_EXTRAS["slurm"])
    assert (gpu["gres"], gpu["ngpus"], gpu["memory"], gpu["runtime"]) == (
        "gpu:2",
        "2",
        "65536M",
        "1-00:00:00",
    )
    assert (gpu["account"], gpu["qos"], gpu["reservation"], gpu["directives"]) == (
        "gpu-proj",
        "",
        "training",
        "",
    )


def test_batch_vars_by_value_for_pbs_pro_and_torque():
    opts = _options("gpu", 4, "2G", 1, "02:00:00")
    assert batch_vars(opts, "pbs", WITH_EXTRAS["pbs"]) == {
        "queue": "gpu",
        "runtime": "02:00:00",
        "memory": "2048mb",
        "nprocs": "4",
        "ngpus": "1",
        "resources": "select=1:ncpus=4:mem=2048mb:ngpus=1",
        "flavour": "pro",
        "account": "gpu-proj",
        "directives": "",
    }
    assert batch_vars(opts, "torque", WITH_EXTRAS["pbs"]) == {
        "queue": "gpu",
        "runtime": "02:00:00",
        "memory": "2048mb",
        "nprocs": "4",
        "ngpus": "1",
        "resources": "nodes=1:ppn=4:gpus=1",
        "flavour": "torque",
        "account": "gpu-proj",
        "directives": "",
    }
    cpu = _options("debug", 2, "1G", 0, "0:30:00")
    assert batch_vars(cpu, "pbs", LIMITS)["resources"] == "select=1:ncpus=2:mem=1024mb"
    assert batch_vars(cpu, "torque", LIMITS)["resources"] == "nodes=1:ppn=2"
    assert batch_vars(cpu, "torque", WITH_EXTRAS["pbs"])["directives"] == "#PBS -W group_list=hpc"


@pytest.mark.parametrize(
    ("walltime", "slurm", "pbs"),
    [
        ("00:01:00", "00:01:00", "00:01:00"),
        # "2:15" is refused: minutes:seconds to Slurm, hours:minutes to PBS
        ("02:15:00", "02:15:00", "02:15:00"),
        ("23:59:59", "23:59:59", "23:59:59"),
        ("24:00:00", "1-00:00:00", "24:00:00"),
        ("1-12:30:00", "1-12:30:00", "36:30:00"),
        ("36:30:00", "1-12:30:00", "36:30:00"),
        ("7-00:00:00", "7-00:00:00", "168:00:00"),
    ],
)
def test_the_walltime_each_scheduler_reads(walltime, slurm, pbs):
    """The batch script spells the walltime as each scheduler reads it: Slurm's ``--time`` takes
    ``D-HH:MM:SS`` (two fields would be minutes:seconds), PBS Pro's and Torque's ``walltime=``
    take hours past 24 (no days field)."""
    queue = {"name": "long", "max_cpus": 1, "max_memory": "1G", "max_walltime": "7-00:00:00"}
    limits = limits_from_config([queue], {"walltime": "00:01:00", "memory": "1G"})
    opts = _options("long", 1, "1G", 0, walltime)
    assert batch_vars(opts, "slurm", limits)["runtime"] == slurm
    assert batch_vars(opts, "pbs", limits)["runtime"] == pbs
    assert batch_vars(opts, "torque", limits)["runtime"] == pbs


def test_the_slurm_script_by_value():
    template = (REPO / "spawner" / "slurm.sh").read_text()
    script = render_batch_script(
        template,
        {**SUBVARS, **batch_vars(_options("debug", 2, "4G", 0, "1:30:00"), "slurm", LIMITS), "srun": "srun"},
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
            **batch_vars(_options("gpu", 1, "1G", 2, "1:00:00"), "slurm", WITH_EXTRAS["slurm"]),
            "srun": "",
        },
    )
    body = [ln for ln in gpu.splitlines() if not ln.startswith("# ")]
    assert body[8:17] == [
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --account=gpu-proj",
        "#SBATCH --reservation=training",
        "#SBATCH --constraint=intel&ib",
        "",
        "set -euo pipefail",
        "trap 'echo SIGTERM received' TERM",
        "module load foo",
    ]
    assert body[-1] == SUBVARS["cmd"]
    debug = render_batch_script(
        template,
        {
            **SUBVARS,
            **batch_vars(_options("debug", 1, "1G", 0, "1:00:00"), "slurm", WITH_EXTRAS["slurm"]),
            "srun": "",
        },
    )
    assert (
        "#SBATCH --qos=interactive\n#SBATCH --constraint=intel&ib\n#SBATCH --exclusive\n#SBATCH --comment=hub\n\nset"
        in debug
    )


@pytest.mark.parametrize("flavour", ["pro", "torque"])
def test_the_pbs_script_by_value(flavour):
    template = (REPO / "spawner" / "pbs.sh").read_text()
    scheduler = "pbs" if flavour == "pro" else "torque"
    opts = _options("debug", 4, "2G", 0, "02:00:00")
    script = render_batch_script(template, {**SUBVARS, **batch_vars(opts, scheduler, LIMITS)})
    body = [ln for ln in script.splitlines() if not ln.startswith("# ")]
    resources = (
        ["#PBS -l nodes=1:ppn=4", "#PBS -l mem=2048mb"]
        if flavour == "torque"
        else ["#PBS -l select=1:ncpus=4:mem=2048mb"]
    )
    assert body == [
        "#!/bin/sh",
        "#PBS -N jupyterhub-alice",
        "#PBS -q debug",
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
    extras = render_batch_script(
        template, {**SUBVARS, **batch_vars(opts, scheduler, WITH_EXTRAS["pbs"]), "host": "pbs01"}
    )
    assert "#PBS -q debug@pbs01\n" in extras
    assert "#PBS -A proj42\n#PBS -v " in extras and "#PBS -W group_list=hpc\n\nset -eu" in extras


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
    assert sp.limits.defaults_for(sp.limits.queue("debug")).walltime == 1800
    assert 'name="queue"' in sp.options_form and "GPU nodes" in sp.options_form
    assert sp.exec_prefix == "sudo -E -u {username}"
    if scheduler == "torque":
        assert (
            sp.batch_query_cmd == "qstat -f {job_id}" and sp.flavour == "torque" and sp.scheduler == "torque"
        )
    elif scheduler == "pbs":
        assert sp.batch_query_cmd == "qstat -fx {job_id}" and sp.flavour == "pro" and sp.scheduler == "pbs"

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
    with pytest.raises(
        SiteError,
        match=r"hubstock\.toml: spawner: the default memory 99G is more than the default queue 'debug' allows \(16G\); fix",
    ):
        apply_site(Config(), _site(tmp_path, toml))


def test_explicit_settings_win_over_the_pbs_flavour_preset():
    c = Config()
    c.PBSSpawner.flavour = "torque"
    c.PBSSpawner.batch_query_cmd = "my-qstat {job_id}"
    sp = PBSSpawner(config=c)
    assert sp.batch_query_cmd == "my-qstat {job_id}" and sp.state_pending_re == r"job_state = [QHWTS]\b"


def test_constructor_arguments_and_subclass_defaults_win_over_the_pbs_flavour_preset():
    assert PBSSpawner(flavour="torque", batch_submit_cmd="qsub -V").batch_submit_cmd == "qsub -V"

    class SiteSpawner(PBSSpawner):
        batch_submit_cmd = Unicode("site-qsub").tag(config=True)
        state_exechost_re = Unicode(r"exec_vnode = \(([\w.-]+):").tag(config=True)

    c = Config()
    c.PBSSpawner.flavour = "torque"
    sp = SiteSpawner(config=c)
    assert (sp.batch_submit_cmd, sp.state_exechost_re) == ("site-qsub", r"exec_vnode = \(([\w.-]+):")
    assert sp.batch_query_cmd == "qstat -f {job_id}"  # what the subclass leaves alone follows the flavour
    assert PBSSpawner().batch_query_cmd == "qstat -fx {job_id}"


def test_one_set_of_fallback_limits():
    # hubstock.toml without [spawner] limits, and a spawner with no configuration, agree
    fallback = Limits()
    assert Settings().spawner.queues == fallback.queues and Settings().spawner.defaults == fallback.defaults
    for sp in (SlurmSpawner(), PBSSpawner()):
        assert sp.limits.queues == fallback.queues and sp.limits.defaults.model_dump(
            exclude={"queue"}
        ) == fallback.defaults.model_dump(exclude={"queue"})


EXTRAS_TOML = """
[spawner]
scheduler = "{scheduler}"
account = "proj42"
{site_extra}
[[spawner.queues]]
name = "debug"
max_cpus = 4
max_memory = "16G"
max_walltime = "04:00:00"
{queue_extra}
"""


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_job_extras_from_hubstock_toml(tmp_path, scheduler):
    prefix = "#SBATCH" if scheduler == "slurm" else "#PBS"
    site_extra = 'qos = "normal"\nconstraint = "intel"' if scheduler == "slurm" else ""
    toml = EXTRAS_TOML.format(
        scheduler=scheduler,
        site_extra=site_extra
        + f'\ndirectives = ["{prefix} --comment=x"]'
        + f'\n[hub]\nstate_dir = "{tmp_path}/s"',
        queue_extra='account = "debug-proj"\ndirectives = []',
    )
    c = Config()
    apply_site(c, _site(tmp_path, toml), root=str(tmp_path / "r"))
    cls = c.SlurmSpawner if scheduler == "slurm" else c.PBSSpawner
    assert (cls.account, cls.directives) == ("proj42", [f"{prefix} --comment=x"])
    assert cls.queues[0]["account"] == "debug-proj" and cls.queues[0]["directives"] == []
    sp = (SlurmSpawner if scheduler == "slurm" else PBSSpawner)(config=c)
    extras = sp.limits.extras_for("debug")
    assert (extras.account, extras.directives) == ("debug-proj", [])
    if scheduler == "slurm":
        assert (cls.qos, cls.constraint, extras.qos, extras.constraint) == (
            "normal",
            "intel",
            "normal",
            "intel",
        )


@pytest.mark.parametrize(
    ("scheduler", "site_extra", "queue_extra", "message"),
    [
        ("pbs", 'qos = "high"', "", r"\[spawner\]: qos is a Slurm setting; for pbs, remove it and add"),
        (
            "torque",
            "",
            'reservation = "r1"',
            r"\[\[spawner\.queues\]\] 'debug': reservation is a Slurm setting",
        ),
        ("pbs", "", 'constraint = "intel"', r"constraint is a Slurm setting"),
        (
            "slurm",
            'directives = ["#PBS -l nodes=1"]',
            "",
            r"directive '#PBS -l nodes=1' must start with '#SBATCH' for slurm",
        ),
        ("pbs", 'directives = ["#SBATCH --exclusive"]', "", r"must start with '#PBS' for pbs"),
        (
            "slurm",
            'directives = ["#SBATCH --time=99:00:00"]',
            "",
            r"sets what hubstock sets itself; remove it and set the queues' limits",
        ),
        (
            "slurm",
            "",
            'directives = ["#SBATCH -A other"]',
            r"'debug': directive '#SBATCH -A other' sets what hubstock sets itself; remove it and set account",
        ),
        ("slurm", 'directives = ["#SBATCH --partition=big"]', "", r"sets what hubstock sets itself"),
        ("pbs", 'directives = ["#PBS -l select=1:ncpus=64"]', "", r"sets what hubstock sets itself"),
        (
            "torque",
            'directives = ["#PBS -l walltime=99:00:00,mem=1tb"]',
            "",
            r"sets what hubstock sets itself",
        ),
        ("pbs", 'directives = ["#PBS -q big"]', "", r"set \[\[spawner\.queues\]\] name"),
        ("slurm", 'account = "proj\\n#SBATCH --uid=0"', "", r"spawner\.account: must be a name"),
        ("slurm", 'directives = ["#SBATCH --comment=$(reboot)"]', "", r"without newlines, '`', '\$', ';'"),
    ],
)
def test_job_extras_that_do_not_fit_are_refused_at_hub_start(
    tmp_path, scheduler, site_extra, queue_extra, message
):
    toml = EXTRAS_TOML.format(
        scheduler=scheduler,
        site_extra=site_extra + f'\n[hub]\nstate_dir = "{tmp_path}/s"',
        queue_extra=queue_extra,
    )
    toml = toml.replace('account = "proj42"\n', "") if site_extra.startswith("account") else toml
    with pytest.raises(SiteError, match=message):
        apply_site(Config(), _site(tmp_path, toml), root=str(tmp_path / "r"))


def test_the_hub_unit_waits_for_the_root_and_upgrades_its_database(tmp_path):
    """Rendered by value: the hub starts once the shared root is mounted, and a new JupyterHub
    upgrades its database as it starts."""
    from hubstock.hub.units import Executables, render_hub_unit
    from hubstock.site import load_site

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hubstock.toml").write_text('root = "/shared/hub stock/root"\n')
    site = load_site(tmp_path / "site")
    unit = render_hub_unit(site, Executables(jupyterhub="/opt/hub/bin/jupyterhub", proxy="/usr/bin/chp"))
    lines = unit.splitlines()
    assert f"RequiresMountsFor=/shared/hub\\x20stock/root {tmp_path / 'site'}" in lines, unit
    config = tmp_path / "site" / "spawner" / "jupyterhub_config.py"
    assert f"ExecStart=/opt/hub/bin/jupyterhub -f {config} --upgrade-db" in lines, unit


def test_the_hub_unit_finds_the_schedulers_commands_where_the_admin_has_them(tmp_path):
    """A service reads no /etc/profile.d: the hub's unit puts the folders of the scheduler's
    commands, as ``hubstock units`` found them on the hub node, before systemd's own PATH."""
    from hubstock.hub.units import SYSTEMD_PATH, Executables, render_hub_unit, scheduler_programs
    from hubstock.site import load_site

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hubstock.toml").write_text(
        'root = "/shared/root"\n[spawner]\nscheduler = "pbs"\nsubmit_cmd = "{site}/bin/qsub -f"\n'
    )
    site = load_site(tmp_path / "site")
    assert scheduler_programs(site) == [f"{tmp_path}/site/bin/qsub", "qstat", "qdel"]
    exe = Executables(
        jupyterhub="/opt/hub/bin/jupyterhub",
        proxy="/usr/bin/chp",
        scheduler_dirs=("/opt/pbs/bin", "/usr/bin"),
    )
    lines = render_hub_unit(site, exe).splitlines()
    assert f"Environment=PATH=/opt/pbs/bin:{':'.join(SYSTEMD_PATH)}" in lines, lines
    plain = render_hub_unit(site, Executables(jupyterhub="/opt/hub/bin/jupyterhub", proxy="/usr/bin/chp"))
    assert not [ln for ln in plain.splitlines() if ln.startswith("Environment=PATH=")]


def test_units_refuses_a_site_whose_scheduler_commands_are_not_on_path(tmp_path):
    import subprocess
    import sys

    (tmp_path / "hubstock.toml").write_text(f'root = "{tmp_path / "root"}"\n[spawner]\nscheduler = "pbs"\n')
    (tmp_path / "bin").mkdir()
    for name in ("jupyterhub", "configurable-http-proxy"):
        (tmp_path / "bin" / name).write_text("#!/bin/sh\n")
        (tmp_path / "bin" / name).chmod(0o755)
    res = subprocess.run(
        [sys.executable, "-m", "hubstock", "--site", str(tmp_path), "units"],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path / "bin")},
        timeout=60,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "the hub runs 'qsub' for its scheduler (pbs), and it is not on PATH here" in res.stderr, res.stderr


def _exposure(unit: Path) -> float:
    """``systemd-analyze security``'s overall exposure of a unit file (offline: no systemd needed)."""
    import re
    import subprocess

    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


@pytest.mark.parametrize("port", [8000, 443])
def test_the_units_sandboxes_score_as_systemd_analyze_says(tmp_path, port):
    """Both units score "OK" (<= 4.0), the hub's as a root hub that logs users in with PAM and
    submits their jobs (``tests/test_units_systemd.py`` runs them); both pass ``systemd-analyze verify``."""
    import subprocess

    from hubstock.hub.units import HUB_UNIT, PROXY_UNIT, Executables, render_units
    from hubstock.site import load_site

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hubstock.toml").write_text(
        f'root = "{tmp_path / "root"}"\n\n[hub]\nproxy_external = true\nport = {port}\n'
    )
    units = render_units(load_site(tmp_path / "site"), Executables(jupyterhub="/bin/true", proxy="/bin/true"))
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in units)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    proxy, hub = _exposure(tmp_path / PROXY_UNIT), _exposure(tmp_path / HUB_UNIT)
    print(f"\nsystemd-analyze security (port {port}): proxy {proxy}, hub {hub}")
    assert proxy <= 4.0 and hub <= 4.0, (proxy, hub)
