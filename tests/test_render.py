"""The pure renderers, tested by value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubstock.admin.publish.extensions import render_server_config
from hubstock.admin.publish.kernels import BuildRef, load_kernel_templates, render_kernelspec
from hubstock.errors import SiteError
from hubstock.site import Settings, Site

BUILD = BuildRef(
    env="py", build_id="0123456789abcdef", prefix=Path("/sw/envs/py/0123456789abcdef"), lock_hash="h1"
)


def test_render_kernelspec_fills_the_prefix_and_records_the_build():
    spec = {
        "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python",
        "language": "python",
        "interrupt_mode": "message",
        "env": {"PATH": "{env_prefix}/bin:${PATH}"},
        "metadata": {"debugger": True, "hubstock": {"env": "py", "check": "import x"}},
    }
    assert render_kernelspec(spec, BUILD) == {
        "argv": [
            "/sw/envs/py/0123456789abcdef/bin/python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
        "display_name": "Python",
        "language": "python",
        "interrupt_mode": "message",
        "env": {"PATH": "/sw/envs/py/0123456789abcdef/bin:${PATH}"},
        "metadata": {
            "debugger": True,
            "hubstock": {"env": "py", "check": "import x", "build": "0123456789abcdef", "lock_hash": "h1"},
        },
    }
    assert spec["argv"][0] == "{env_prefix}/bin/python"  # the template is not changed


def test_the_server_config_shows_stock_and_user_kernels_only(tmp_path, monkeypatch):
    from traitlets.config.loader import PyFileConfigLoader

    text = render_server_config(["stock", "r"], "stock", "/sw/generations/0001/share/jupyter/lab/settings")
    cfg_file = tmp_path / "jupyter_server_config.py"
    cfg_file.write_text(text)
    user_kernels = tmp_path / "data" / "kernels"
    (user_kernels / "mine").mkdir(parents=True)
    (user_kernels / "mine" / "kernel.json").write_text("{}")
    (user_kernels / "empty").mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    personal = tmp_path / "home" / ".hubstock" / "envs" / "analysis" / "jupyter"  # hubstock mine's
    (personal / "kernels" / "mine-analysis").mkdir(parents=True)
    (personal / "kernels" / "mine-analysis" / "kernel.json").write_text("{}")
    (personal / "kernels" / "sneaky").mkdir()  # not a personal kernel's name: not allowed from there
    (personal / "kernels" / "sneaky" / "kernel.json").write_text("{}")
    monkeypatch.setenv("JUPYTER_PATH", f"/sw/generations/0001/share/jupyter:{personal}:/nowhere")
    cfg = PyFileConfigLoader(cfg_file.name, path=str(tmp_path)).load_config()
    assert cfg.KernelSpecManager.allowed_kernelspecs == {"stock", "r", "mine", "mine-analysis"}
    assert cfg.KernelSpecManager.ensure_native_kernel is False
    assert cfg.MappingKernelManager.default_kernel_name == "stock"
    assert cfg.LabApp.app_settings_dir == "/sw/generations/0001/share/jupyter/lab/settings"


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("Py", {}, "lowercase"),
        ("python", {}, "reserved by Jupyter"),
        ("py", "not json", "not valid JSON"),
        (
            "py",
            {"argv": ["x"], "display_name": "P", "metadata": {"hubstock": {"env": "e"}}},
            "{connection_file}",
        ),
        ("py", {"argv": ["x", "{connection_file}"], "display_name": "P"}, "metadata.hubstock.env"),
        (
            "py",
            {
                "argv": ["x", "{connection_file}"],
                "display_name": "P",
                "metadata": {"hubstock": {"env": "zz"}},
            },
            "'zz', which is not an environment",
        ),
        (
            "py",
            {
                "argv": ["x", "{connection_file}"],
                "display_name": "P",
                "metadata": {"hubstock": {"env": "e", "chek": "1"}},
            },
            "metadata.hubstock.chek",
        ),
    ],
)
def test_bad_kernel_templates_are_named(tmp_path, name, spec, message):
    site = Site(dir=tmp_path, settings=Settings(), root=tmp_path / "root")
    (tmp_path / "envs" / "e").mkdir(parents=True)
    (tmp_path / "envs" / "e" / "environment.yml").write_text("dependencies: [python]\n")
    (tmp_path / "kernels" / name).mkdir(parents=True)
    (tmp_path / "kernels" / name / "kernel.json").write_text(
        spec if isinstance(spec, str) else json.dumps(spec)
    )
    with pytest.raises(SiteError, match=f"kernels/{name}") as e:
        load_kernel_templates(site)
    assert message in str(e.value)


# --- kernels that load Lmod modules ------------------------------------------------------------


def test_a_kernel_of_a_module_env_loads_its_modules_then_its_own_and_falls_back_to_the_stand_in():
    from hubstock.admin.publish.kernels import UNAVAILABLE_KERNEL, KernelTemplate, LmodRef, render_template

    build = BuildRef(
        env="r",
        build_id="f" * 16,
        prefix=Path("/sw/envs/r/" + "f" * 16),
        lock_hash="h",
        kind="module",
        modules=("R/4.2",),
    )
    spec = {
        "argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
        "display_name": "R",
        "language": "R",
        "metadata": {"hubstock": {"env": "r", "modules": ["gcc/12", "R/4.2"]}},
    }
    lmod = LmodRef(
        init="/usr/share/lmod/lmod/init/bash", use=("/sw/modules",), python="/sw/envs/server/b/bin/python"
    )
    k = render_template(
        KernelTemplate(name="r", dir=Path("/nonexistent"), spec=spec, resources=()), build, lmod
    )
    argv = k.spec["argv"]
    assert argv[:4] == ["/bin/bash", "--noprofile", "--norc", "-c"]
    assert argv[5:] == ["hubstock-kernel", *spec["argv"]]  # the kernel's own argv, untouched, as arguments
    script = argv[4]
    assert (
        "source /usr/share/lmod/lmod/init/bash; module use /sw/modules; module purge; module load R/4.2 gcc/12 ||"
        in script
    )
    assert f"exec /sw/envs/server/b/bin/python '{{resource_dir}}/{UNAVAILABLE_KERNEL}' R " in script
    assert script.endswith('exec "$@"')
    assert UNAVAILABLE_KERNEL in k.resources  # published beside the kernel.json
    plain = render_kernelspec(spec | {"metadata": {"hubstock": {"env": "py"}}}, BUILD, lmod)
    assert plain["argv"] == spec["argv"]  # no modules: nothing wrapped


def test_a_kernel_that_loads_modules_without_lmod_is_one_sentence():
    build = BuildRef(
        env="r", build_id="f" * 16, prefix=Path("/sw/r"), lock_hash="h", kind="module", modules=("R/4.2",)
    )
    spec = {"argv": ["R", "{connection_file}"], "display_name": "R", "metadata": {"hubstock": {"env": "r"}}}
    with pytest.raises(SiteError, match="loads modules R/4.2 but Lmod was not found"):
        render_kernelspec(spec, build, None)
