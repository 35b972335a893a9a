# JupyterHub configuration for this site: everything comes from hubstock.toml.
#   jupyterhub -f spawner/jupyterhub_config.py
# HUBSTOCK_SITE and HUBSTOCK_ROOT override the site folder and the shared root.
import os
from pathlib import Path

from hubstock.hub.config import apply_site

SITE = Path(os.environ.get("HUBSTOCK_SITE") or Path(__file__).resolve().parent.parent)
c = get_config()  # noqa: F821
site = apply_site(c, site_dir=SITE)

# The site's own spawn steps go here, after hubstock's (see hooks/README.md):
#   from hubstock.hub.hooks import chain_hooks
#   c.Spawner.pre_spawn_hook = chain_hooks(c.Spawner.pre_spawn_hook, my_pre_spawn)
