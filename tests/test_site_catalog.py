"""The site's own catalog (envs/, kernels/, hubstock.toml) and the conda-forge example are valid
and say what the issues ask."""

from __future__ import annotations

from pathlib import Path

from hubstock.admin.kinds import load_env, load_envs
from hubstock.admin.lock.envspec import load_env_spec
from hubstock.site import load_site

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "conda-forge"


def test_the_stock_catalog_is_venv_and_module_envs_with_their_locks(tmp_path):
    site = load_site(REPO, root=tmp_path / "root")
    envs = {e.name: e for e in load_envs(site, [])}
    assert {n: e.kind for n, e in envs.items()} == {"python": "venv", "r": "module", "server": "venv"}
    assert envs["server"].spec.python_path == envs["python"].spec.python_path == "/usr/bin/python3"
    server = {r.split("=")[0].split("[")[0] for r in envs["server"].spec.requirements}
    assert {"jupyterhub", "jupyterlab", "batchspawner", "ipykernel"} <= server
    assert {"numpy", "scipy", "pandas", "matplotlib", "ipykernel"} <= set(envs["python"].spec.requirements)
    assert envs["r"].modules == ("R/debian",) and envs["r"].optional
    for env in envs.values():  # committed, and no path of the machine that locked them
        text = env.lock_path.read_text()
        assert env.lock_path.is_file() and "/work/" not in text and "/tmp/" not in text
    assert site.settings.modules.use == ["modules"]
    assert (REPO / "modules" / "R" / "debian.lua").is_file()


def test_the_catalog_kernels_and_extensions_load(tmp_path):
    from hubstock.admin.publish.extensions import load_extensions
    from hubstock.admin.publish.kernels import load_kernel_templates

    site = load_site(REPO, root=tmp_path / "root")
    kernels = {t.name: t for t in load_kernel_templates(site)}
    assert kernels["python-stock"].env == "python" and kernels["r"].env == "r"
    assert "IRkernel::main()" in kernels["r"].spec["argv"]
    assert any(p.name == "logo-64x64.png" for p in kernels["python-stock"].resources)
    ext = load_extensions(site.extensions_dir)
    assert ext.page_config["disabledExtensions"]
    assert site.settings.publish.default_kernel == "python-stock"
    assert site.settings.server.forbidden == ["nbgrader"]


def test_the_conda_forge_example_parses(tmp_path):
    site = load_site(EXAMPLE, root=tmp_path / "root")
    assert {"server", "python", "r"} <= set(site.env_names())
    assert site.settings.channels == ["conda-forge"]
    server = load_env_spec(site, "server")
    names = set(server.spec_names)
    assert {"jupyterlab", "batchspawner", "ipykernel", "jupyter-resource-usage"} <= names
    assert any(n.startswith("jupyterhub") for n in names)
    kernel = load_env_spec(site, "python")
    assert {"ipykernel", "numpy", "scipy", "pandas"} <= set(kernel.spec_names)
    assert server.channels == kernel.channels == ["conda-forge"]
    assert load_env(site, "r").kind == "conda"
