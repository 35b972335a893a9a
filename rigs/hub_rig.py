"""A real JupyterHub for the tests: configurable-http-proxy from npm, started and stopped by PID.

``ensure_chp(cache)`` installs the npm configurable-http-proxy once into a cache
directory. ``Hub`` runs ``jupyterhub -f <site>/spawner/jupyterhub_config.py`` as a
child process (the site's own configuration, as an admin would run it), waits
for ``/hub/health``, and talks to its REST API.

A hub can run inside another network namespace (the OpenPBS rig's): ``launcher`` prefixes
its command line (``rig.ns_argv``), and ``netns`` (a :class:`NetNamespace`) runs every HTTP
call of the client in threads that joined that namespace, so that no packet of the test
goes anywhere else. :class:`Forwarder` relays a port of this machine's 127.0.0.1 to the hub
in the namespace (the demo, for a browser on the machine).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

CHP_VERSION = "5.3.0"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class HubError(RuntimeError):
    pass


def _join_netns(fd: int) -> None:
    """Move the calling thread (only it) into the network namespace open as ``fd``."""
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


class NetNamespace:
    """Runs calls in threads that have joined the network namespace of process ``pid``.

    ``setns`` moves only the calling thread, so each worker joins the namespace once, when it
    starts, and the sockets made there belong to it. The namespace is held open by a file
    descriptor: it stays valid while this object lives, whatever happens to ``pid``."""

    def __init__(self, pid: int, workers: int = 32) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"netns-{pid}",
            initializer=_join_netns,
            initargs=(self.fd,),
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` run in the namespace; its result (or its exception)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"NetNamespace(pid={self.pid}, net:[{self.inode}])"


class Polling:
    """A client that asks for something every ``every`` seconds in a thread until stopped
    (``get()``: the answer's HTTP status); what failed (a status other than 200, or no answer)."""

    def __init__(self, get: Callable[[], Any], every: float = 0.2) -> None:
        self.get, self.every = get, every
        self.asked = 0
        self.failed: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Polling:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.is_set():
            self.asked += 1
            try:
                status = self.get()
                if status != 200:
                    self.failed.append(f"HTTP {status}")
            except OSError as e:
                self.failed.append(repr(e))
            self._done.wait(self.every)

    def stop(self) -> tuple[int, list[str]]:
        """(requests asked, what failed)."""
        self._done.set()
        self._thread.join(10)
        return self.asked, self.failed


class Forwarder:
    """Relays ``127.0.0.1:listen_port`` of this machine's namespace to ``host:port`` in ``netns``
    (a browser on the machine reaches a hub that lives in a private namespace). Threads only."""

    def __init__(self, netns: NetNamespace, host: str, port: int, listen_port: int) -> None:
        self.netns, self.target = netns, (host, port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", listen_port))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = self.netns.call(socket.create_connection, self.target, 10)
        except OSError:
            client.close()
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                    with contextlib.suppress(OSError):
                        s.shutdown(how)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self._closed = True
        self.server.close()


def ensure_chp(cache_root: Path) -> Path:
    """The ``configurable-http-proxy`` executable, installed with npm into ``cache_root`` once."""
    dest = cache_root / f"chp-{CHP_VERSION}"
    exe = dest / "node_modules" / ".bin" / "configurable-http-proxy"
    if exe.exists():
        return exe
    npm = shutil.which("npm")
    if not npm:
        raise HubError(
            "npm is not installed: `apt-get install nodejs npm` (configurable-http-proxy needs it)"
        )
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / ".chp.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not exe.exists():
            tmp = cache_root / f".chp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            res = subprocess.run(
                [
                    npm,
                    "install",
                    "--silent",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(tmp),
                    f"configurable-http-proxy@{CHP_VERSION}",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if res.returncode != 0:
                raise HubError(f"npm install configurable-http-proxy failed:\n{res.stdout}\n{res.stderr}")
            os.rename(tmp, dest)
    return exe


class Hub:
    """One JupyterHub process for a site, with helpers for its REST API."""

    def __init__(
        self,
        site_dir: Path,
        port: int,
        env: dict[str, str],
        log_path: Path,
        *,
        ssl_context: ssl.SSLContext | None = None,
        cleanup_servers: bool = True,
        launcher: Callable[[Sequence[str]], list[str]] | None = None,
        netns: NetNamespace | None = None,
    ) -> None:
        """``ssl_context``: the hub's public port speaks HTTPS, and the client trusts what this
        context trusts. ``cleanup_servers``: stopping the hub stops its servers too (the site's
        config keeps them across restarts; the tests' hubs stop them unless a test says not to).
        ``launcher``: turns the hub's command line into the one to run (e.g. ``rig.ns_argv``,
        which runs it inside the rig's namespaces); ``netns``: the network namespace the client
        talks to the hub from (every HTTP call of this object runs there)."""
        self.site_dir = site_dir
        self.launcher = launcher
        self.netns = netns
        self.ssl_context = ssl_context
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        self.env = env
        self.log_path = log_path
        self.cleanup_servers = cleanup_servers
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped_in: float | None = None  # seconds from SIGTERM to exit, at the last stop

    def start(self, timeout: float = 60) -> Hub:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        argv = [
            sys.executable,
            "-m",
            "jupyterhub",
            "-f",
            str(self.site_dir / "spawner" / "jupyterhub_config.py"),
            *(["--JupyterHub.cleanup_servers=True"] if self.cleanup_servers else []),
        ]
        self.proc = subprocess.Popen(
            self.launcher(argv) if self.launcher else argv,
            cwd=self.site_dir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise HubError(f"the hub exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.call(self._health)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise HubError(f"the hub did not answer within {timeout} s:\n{self.log_tail()}") from None
                time.sleep(0.2)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` where the client runs: in the hub's network namespace if it has one."""
        return self.netns.call(fn, *args, **kwargs) if self.netns else fn(*args, **kwargs)

    def _health(self) -> None:
        with urllib.request.urlopen(self.url + "/hub/health", timeout=2, context=self.ssl_context):
            pass

    def stop(self, timeout: float = 90) -> None:
        """SIGTERM the hub (it stops the proxy it started, and its servers if ``cleanup_servers``), then wait."""
        if not self.proc or self.proc.poll() is not None:
            return
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stopped_in = (
            time.monotonic() - t0
        )  # SIGTERM to exit, with its services (a figure, never asserted)

    def kill(self) -> None:
        """SIGKILL the hub and everything it started (its process group: the proxy, its services),
        as a crash of its service would leave the node; the servers' batch jobs are the scheduler's."""
        if not self.proc or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def request(
        self, method: str, path: str, *, token: str | None = None, body: Any = None, timeout: float = 30
    ) -> tuple[int, Any]:
        """(status, JSON body, or text) of one request to the hub, as the client."""
        return self.call(self._request, method, path, token, body, timeout)

    def _request(
        self, method: str, path: str, token: str | None, body: Any, timeout: float
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"token {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def login(self, user: str, password: str) -> bool:
        """Log in on the hub's login page (as a browser would); True when the hub accepted it."""
        return self.call(self._login, user, password)[0]

    def browser(self, user: str, password: str) -> Browser:
        """A logged-in browser-like session (cookies, ``_xsrf``) of ``user``: for the spawn form."""
        ok, opener = self.call(self._login, user, password)
        if not ok:
            raise HubError(f"{user} could not log in\n{self.log_tail()}")
        return Browser(self, opener)

    def _login(self, user: str, password: str) -> tuple[bool, urllib.request.OpenerDirector]:
        import http.cookiejar
        import re
        import urllib.parse

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=self.ssl_context)
        )
        with opener.open(self.url + "/hub/login", timeout=30) as resp:
            page = resp.read().decode()
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page)
        form = {"username": user, "password": password, **({"_xsrf": xsrf.group(1)} if xsrf else {})}
        data = urllib.parse.urlencode(form).encode()
        try:
            with opener.open(self.url + "/hub/login?next=/hub/home", data=data, timeout=60) as resp:
                final, body = resp.url, resp.read().decode()
        except urllib.error.HTTPError as e:
            final, body = e.url, e.read().decode()
        return "/hub/login" not in final and "Invalid username or password" not in body, opener

    def token_for(self, user: str, password: str) -> tuple[int, str | None]:
        """Log in with the password (the first login creates the user), then ask the REST API
        for a token with the same password: (status, token)."""
        self.login(user, password)
        status, body = self.request(
            "POST",
            f"/hub/api/users/{user}/tokens",
            body={
                "auth": {"username": user, "password": password},
                "note": "hubstock tests",
                "expires_in": 3600,
            },
        )
        return status, (body or {}).get("token") if isinstance(body, dict) else None

    def wait_for_server(self, user: str, token: str, timeout: float = 180) -> dict[str, Any]:
        """The user's model once the default server is ready; fails fast when the spawn fails."""
        deadline = time.monotonic() + timeout
        while True:
            status, model = self.request("GET", f"/hub/api/users/{user}", token=token)
            assert status == 200, (status, model)
            server = model.get("servers", {}).get("", {})
            if server.get("ready"):
                return model
            if not server or (not server.get("pending") and not server.get("ready")):
                raise HubError(f"the server of {user} did not start: {model}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise HubError(f"the server of {user} was not ready within {timeout} s\n{self.log_tail()}")
            time.sleep(0.5)

    def progress(self, user: str, token: str, timeout: float = 180) -> list[str]:
        """The spawn's progress messages (JupyterHub's event stream) until the server is ready."""
        return self.call(self._progress, user, token, timeout)

    def _progress(self, user: str, token: str, timeout: float) -> list[str]:
        req = urllib.request.Request(self.url + f"/hub/api/users/{user}/server/progress")
        req.add_header("Authorization", f"token {token}")
        messages = []
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if event.get("ready") or event.get("failed"):
                    break
        return messages

    def wait_stopped(self, user: str, token: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, model = self.request("GET", f"/hub/api/users/{user}", token=token)
            if not model.get("servers"):
                return
            time.sleep(0.5)
        raise HubError(f"the server of {user} did not stop within {timeout} s\n{self.log_tail()}")


class Browser:
    """A logged-in user's cookies on a hub, as a browser has them (from :meth:`Hub.browser`)."""

    def __init__(self, hub: Hub, opener: urllib.request.OpenerDirector) -> None:
        self.hub, self.opener = hub, opener

    def open(
        self, path: str, form: dict[str, str] | None = None, timeout: float = 60
    ) -> tuple[int, str, str]:
        """GET ``path`` (or POST ``form`` to it, with the page's ``_xsrf`` cookie): (status, final URL, page)."""
        return self.hub.call(self._open, path, form, timeout)

    def _open(self, path: str, form: dict[str, str] | None, timeout: float) -> tuple[int, str, str]:
        import urllib.parse

        data = None
        if form is not None:
            xsrf = next((c.value for c in self._cookies() if c.name == "_xsrf"), None)
            data = urllib.parse.urlencode({**form, **({"_xsrf": xsrf} if xsrf else {})}).encode()
        try:
            with self.opener.open(self.hub.url + path, data=data, timeout=timeout) as resp:
                return resp.status, resp.url, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.url, e.read().decode(errors="replace")

    def _cookies(self) -> list[Any]:
        for handler in self.opener.handlers:
            jar = getattr(handler, "cookiejar", None)
            if jar is not None:
                return list(jar)
        return []


def start_kernel(hub: Hub, user: str, token: str, kernel: str) -> str:
    """Start ``kernel`` in the user's server; its id."""
    status, model = hub.request("POST", f"/user/{user}/api/kernels", token=token, body={"name": kernel})
    if status != 201:
        raise HubError(f"starting kernel {kernel!r} failed: {status} {model}")
    return model["id"]


def execute(hub: Hub, user: str, token: str, kid: str, code: str, timeout: float = 120) -> str:
    """Run ``code`` in the running kernel ``kid`` over its websocket; its stdout."""
    import asyncio
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    async def talk() -> str:
        ws_url = hub.url.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{kid}/channels"
        request = HTTPRequest(
            ws_url, headers={"Authorization": f"token {token}"}, ssl_options=hub.ssl_context
        )
        conn = await websocket_connect(request)
        msg_id = uuid.uuid4().hex
        await conn.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": user,
                        "session": uuid.uuid4().hex,
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        out, errors = [], []
        replied = idle = False
        while not (replied and idle):  # output arrives on iopub, possibly after the shell reply
            raw = await conn.read_message()
            if raw is None:
                raise HubError("the kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            elif msg["msg_type"] == "execute_reply":
                replied = True
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        conn.close()
        if errors:
            raise HubError("; ".join(errors))
        return "".join(out)

    return hub.call(asyncio.run, asyncio.wait_for(talk(), timeout))


def run_code(hub: Hub, user: str, token: str, kernel: str, code: str, timeout: float = 120) -> str:
    """Start ``kernel`` through the user's server, run ``code`` over the kernel websocket, return stdout."""
    kid = start_kernel(hub, user, token, kernel)
    try:
        return execute(hub, user, token, kid, code, timeout)
    finally:
        hub.request("DELETE", f"/user/{user}/api/kernels/{kid}", token=token)
