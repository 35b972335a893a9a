"""Small helpers the tests share (fixtures are in conftest.py)."""

import json
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hubstock.store.cancels import cancels_path, read_cancels
from hubstock.store.root import Root


def processes_with(text: str) -> list[int]:
    """PIDs of the processes whose command line contains ``text``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry))
    return pids


def need_root(what: str) -> None:
    """Fail in CI (which runs as root), skip elsewhere, when not root."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{what} need root (CI runs as root)")
        pytest.skip(f"{what} need root")


def until(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    """Wait until ``check()`` is true, asking every 0.2 s; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def session_jobs(root: Root) -> set[str]:
    """The job ids of the hub's sessions (the servers it knows), from their records."""
    if not root.sessions.is_dir():
        return set()
    return {json.loads(p.read_text()).get("job_id") or "?" for p in root.sessions.glob("*.json")}


def audit(root: Root) -> list[dict[str, Any]]:
    """The root's audit log, one dict a line."""
    return [json.loads(line) for line in root.audit_log.read_text().splitlines() if line.strip()]


def stop_during_an_outage(hub: Any, rig: Any, user: str, token: str, job: str, state_dir: Path) -> None:
    """Stop the user's server while the scheduler's controller is down (``rig.stop_controller``):
    the hub takes the Stop, the cancel waits on the hub's list in ``state_dir``, the hub stops
    (its memory gone), and the controller starts again (``rig.start_controller``). The caller
    starts the hub and sees the job end."""
    rig.stop_controller()
    try:
        status, _ = hub.request("DELETE", f"/hub/api/users/{user}/server", token=token, timeout=120)
        assert status in (202, 204), status
        hub.wait_stopped(user, token, timeout=120)
        hub.stop()
        cancels = read_cancels(cancels_path(state_dir))
        assert job in [j.job_id for j in cancels.jobs], cancels
    finally:
        rig.start_controller()


def kernel_script(jupyter_path: Path, name: str, code: str) -> str:
    """Python that starts kernel ``name`` as a server would (from JUPYTER_PATH, with
    jupyter_client), runs ``code`` and prints what it printed (``ERROR ...`` for an exception)."""
    return textwrap.dedent(f"""
        import os, sys, tempfile
        os.environ["JUPYTER_PATH"] = {str(jupyter_path)!r}
        tmp = tempfile.mkdtemp()
        os.environ["JUPYTER_RUNTIME_DIR"] = tmp
        os.environ["IPYTHONDIR"] = tmp
        from jupyter_client.manager import start_new_kernel
        km, kc = start_new_kernel(kernel_name={name!r}, startup_timeout=90)
        out = []
        def hook(msg):
            if msg["msg_type"] == "stream": out.append(msg["content"]["text"])
            if msg["msg_type"] == "error": out.append("ERROR " + msg["content"]["evalue"])
        kc.execute_interactive({code!r}, output_hook=hook, timeout=60)
        kc.stop_channels(); km.shutdown_kernel(now=True)
        sys.stdout.write("".join(out)); sys.stdout.flush(); os._exit(0)
    """)
