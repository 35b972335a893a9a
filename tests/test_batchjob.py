"""hubstock.batchjob renders and reads batch jobs as the hub does, without importing JupyterHub:
its defaults and its template rendering agree with batchspawner's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from batchspawner.batchspawner import SlurmSpawner as BatchspawnerSlurm
from batchspawner.batchspawner import format_template as batchspawner_format

from hubstock.hub.batch import format_template
from hubstock.hub.schedulers import SLURM_COMMANDS

REPO = Path(__file__).resolve().parent.parent


def test_the_slurm_defaults_are_batchspawners():
    traits = BatchspawnerSlurm.class_traits()
    assert {n: traits[n].default_value for n in SLURM_COMMANDS} == SLURM_COMMANDS


@pytest.mark.parametrize(
    "template",
    [
        "scancel {job_id}",
        "{{ prefix }} qdel {{job_id}}",
        "{% if queue %}#SBATCH -p {{queue}}{% endif %}\n{{cmd}}",
        (REPO / "spawner" / "slurm.sh").read_text(),
        (REPO / "spawner" / "pbs.sh").read_text(),
        BatchspawnerSlurm.class_traits()["batch_script"].default_value,
    ],
)
def test_templates_render_as_batchspawner_renders_them(template):
    subvars = dict.fromkeys(
        ("queue", "memory", "runtime", "nprocs", "options", "prologue", "epilogue", "srun", "keepvars"),
        "x",
    )
    subvars.update(job_id="42", prefix="sudo -u ann", cmd="jupyterhub-singleuser", username="ann")
    subvars.update(homedir="/home/ann", account="", gres="", reservation="", qos="", constraint="")
    assert format_template(template, **subvars) == batchspawner_format(template, **subvars)


def test_a_users_build_job_is_made_without_importing_jupyterhub():
    code = (
        "import sys, hubstock.batchjob, hubstock.personal.job, hubstock.personal.commands;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jupyterhub', 'batchspawner')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
