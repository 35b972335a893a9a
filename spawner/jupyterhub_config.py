# JupyterHub configuration for this site: everything comes from hubstock.toml.
#   jupyterhub -f spawner/jupyterhub_config.py
# HUBSTOCK_SITE and HUBSTOCK_ROOT override the site folder and the shared root.
import os
from pathlib import Path

from hubstock.hubconfig import apply_site

c = get_config()  # noqa: F821
apply_site(c, site_dir=os.environ.get("HUBSTOCK_SITE") or Path(__file__).resolve().parent.parent)
