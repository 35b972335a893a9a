#!/bin/sh
# Batch script for a user's server under PBS Pro or Torque-compatible commands
# (jinja2; variables from hubstock.hub.batch.batch_vars). Values are validated before they get here.
# exports: the job's variables PBS Pro's "qsub -v" cannot pass (hubstock.hub.batch.pbs_environment).
#PBS -N jupyterhub-{{username}}
#PBS -q {{queue}}{% if host %}@{{host}}{% endif %}
#PBS -l walltime={{runtime}}
#PBS -l {{resources}}
{% if flavour == "torque" %}#PBS -l mem={{memory}}
{% endif %}{% if account %}#PBS -A {{account}}
{% endif %}#PBS -v {{keepvars}}
#PBS -j oe
#PBS -o {{homedir}}/.jupyterhub-pbs.log
{% if directives %}{{directives}}
{% endif %}
set -eu
cd "{{homedir}}"
{% if exports %}{{exports}}
{% endif %}{{prologue}}
{{cmd}}
{{epilogue}}
