"""The stock page's helper for "My environments": the one part of the page that keeps root.

The stock page drops root before it reads anything (:func:`~.stock_page.drop_privileges`); to
act for a logged-in user (``hubstock mine create|list|show|remove`` as that user, which submits
the build as that user's batch job) it keeps a helper, forked while still root, that does only
this: it reads one request per line on a socket pair, ``{"user": NAME, "args": [...]}``, checks
it (an existing, non-root account; an action of ``mine`` it allows; bounded strings), and runs
``hubstock mine ARGS --json`` as that user through the site's ``[spawner] exec_prefix``, as the
spawner starts a user's job, with a clean environment (nothing of the hub's reaches the user's
process). The page decides *who* (JupyterHub's OAuth identity); the helper decides *what*.
When the page ends, the socket closes and the helper ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

#: what the page may ask ``hubstock mine`` to do, and the most arguments and characters it may send
ACTIONS = ("create", "list", "show", "remove")
MAX_ARGS = 60
MAX_ARG = 2000
TIMEOUT = 120.0


class HelperRefused(ValueError):
    """A request the helper does not run."""


@dataclass(frozen=True)
class MineCommand:
    """How the helper runs ``hubstock mine`` as a user (from the site's settings)."""

    exec_prefix: str  # '[spawner] exec_prefix', '{username}' in it
    tools: str  # '[personal] tools' (or the hub's Python)
    site: str
    root: str
    environment: dict[str, str]  # '[spawner] environment' (SLURM_CONF...)


def check_request(req: Any) -> tuple[str, list[str]]:
    """``(user, args)`` of a request, or :class:`HelperRefused`."""
    if not isinstance(req, dict) or set(req) != {"user", "args"}:
        raise HelperRefused("a request is {'user': ..., 'args': [...]}")
    user, args = req["user"], req["args"]
    if not isinstance(user, str) or not isinstance(args, list) or not args or len(args) > MAX_ARGS:
        raise HelperRefused("bad user or arguments")
    if not all(isinstance(a, str) and 0 < len(a) <= MAX_ARG and "\0" not in a for a in args):
        raise HelperRefused("an argument is not a short string")
    if args[0] not in ACTIONS:
        raise HelperRefused(f"{args[0][:40]!r} is not an action the page may ask for")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise HelperRefused(f"no account {user[:40]!r}") from None
    if pw.pw_uid == 0:
        raise HelperRefused("not for root")
    return user, args


def command_line(cmd: MineCommand, user: str, args: list[str]) -> str:
    """The shell command that runs ``hubstock mine ARGS --json`` as ``user`` (every part quoted but
    the site's exec_prefix, which is the spawner's)."""
    from .batch import format_template

    prefix = str(format_template(cmd.exec_prefix, username=user))
    argv = [
        cmd.tools,
        "-m",
        "hubstock",
        "--site",
        cmd.site,
        "--root",
        cmd.root,
        "-q",
        "mine",
        args[0],
        "--json",
    ]
    argv += args[1:]
    return f"{prefix} {shlex.join(argv)}"


def user_environment(cmd: MineCommand, user: str) -> dict[str, str]:
    """What the user's command starts with: its account's basics, the site's job environment, and
    the certificate and proxy settings of this node. Nothing of the hub's (tokens, keys)."""
    from ..personal.job import BASE_PATH, PASSED_ON

    pw = pwd.getpwnam(user)
    env = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    env.update(cmd.environment)
    env.update(
        PATH=BASE_PATH + ":/usr/sbin:/sbin", HOME=pw.pw_dir, USER=user, LOGNAME=user, SHELL=pw.pw_shell
    )
    return env


def run_request(cmd: MineCommand, req: Any) -> dict[str, Any]:
    try:
        user, args = check_request(req)
    except HelperRefused as e:
        return {"code": 2, "stdout": "", "stderr": f"hubstock: refused: {e}."}
    try:
        p = subprocess.run(
            command_line(cmd, user, args),
            shell=True,
            env=user_environment(cmd, user),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return {
            "code": 124,
            "stdout": "",
            "stderr": f"hubstock: no answer within {TIMEOUT:.0f} s; try again.",
        }
    return {"code": p.returncode, "stdout": p.stdout[-200_000:], "stderr": p.stderr[-4000:]}


def serve(cmd: MineCommand, sock: socket.socket) -> None:
    """The helper's loop: one JSON request per line, one JSON answer per line, until EOF."""
    with sock, sock.makefile("rwb") as f:
        for line in f:
            try:
                req = json.loads(line)
            except ValueError:
                req = None
            f.write(json.dumps(run_request(cmd, req)).encode() + b"\n")
            f.flush()


class MineHelper:
    """The page's side: :meth:`start` forks the helper (as root); :meth:`ask` sends a request."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.file = sock.makefile("rwb")
        self.lock = threading.Lock()

    @classmethod
    def start(cls, cmd: MineCommand) -> MineHelper:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the helper: root, its own loop, nothing of the page's
            code = 0
            try:
                ours.close()
                serve(cmd, theirs)
            except BaseException:  # noqa: BLE001 - a helper that fails says so and ends
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        return cls(ours, pid)

    def ask(self, user: str, args: list[str]) -> dict[str, Any]:
        """Run ``hubstock mine ARGS`` as ``user``; ``{"code", "stdout", "stderr"}`` (blocking: call it
        in a thread)."""
        with self.lock:
            self.file.write(json.dumps({"user": user, "args": args}).encode() + b"\n")
            self.file.flush()
            line = self.file.readline()
        if not line:
            return {
                "code": 1,
                "stdout": "",
                "stderr": "hubstock: the page's helper is gone; ask the hub's admins.",
            }
        return dict(json.loads(line))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def from_site(site_dir: str) -> MineCommand | None:
    """The helper's command from the site's settings; None when personal environments are off."""
    from ..site import load_site

    site = load_site(site_dir, None)
    if not site.settings.personal.enabled:
        return None
    return MineCommand(
        exec_prefix=site.settings.spawner.exec_prefix,
        tools=site.settings.personal.tools or sys.executable,
        site=str(site.dir),
        root=str(site.root),
        environment=dict(site.settings.spawner.environment),
    )
