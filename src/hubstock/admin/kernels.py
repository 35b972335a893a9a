"""Kernel templates (``kernels/<name>/``), rendering them, and smoke-testing kernels.

A template is an ordinary kernelspec directory whose ``kernel.json`` may use
``{env_prefix}`` and names its environment in ``metadata.hubstock.env``; other
files (logos) are copied along. ``metadata.hubstock.check`` may hold code the
smoke test runs (for example ``import numpy``). Published names are the
directory names, stable across builds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from ..errors import PublishError, SiteError
from ..site import Site

KERNEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: names jupyter_client takes over: it starts its own native kernel (the server's python3) for them
RESERVED_NAMES = {"python", "python2", "python3"}
PLACEHOLDER = "{env_prefix}"
#: code run when a template names no check, by language
DEFAULT_CHECK = {"python": "import sys; print(sys.prefix)", "r": "cat(R.home())"}


@dataclass(frozen=True)
class KernelTemplate:
    name: str
    dir: Path
    spec: dict[str, Any]
    resources: tuple[Path, ...]

    @property
    def env(self) -> str:
        return self.spec["metadata"]["hubstock"]["env"]


@dataclass(frozen=True)
class BuildRef:
    """One complete build that a kernel (or the server) runs on."""

    env: str
    build_id: str
    prefix: Path
    lock_hash: str


@dataclass(frozen=True)
class RenderedKernel:
    """A kernelspec ready to publish: its kernel.json and the files to copy along."""

    name: str
    spec: dict[str, Any]
    build: BuildRef
    resources: dict[str, bytes] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.spec["display_name"]

    @property
    def check(self) -> str | None:
        hub = self.spec.get("metadata", {}).get("hubstock", {})
        return hub.get("check") or DEFAULT_CHECK.get(self.spec.get("language", "").lower())


def load_kernel_templates(site: Site) -> list[KernelTemplate]:
    """Every template in ``kernels/``, validated; a :class:`SiteError` names the culprit."""
    kdir = site.kernels_dir
    if not kdir.is_dir():
        return []
    envs = set(site.env_names())
    out = []
    for d in sorted(p for p in kdir.iterdir() if p.is_dir()):
        path = d / "kernel.json"
        rel = f"kernels/{d.name}/kernel.json"
        if not path.is_file():
            raise SiteError(f"kernels/{d.name}/ has no kernel.json; add one or remove the folder.")
        if not KERNEL_NAME_RE.match(d.name):
            raise SiteError(
                f"kernels/{d.name}: kernel names use lowercase letters, digits, '.', '_' and '-'; rename it."
            )
        if d.name in RESERVED_NAMES:
            raise SiteError(
                f"kernels/{d.name}: the name {d.name!r} is reserved by Jupyter, which would start the server's "
                f"own python3 instead; rename the folder, e.g. to kernels/{d.name}-stock."
            )
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SiteError(f"{rel} is not valid JSON ({e}); fix the file.") from None
        _validate(rel, spec, envs)
        resources = tuple(sorted(p for p in d.rglob("*") if p.is_file() and p.name != "kernel.json"))
        out.append(KernelTemplate(name=d.name, dir=d, spec=spec, resources=resources))
    return out


def _validate(rel: str, spec: Any, envs: set[str]) -> None:
    if not isinstance(spec, dict):
        raise SiteError(f"{rel} must be a JSON object; fix the file.")
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise SiteError(f"{rel}: 'argv' must be a non-empty list of strings.")
    if "{connection_file}" not in argv:
        raise SiteError(f"{rel}: 'argv' must pass '{{connection_file}}' to the kernel.")
    if not isinstance(spec.get("display_name"), str) or not spec["display_name"].strip():
        raise SiteError(f"{rel}: 'display_name' must be a non-empty string.")
    env_vars = spec.get("env", {})
    if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
        raise SiteError(f"{rel}: 'env' must map variable names to strings.")
    hub = spec.get("metadata", {}).get("hubstock") if isinstance(spec.get("metadata"), dict) else None
    if not isinstance(hub, dict) or not isinstance(hub.get("env"), str):
        raise SiteError(f"{rel}: 'metadata.hubstock.env' must name the environment the kernel runs in.")
    if hub["env"] not in envs:
        raise SiteError(
            f"{rel}: metadata.hubstock.env names {hub['env']!r}, which is not an environment in envs/ "
            f"(the site has: {', '.join(sorted(envs)) or 'none'})."
        )
    unknown = set(hub) - {"env", "check"}
    if unknown:
        raise SiteError(f"{rel}: unknown key metadata.hubstock.{sorted(unknown)[0]}; use 'env' and 'check'.")
    if "check" in hub and not isinstance(hub["check"], str):
        raise SiteError(f"{rel}: metadata.hubstock.check must be code, as a string.")


def render_kernelspec(spec: dict[str, Any], build: BuildRef) -> dict[str, Any]:
    """``spec`` with ``{env_prefix}`` filled in and the build recorded in its metadata.

    Other placeholders (``{connection_file}``, ``{resource_dir}``) are left for
    jupyter_client. Pure: no files are read or written.
    """
    prefix = str(build.prefix)
    out = json.loads(json.dumps(spec))
    out["argv"] = [a.replace(PLACEHOLDER, prefix) for a in spec["argv"]]
    if "env" in spec:
        out["env"] = {k: v.replace(PLACEHOLDER, prefix) for k, v in spec["env"].items()}
    out.setdefault("metadata", {})["hubstock"] = {
        **spec["metadata"]["hubstock"],
        "env": build.env,
        "build": build.build_id,
        "lock_hash": build.lock_hash,
    }
    return out


def render_template(t: KernelTemplate, build: BuildRef) -> RenderedKernel:
    resources = {str(p.relative_to(t.dir)): p.read_bytes() for p in t.resources}
    return RenderedKernel(
        name=t.name, spec=render_kernelspec(t.spec, build), build=build, resources=resources
    )


def write_kernel(kernels_dir: Path, k: RenderedKernel) -> Path:
    d = kernels_dir / k.name
    d.mkdir(parents=True)
    for rel, data in k.resources.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    (d / "kernel.json").write_text(json.dumps(k.spec, indent=1, sort_keys=True) + "\n")
    return d


# --- smoke tests -------------------------------------------------------------------------


def smoke_test(kernels: list[RenderedKernel], kernels_dir: Path, timeout: float) -> None:
    """Start every kernel from ``kernels_dir`` and run code in it; raise for the first failure.

    A kernel passes when its process runs from the build it names and its check
    code (``metadata.hubstock.check``, else a default for its language) runs
    without error. Kernels are tested concurrently.
    """
    if not kernels:
        return
    import asyncio  # only the smoke tests need it (with jupyter_client, imported by them)

    with tempfile.TemporaryDirectory(prefix="hubstock-smoke-") as tmp, _quiet_jupyter_client():
        results = asyncio.run(_smoke_all(kernels, kernels_dir, Path(tmp), timeout))
    for k, err in zip(kernels, results, strict=True):
        if err is not None:
            reason, log = err
            raise PublishError(
                f"kernel {k.name!r} ({k.display_name}) on env {k.build.env!r} build {k.build.build_id} "
                f"failed its smoke test: {reason}; nothing was published, the current kernels stay.",
                detail=log,
            )


@contextlib.contextmanager
def _quiet_jupyter_client() -> Iterator[None]:
    """jupyter_client logs its own account of a kernel that fails to start; hubstock's one
    sentence says it (naming the kernel and the fix), so nothing is logged before it."""
    loggers = [logging.getLogger(name) for name in ("traitlets", "jupyter_client")]
    saved = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, saved, strict=True):
            lg.disabled = was


async def _smoke_all(kernels, kernels_dir: Path, tmp: Path, timeout: float):
    import asyncio

    return await asyncio.gather(*(_smoke_one(k, kernels_dir, tmp, timeout) for k in kernels))


async def _smoke_one(k: RenderedKernel, kernels_dir: Path, tmp: Path, timeout: float):
    import asyncio

    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    home = tmp / k.name
    home.mkdir()
    log_path = home / "kernel.log"
    env = {
        **os.environ,
        "HOME": str(home),
        "IPYTHONDIR": str(home / ".ipython"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "MPLCONFIGDIR": str(home / ".matplotlib"),
        "JUPYTER_PATH": str(kernels_dir.parent),
    }
    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    (home / "runtime").mkdir()
    # IPC sockets in a private folder: kernels started together cannot race for TCP ports
    km = AsyncKernelManager(
        kernel_name=k.name, kernel_spec_manager=ksm, transport="ipc", ip=str(home / "runtime" / "k")
    )
    km.connection_file = str(home / "runtime" / f"kernel-{k.name}.json")
    with open(log_path, "wb") as log:
        try:
            await asyncio.wait_for(_start_and_check(km, k, env, log), timeout)
            return None
        except TimeoutError:
            return (f"it did not answer within {timeout:.0f} s", _tail(log_path))
        except _SmokeFailure as e:
            return (str(e), "\n".join(x for x in (_tail(log_path), e.detail) if x))
        except FileNotFoundError as e:
            exe = e.filename or k.spec["argv"][0]
            return (f"its executable {exe} does not exist; fix 'argv' in its kernel.json", _tail(log_path))
        except (OSError, RuntimeError) as e:
            return (f"it could not be started ({e})", _tail(log_path))
        finally:
            await _shutdown(km)


class _SmokeFailure(Exception):
    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


async def _start_and_check(km, k: RenderedKernel, env: dict[str, str], log) -> None:
    await km.start_kernel(env=env, stdout=log, stderr=log)
    kc = km.client()
    kc.start_channels()
    try:
        await _wait_ready(km, kc)
        pid = getattr(km.provisioner, "pid", None)
        if pid:
            exe = os.path.realpath(f"/proc/{pid}/exe")
            prefix = os.path.realpath(k.build.prefix)
            if not exe.startswith(prefix + os.sep):
                raise _SmokeFailure(f"it runs {exe}, which is not inside its build {prefix}")
        if k.check:
            await _execute(kc, k.check)
    finally:
        kc.stop_channels()


async def _wait_ready(km, kc) -> None:
    """One kernel_info request, then wait for its reply, watching the process meanwhile.

    (jupyter_client's own wait_for_ready sends a request every second and, once a kernel
    has died, can block the whole event loop in a zmq send; one request cannot.)
    """
    msg_id = kc.kernel_info()
    while True:
        try:
            reply = await kc.get_shell_msg(timeout=0.5)
        except Empty:
            if not await km.is_alive():
                raise _SmokeFailure("it exited while starting") from None
            continue
        if reply["parent_header"].get("msg_id") == msg_id:
            return


async def _execute(kc, code: str) -> None:
    msg_id = kc.execute(code, store_history=False)
    reply = await kc.get_shell_msg(timeout=None)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = await kc.get_shell_msg(timeout=None)
    content = reply["content"]
    if content.get("status") != "ok":
        ename = content.get("ename", "error")
        evalue = content.get("evalue", "")
        tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content.get("traceback", [])))
        raise _SmokeFailure(f"its check {code!r} raised {ename}: {evalue}", tb)


async def _shutdown(km) -> None:
    try:
        if km.has_kernel and await km.is_alive():
            await km.shutdown_kernel(now=True)
        else:
            await km.cleanup_resources()
    except (OSError, RuntimeError):
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
