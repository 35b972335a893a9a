#!/bin/bash
# Batch script for a user's server under Slurm (jinja2; variables from hubstock.hub.batch.batch_vars).
# Every value comes from the site's validated limits and settings or from the system, never raw from the user.
#SBATCH --job-name=jupyterhub-{{username}}
#SBATCH --output={{homedir}}/.jupyterhub-slurm-%j.log
#SBATCH --chdir={{homedir}}
#SBATCH --export={{keepvars}}
#SBATCH --partition={{partition}}
#SBATCH --time={{runtime}}
#SBATCH --mem={{memory}}
#SBATCH --cpus-per-task={{nprocs}}
{% if gres %}#SBATCH --gres={{gres}}
{% endif %}{% if account %}#SBATCH --account={{account}}
{% endif %}{% if reservation %}#SBATCH --reservation={{reservation}}
{% endif %}{% if qos %}#SBATCH --qos={{qos}}
{% endif %}{% if constraint %}#SBATCH --constraint={{constraint}}
{% endif %}{% if directives %}{{directives}}
{% endif %}
set -euo pipefail
trap 'echo SIGTERM received' TERM
{{prologue}}
{% if srun %}{{srun}} {% endif %}{{cmd}}
{{epilogue}}
