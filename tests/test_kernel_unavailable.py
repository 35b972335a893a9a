"""A kernel whose modules no longer load tells the user why in the notebook, instead of dying and
restarting in a loop: real Lmod, the published wrapper and stand-in kernel, jupyter_client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hubstock.admin.publish.kernels import UNAVAILABLE_KERNEL
from hubstock.lmod import kernel_argv

pytestmark = pytest.mark.integration

STAND_IN = (
    Path(__file__).resolve().parent.parent
    / "src"
    / "hubstock"
    / "admin"
    / "publish"
    / "unavailable_kernel.py"
)


def _kernelspec(tmp_path: Path, init: Path, tree, modules: list[str]) -> Path:
    kdir = tmp_path / "kernels" / "r"
    kdir.mkdir(parents=True)
    (kdir / UNAVAILABLE_KERNEL).write_bytes(STAND_IN.read_bytes())
    argv = kernel_argv(
        ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
        modules,
        init=str(init),
        use=[str(tree.modulepath)],
        fallback=[sys.executable, "{resource_dir}/" + UNAVAILABLE_KERNEL, "R"],  # the server's python
    )
    (kdir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "R", "language": "R"}))
    return kdir.parent


def _run(kernels_dir: Path, code: str) -> tuple[dict, list[tuple[str, dict]]]:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="r", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels_dir)]))
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    out: list[tuple[str, dict]] = []
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive(
            code, timeout=60, output_hook=lambda m: out.append((m["msg_type"], m["content"]))
        )
        return reply["content"], out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        assert not km.is_alive()


def test_a_module_that_no_longer_loads_gives_the_reason_in_every_cell(tmp_path, lmod_tree):
    init, tree = lmod_tree
    gone = "R/0.0-removed"
    reply, out = _run(_kernelspec(tmp_path, init, tree, [gone]), "cat(1+1)")
    assert reply["status"] == "error" and reply["ename"] == "KernelUnavailable"
    why = reply["evalue"]
    assert f"module load {gone} failed" in why and "unknown" in why and "admins" in why
    assert "\n" not in why  # one sentence, Lmod's own message folded in
    assert ("error", {"ename": "KernelUnavailable", "evalue": why, "traceback": [why]}) in out


def test_the_same_wrapper_runs_the_kernel_when_the_module_loads(tmp_path, lmod_tree):
    init, tree = lmod_tree
    reply, out = _run(_kernelspec(tmp_path, init, tree, [tree.r_module]), "cat(1+1)")
    assert reply["status"] == "ok"
    assert ("stream", {"name": "stdout", "text": "2"}) in out
