#!/bin/sh
# Batch script for a user's server under PBS Pro or Torque-compatible commands
# (jinja2; rendered by hubstock.hub.spawner). Values are validated before they get here.
#PBS -N jupyterhub-{{username}}
#PBS -q {{queue}}
#PBS -l walltime={{runtime}}
{% if flavour == "torque" %}#PBS -l nodes=1:ppn={{nprocs}}
#PBS -l mem={{memory}}
{% else %}#PBS -l select=1:ncpus={{nprocs}}:mem={{memory}}{% if ngpus %}:ngpus={{ngpus}}{% endif %}
{% endif %}#PBS -v {{keepvars}}
#PBS -j oe
#PBS -o {{homedir}}/.jupyterhub-pbs.log

set -eu
cd "{{homedir}}"
{{prologue}}
{{cmd}}
{{epilogue}}
