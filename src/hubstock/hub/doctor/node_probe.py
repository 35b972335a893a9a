"""hubstock doctor's probe: what a compute node says about the site, from inside a batch job.

``hubstock doctor`` copies this file into a folder of the test account and submits a job
that runs it with the published server build's python::

    python node_probe.py ARGS.json STARTED > report.json

It reads the paths and addresses in ARGS.json and prints one JSON report: the node, the
root as this user sees it, ``jupyterhub-singleuser --version``, glibc, the Linux kernel,
the CUDA driver (when asked), whether the hub's API answers from here, the site interpreters
the generation's venv builds run on (their real binary's sha256, after loading their module),
and whether each set of Lmod modules a kernel loads loads here (``module load`` through bash,
as the kernel does). Standard library only, and Python 3.8 or newer: it runs with whatever
python the server build has.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
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
#: how much of Lmod's output a load keeps for the report
MAX_OUTPUT = 2000
#: printed (between NULs) after a successful load: Lmod's messages come before it
LOADED = "HUBSTOCK-PROBE-LOADED"
#: Lmod's bash init where the hub named none: $LMOD_PKG's, Debian's, then the usual places
INIT_PLACES = (
    "/usr/share/lmod/lmod/init/bash",
    "/usr/share/lmod/*/init/bash",
    "/opt/apps/lmod/lmod/init/bash",
)
# As a kernel that loads modules starts: bash without profiles sources Lmod's init, then
# `module use DIR...; module purge; module load MODULE...`; the directories and modules are
# positional arguments ($1 init, $2 how many directories), never spliced into the script.
LOAD_SCRIPT = (
    "init=$1; nuse=$2; shift 2\n"
    'source "$init"\n'
    "type module >/dev/null 2>&1 || exit 4\n"
    'if [ "$nuse" -gt 0 ]; then module use "${@:1:$nuse}"; shift "$nuse"; fi\n'
    "module purge\n"
    'if [ "$#" -gt 0 ]; then module load "$@" || exit 1; fi\n'
    "printf '\\0%s\\0' " + LOADED + "\n"
    "command -p env -0\n"
)


def unreadable(
    dirs: list[str], trees: list[str], files: list[str], reachable: frozenset[str] = frozenset()
) -> tuple[bool, list[dict[str, str]]]:
    """(root visible, up to MAX_PROBLEMS paths this user cannot read): ``dirs`` are listed,
    ``trees`` walked whole (folders listed, not files opened), ``files`` opened. The first tree
    is the generation: of its ``restricted/`` kernels, only those in ``reachable`` are walked."""
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
        for _dirpath, dirnames, _files in os.walk(top, onerror=lambda e: note(e.filename, e)):
            if len(problems) >= MAX_PROBLEMS:
                break
            if _dirpath == f"{trees[0]}/restricted":
                dirnames[:] = [d for d in dirnames if f"{_dirpath}/{d}" in reachable]
    for f in files:
        try:
            with open(f, "rb") as fh:
                fh.read(1)
        except OSError as e:
            note(f, e)
    return visible, problems


def restricted(closed: list[dict], groups: list[str]) -> dict[str, object]:
    """The kernels and builds for some groups only, as this user sees them: ``closed`` are the
    ones this user is not in a group of (each must refuse to be listed: else it was opened), and
    ``groups`` the groups they name that do not exist here."""
    import grp

    opened = []
    for item in closed:
        try:
            os.listdir(item["path"])
        except OSError:
            continue
        opened.append(item["path"])
    missing = []
    for g in groups:
        try:
            grp.getgrnam(g)
        except KeyError:
            missing.append(g)
    return {"opened": opened, "missing_groups": missing}


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


def lmod_init(configured: object) -> str | None:
    """Lmod's bash init here: the one the hub named, else $LMOD_PKG's or the usual places."""
    if isinstance(configured, str) and configured:
        return configured
    candidates = []
    if os.environ.get("LMOD_PKG"):
        candidates.append(os.path.join(os.environ["LMOD_PKG"], "init", "bash"))
    for pattern in INIT_PLACES:
        candidates.extend(sorted(glob.glob(pattern), reverse=True))
    return next((c for c in candidates if os.path.isfile(c)), None)


def load_modules(lmod: dict, modules: list[str], timeout: float) -> dict[str, object]:
    """``module load MODULES`` here, as a kernel does it (the job's own environment): whether it
    loaded, Lmod's output (its messages, or why there was no Lmod), and the PATH it left."""
    init = lmod_init(lmod.get("init"))
    if init is None:
        return {"ok": False, "code": None, "init": None, "output": "no Lmod init/bash found on this node"}
    use = [str(u) for u in lmod.get("use") or []]
    argv = ["/bin/bash", "--noprofile", "--norc", "-c", LOAD_SCRIPT, "hubstock-probe", init, str(len(use))]
    try:
        p = subprocess.run(
            [*argv, *use, *modules],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return {"ok": False, "code": None, "init": init, "output": str(e)}
    out = p.stdout.decode(errors="replace")
    messages, sep, env_text = out.partition(f"\0{LOADED}\0")
    if p.returncode != 0 or not sep:
        return {"ok": False, "code": p.returncode, "init": init, "output": messages[-MAX_OUTPUT:]}
    path = ""
    for entry in env_text.split("\0"):
        if entry.startswith("PATH="):
            path = entry[5:]
    return {"ok": True, "code": 0, "init": init, "output": messages[-MAX_OUTPUT:], "path": path}


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def interpreter_state(path: str) -> dict[str, object]:
    """Whether the interpreter at ``path`` is here: its real binary and that file's sha256."""
    if not os.path.lexists(path):
        return {"exists": False}
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return {"exists": False, "real": real}
    try:
        return {"exists": True, "real": real, "sha256": sha256_of(real)}
    except OSError as e:
        return {"exists": True, "real": real, "error": e.strerror or str(e)}


def on_path(command: str, path: str) -> str | None:
    """Where ``command`` is on ``path`` (a PATH value), symlinks kept."""
    for d in path.split(os.pathsep):
        candidate = os.path.join(d, command)
        if os.path.isabs(d) and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def where(item: dict, site: dict) -> dict:
    """Where to find Lmod for ``item``: its own ``init`` and ``use`` (its kernels'), else the site's."""
    return {"init": item["init"], "use": item.get("use") or []} if item.get("init") else site


def interpreters(wanted: list, site_lmod: dict, timeout: float) -> list:
    """For each venv build's interpreter (``path``, ``modules`` to load first and where Lmod is):
    its state here and, when it comes from a module, that load and where the module's PATH finds
    its command."""
    out = []
    for want in wanted:
        path, modules = str(want["path"]), [str(m) for m in want.get("modules") or []]
        found: dict[str, object] = {"path": path}
        if modules:
            loaded = load_modules(where(want, site_lmod), modules, timeout)
            found["load"] = {k: v for k, v in loaded.items() if k != "path"}
            if loaded.get("ok"):
                found["on_path"] = on_path(os.path.basename(path), str(loaded.get("path") or ""))
        found.update(interpreter_state(path))
        out.append(found)
    return out


def module_set(wanted: object, site_lmod: dict, timeout: float) -> dict:
    """Whether a set of modules that kernels load (``modules``, and where their Lmod is) loads here."""
    item = wanted if isinstance(wanted, dict) else {"modules": wanted if isinstance(wanted, list) else []}
    loaded = load_modules(where(item, site_lmod), [str(m) for m in item.get("modules") or []], timeout)
    loaded.pop("path", None)
    return loaded


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        args = json.load(f)
    started = float(argv[2]) if len(argv) > 2 else time.time()
    visible, problems = unreadable(
        args["dirs"], args["trees"], args["files"], frozenset(args.get("reachable") or ())
    )
    timeout = float(args.get("timeout", 120))
    lmod = args.get("lmod") or {}
    report = {
        "started": started,
        "host": socket.gethostname(),
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "python": platform.python_version(),
        "executable": sys.executable,
        "root": {"visible": visible, "unreadable": problems},
        "singleuser": singleuser(args["server_prefix"], timeout),
        "glibc": glibc(),
        "linux": platform.release(),
        "cuda": cuda_driver() if args.get("cuda") else None,
        "hub_api": hub_api(args["hub_api"], 10) if args.get("hub_api") else None,
        "interpreters": interpreters(args.get("interpreters") or [], lmod, timeout),
        "modules": [module_set(m, lmod, timeout) for m in args.get("module_sets") or []],
        "restricted": restricted(args.get("closed") or [], args.get("groups") or []),
        "finished": time.time(),
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
