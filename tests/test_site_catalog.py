"""The site's own catalog (envs/, hubstock.toml) is valid and says what the issue asks."""

from __future__ import annotations

from pathlib import Path

from hubstock.envspec import load_env_spec
from hubstock.settings import load_site

REPO = Path(__file__).resolve().parent.parent


def test_the_catalog_parses():
    site = load_site(REPO, root=REPO / ".hubstock-root")
    assert {"server", "python"} <= set(site.env_names())
    assert site.settings.channels == ["conda-forge"]
    server = load_env_spec(site, "server")
    names = set(server.spec_names)
    assert {"jupyterlab", "batchspawner", "ipykernel", "jupyter-resource-usage"} <= names
    assert any(n.startswith("jupyterhub") for n in names)
    assert "nbgrader" not in names
    kernel = load_env_spec(site, "python")
    assert {"ipykernel", "numpy", "scipy", "pandas"} <= set(kernel.spec_names)
    assert server.channels == kernel.channels == ["conda-forge"]
