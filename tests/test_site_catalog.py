"""The site's own catalog (envs/, hubstock.toml) is valid and says what the issue asks."""

from __future__ import annotations

from pathlib import Path

from hubstock.admin.envspec import load_env_spec
from hubstock.site import load_site

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


def test_the_catalog_kernels_and_extensions_load():
    from hubstock.admin.extensions import load_extensions
    from hubstock.admin.kernels import load_kernel_templates

    site = load_site(REPO, root=REPO / ".hubstock-root")
    kernels = {t.name: t for t in load_kernel_templates(site)}
    assert kernels["python-stock"].env == "python" and kernels["r"].env == "r"
    assert "IRkernel::main()" in kernels["r"].spec["argv"]
    assert any(p.name == "logo-64x64.png" for p in kernels["python-stock"].resources)
    ext = load_extensions(site.extensions_dir)
    assert ext.page_config["disabledExtensions"]
    assert site.settings.publish.default_kernel == "python-stock"
    assert site.settings.server.forbidden == ["nbgrader"]
