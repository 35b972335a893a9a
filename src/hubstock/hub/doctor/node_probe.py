"""hubstock doctor's probe: what a compute node says about the site, from inside a batch job.

``hubstock doctor`` copies this file into a folder of the test account and submits a job
that runs it with the published server build's python::

    python node_probe.py ARGS.json STARTED > report.json

It reads the paths and addresses in ARGS.json and prints one JSON report: the node, the
root as this user sees it, ``jupyterhub-singleuser --version``, glibc, the Linux kernel,
the CUDA driver (when asked), and whether the hub's API answers from here. Standard library
only, and Python 3.8 or newer: it runs with whatever python the server build has.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import pwd
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

MAX_PROBLEMS = 5


def unreadable(dirs: list[str], trees: list[str], files: list[str]) -> tuple[bool, list[dict[str, str]]]:
    """(root visible, up to MAX_PROBLEMS paths this user cannot read): ``dirs`` are listed,
    ``trees`` walked whole (folders listed, not files opened), ``files`` opened."""
    problems: list[dict[str, str]] = []

    def note(path: str, err: object) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append({"path": path, "error": getattr(err, "strerror", None) or str(err)})

    visible = bool(dirs) and os.path.isdir(dirs[0])
    for d in dirs:
        try:
            os.listdir(d)
        except OSError as e:
            note(d, e)
    for top in trees:
        if not os.path.isdir(top):
            note(top, "no such folder")
            continue
        for _dirpath, _dirnames, _files in os.walk(top, onerror=lambda e: note(e.filename, e)):
            if len(problems) >= MAX_PROBLEMS:
                break
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.read(1)
        except OSError as e:
            note(f, e)
    return visible, problems


def singleuser(prefix: str, timeout: float) -> dict[str, object]:
    """``<prefix>/bin/jupyterhub-singleuser --version`` as this user, here."""
    exe = os.path.join(prefix, "bin", "jupyterhub-singleuser")
    try:
        p = subprocess.run([exe, "--version"], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return {"ok": False, "error": str(e)}
    out = p.stdout.decode(errors="replace").strip()
    err = p.stderr.decode(errors="replace").strip()
    if p.returncode != 0:
        return {"ok": False, "error": (err or out)[-600:] or f"exit code {p.returncode}"}
    return {"ok": True, "version": out.splitlines()[-1] if out else ""}


def glibc() -> str | None:
    """The C library's version, e.g. '2.36' (None if it is not glibc)."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    return value.split()[-1] if value.startswith("glibc") else None


def cuda_driver() -> dict[str, object]:
    """The CUDA version the node's NVIDIA driver supports, as conda reads it (libcuda)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {"version": None, "error": f"no CUDA driver library ({e})"}
    version = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return {"version": None, "error": "the CUDA driver did not initialise (no GPU visible to the job?)"}
    return {"version": f"{version.value // 1000}.{(version.value % 1000) // 10}"}


def hub_api(url: str, timeout: float) -> dict[str, object]:
    """GET the hub's ``/hub/api``: its status and version, or why nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read(65536).decode(errors="replace")
            status = r.status
    except urllib.error.HTTPError as e:
        return {"status": e.code, "error": f"HTTP {e.code}"}
    except (OSError, ValueError) as e:
        return {"status": 0, "error": str(getattr(e, "reason", e))}
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        return {"status": status, "error": "the answer is not JupyterHub's JSON"}
    return {"status": status, "version": version}


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        args = json.load(f)
    started = float(argv[2]) if len(argv) > 2 else time.time()
    visible, problems = unreadable(args["dirs"], args["trees"], args["files"])
    report = {
        "started": started,
        "host": socket.gethostname(),
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "python": platform.python_version(),
        "executable": sys.executable,
        "root": {"visible": visible, "unreadable": problems},
        "singleuser": singleuser(args["server_prefix"], float(args.get("timeout", 120))),
        "glibc": glibc(),
        "linux": platform.release(),
        "cuda": cuda_driver() if args.get("cuda") else None,
        "hub_api": hub_api(args["hub_api"], 10) if args.get("hub_api") else None,
        "finished": time.time(),
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
