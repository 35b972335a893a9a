"""The hub's settings on the hub node: its ports, its private state, TLS, login, and whether it runs."""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...site import HubSettings
from .model import Check, fail, ok, warn

#: files in state_dir, as hubstock.hub.config names them
COOKIE_SECRET = "jupyterhub_cookie_secret"
PROXY_TOKEN = "proxy_auth_token"
DEMO_PASSWORD = "demo_password"
PID_FILES = ("jupyterhub.pid", "proxy.pid")
#: JupyterHub's PAMAuthenticator.service default
PAM_SERVICE = "login"
PAM_DIRS = (Path("/etc/pam.d"), Path("/usr/lib/pam.d"))
_WILDCARD = {"", "0.0.0.0", "::"}


def local_ip(ip: str) -> str:
    """Where to connect on this node for a listener on ``ip`` (the wildcard: loopback)."""
    return "127.0.0.1" if ip in _WILDCARD else ip


def url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def http_get(url: str, timeout: float = 5, token: str | None = None) -> tuple[int, str]:
    """(status, body) of a GET; status 0 and the error when nothing answers. TLS is not verified
    (the hub's own certificate is checked by ``hub.tls``)."""
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    ctx = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read(65536).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return 0, str(reason)


@dataclass(frozen=True)
class HubProbe:
    """Whether the hub answers on the hub node: ``/hub/health`` and its version from ``/hub/api``."""

    url: str
    running: bool
    version: str | None
    error: str


def probe_hub(hub: HubSettings, get: Callable[..., tuple[int, str]] = http_get) -> HubProbe:
    base = f"http://{url_host(local_ip(hub.hub_ip))}:{hub.hub_port}/hub"
    status, body = get(f"{base}/health")
    if status != 200:
        return HubProbe(base, False, None, body or f"HTTP {status}")
    status, body = get(f"{base}/api")
    version = None
    with contextlib.suppress(ValueError, AttributeError):
        version = json.loads(body).get("version")
    return HubProbe(base, True, version, "")


def check_hub_running(probe: HubProbe) -> Check:
    if probe.running:
        return ok("hub", f"answers at {probe.url}/health (JupyterHub {probe.version or 'unknown'})")
    return warn(
        "hub",
        f"nothing answers at {probe.url}/health ({probe.error}): the hub is not running",
        "start the hub (`systemctl start hubstock-hub`, or `jupyterhub -f spawner/jupyterhub_config.py`).",
    )


# ---------------------------------------------------------------------------------------------- ports


def bind_test(ip: str, port: int) -> int:
    """0 if ``ip:port`` could be bound now (and was released), else the errno."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy and the hub bind
        try:
            s.bind((ip or "0.0.0.0", port))
        except OSError as e:
            return e.errno or errno.EADDRINUSE
    return 0


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (Linux /proc), if it can be told."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(parts[9]))
    inodes.discard(0)
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")  # the socket itself: its inode is the table's
                    if stat.S_ISSOCK(st.st_mode) and st.st_ino in inodes:
                        return int(pid)
    return None


def _ancestors(pid: int) -> list[int]:
    out = [pid]
    while pid > 1:
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat_line[stat_line.rindex(")") + 2 :].split()[1])
        out.append(pid)
    return out


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode(errors="replace")
            .strip()[:80]
        )
    return "an unknown program"


def hub_pids(state: Path) -> set[int]:
    """The live pids the hub's pid files in ``state`` name (the hub, and the proxy it started)."""
    pids = set()
    for name in PID_FILES:
        with contextlib.suppress(OSError, ValueError):
            pid = int((state / name).read_text().split()[0])
            if Path(f"/proc/{pid}").exists():
                pids.add(pid)
    return pids


def check_port(
    key: str,
    ip_key: str,
    ip: str,
    port: int,
    ours: Callable[[], bool],
    state: Path,
    bind: Callable[[str, int], int] = bind_test,
    owner: Callable[[int], int | None] = listener_pid,
) -> Check:
    """``port.<key>``: ``ip:port`` is free, or this hub (or its proxy) listens there."""
    name = f"port.{key}"
    where = f"{ip or '0.0.0.0'}:{port} ([hub] {key})"
    err = bind(ip, port)
    if err == 0:
        return ok(name, f"{where} is free")
    if err == errno.EADDRNOTAVAIL:
        return fail(
            name,
            f"{where}: {ip} is not an address of this node",
            f"set [hub] {ip_key} to an address of the hub node, e.g. '0.0.0.0'.",
        )
    if err == errno.EACCES:
        return warn(
            name, f"{where}: only root may bind it, so it was not tested", "run hubstock doctor as root."
        )
    if ours():
        return ok(name, f"{where} is in use by this hub")
    pid = owner(port)
    if pid is not None and set(_ancestors(pid)) & hub_pids(state):
        return ok(name, f"{where} is in use by this hub (pid {pid})")
    who = f"{_command(pid)} (pid {pid})" if pid is not None else "another program"
    return fail(
        name,
        f"{where} is in use by {who}, not by this hub",
        f"stop that program, or set [hub] {key} to a free port.",
    )


def check_ports(hub: HubSettings, state: Path, get: Callable[..., tuple[int, str]] = http_get) -> list[Check]:
    """The public port, the hub's API port and the proxy's API port."""
    scheme = "https" if hub.ssl_cert else "http"
    token = None
    with contextlib.suppress(OSError):
        token = (state / PROXY_TOKEN).read_text().strip()

    def answers(url: str, tok: str | None = None) -> Callable[[], bool]:
        return lambda: get(url, 3, tok)[0] == 200

    public = f"{scheme}://{url_host(local_ip(hub.ip))}:{hub.port}/hub/health"
    api = f"http://{url_host(local_ip(hub.hub_ip))}:{hub.hub_port}/hub/health"
    routes = f"http://{url_host(local_ip(hub.proxy_api_ip))}:{hub.proxy_api_port}/api/routes"
    return [
        check_port("port", "ip", hub.ip, hub.port, answers(public), state),
        check_port("hub_port", "hub_ip", hub.hub_ip, hub.hub_port, answers(api), state),
        check_port(
            "proxy_api_port",
            "proxy_api_ip",
            hub.proxy_api_ip,
            hub.proxy_api_port,
            answers(routes, token),
            state,
        ),
    ]


# ---------------------------------------------------------------------------------------------- files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_state_dir(state: Path) -> Check:
    if not state.is_dir():
        return warn(
            "hub.state_dir",
            f"{state} does not exist yet",
            "start the hub once: it makes the folder with mode 0700.",
        )
    mode = _mode(state)
    if mode & 0o077:
        return fail(
            "hub.state_dir",
            f"{state} has mode {mode:04o}: others may look inside",
            f"run `chmod 700 {state}`.",
        )
    return ok("hub.state_dir", f"{state} has mode {mode:04o}")


def check_secrets(state: Path, demo: bool) -> Check:
    """``hub.secrets``: the cookie secret and the proxy's token (and a demo password) are 0600."""
    names = [COOKIE_SECRET, PROXY_TOKEN, *([DEMO_PASSWORD] if demo else [])]
    found, bad = [], []
    for n in names:
        path = state / n
        if not path.exists():
            continue
        found.append(n)
        if _mode(path) & 0o077:
            bad.append((path, _mode(path)))
    if bad:
        shown = ", ".join(f"{p} (mode {m:04o})" for p, m in bad)
        return fail(
            "hub.secrets",
            f"readable by others: {shown}",
            f"run `chmod 600 {' '.join(str(p) for p, _ in bad)}`.",
        )
    if not found:
        return ok("hub.secrets", "none yet (the hub makes them, mode 0600, when it starts)")
    return ok("hub.secrets", f"{', '.join(found)}: mode 0600")


def check_tls(hub: HubSettings, openssl: str | None = None) -> Check:
    """``hub.tls``: the key is 0600 and matches the certificate, which has not expired."""
    cert, key = hub.ssl_cert, hub.ssl_key
    if not cert and not key:
        return ok("hub.tls", "not set: the public port speaks plain HTTP ([hub] ssl_cert, ssl_key)")
    if not (cert and key):
        return fail(
            "hub.tls", "[hub] ssl_cert and ssl_key go together", "set both or neither in hubstock.toml."
        )
    for what, path in (("ssl_cert", cert), ("ssl_key", key)):
        if not path.is_file():
            return fail(
                "hub.tls", f"[hub] {what} {path} does not exist", f"put the file there, or fix [hub] {what}."
            )
    if _mode(key) & 0o077:
        return fail(
            "hub.tls",
            f"the key {key} has mode {_mode(key):04o}: others may read it",
            f"run `chmod 600 {key}`.",
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))  # checks that the key is the certificate's
    except ssl.SSLError as e:
        mismatch = "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e)
        problem = (
            "the key does not match the certificate"
            if mismatch
            else f"they cannot be loaded ({e.reason or e})"
        )
        return fail(
            "hub.tls",
            f"{cert} and {key}: {problem}",
            "set [hub] ssl_key to the key of [hub] ssl_cert (or the other way round).",
        )
    expiry = cert_expiry(cert, openssl)
    if expiry is not None:
        days = (expiry - time.time()) / 86400
        if days < 0:
            return fail("hub.tls", f"{cert} expired {-days:.0f} day(s) ago", "renew the certificate.")
        if days < 14:
            return warn("hub.tls", f"{cert} expires in {days:.0f} day(s)", "renew the certificate.")
    left = f", valid {days:.0f} more days" if expiry is not None else ""
    return ok("hub.tls", f"{key} is mode 0600 and matches {cert}{left}")


def cert_expiry(cert: Path, openssl: str | None = None) -> float | None:
    """When the certificate expires (epoch seconds), from ``openssl x509 -enddate``; None if unknown."""
    exe = openssl or shutil.which("openssl")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "x509", "-noout", "-enddate", "-in", str(cert)], capture_output=True, text=True, timeout=10
        )
        return float(ssl.cert_time_to_seconds(out.stdout.strip().removeprefix("notAfter=")))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def check_login(hub: HubSettings, pam_dirs: tuple[Path, ...] = PAM_DIRS) -> list[Check]:
    """``hub.pam``: the PAM service JupyterHub uses exists; ``hub.allowed_group``: the group exists."""
    checks = []
    if hub.authenticator != "pam":
        checks.append(ok("hub.pam", f"not used: login with {hub.authenticator} (for demos)"))
    else:
        found = next((d / PAM_SERVICE for d in pam_dirs if (d / PAM_SERVICE).is_file()), None)
        try:
            import pamela  # noqa: F401  # JupyterHub's PAM binding: needs libpam

            lib = ""
        except Exception as e:  # an OSError from ctypes, an ImportError
            lib = f"; JupyterHub's PAM module cannot load ({e})"
        if found is None or lib:
            missing = "" if found else f"no PAM service {PAM_SERVICE!r} in {' or '.join(map(str, pam_dirs))}"
            checks.append(
                fail(
                    "hub.pam",
                    (missing + lib).lstrip("; "),
                    "install the PAM configuration and library (Debian: the login and libpam0g packages), "
                    "or set c.PAMAuthenticator.service to a service in /etc/pam.d.",
                )
            )
        else:
            checks.append(ok("hub.pam", f"PAM service {PAM_SERVICE!r}: {found}"))
    group = hub.allowed_group
    if not group:
        checks.append(ok("hub.allowed_group", "not set: every user of the cluster may log in"))
    else:
        try:
            g = grp.getgrnam(group)
        except KeyError:
            checks.append(
                fail(
                    "hub.allowed_group",
                    f"there is no Unix group {group!r} on the hub node",
                    f"create it (`groupadd {group}`) and add the users, or fix [hub] allowed_group.",
                )
            )
        else:
            checks.append(
                ok("hub.allowed_group", f"group {group!r} (gid {g.gr_gid}, {len(g.gr_mem)} listed members)")
            )
    return checks
