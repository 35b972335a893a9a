"""A private PostgreSQL server for the hub's database: its own data folder and port, stopped by PID.

Debian's ``postgresql`` package provides the binaries (``nox -s tests`` installs it as
root). The server runs as the ``postgres`` system user (PostgreSQL refuses root),
listens on 127.0.0.1 only, on a free port, and trusts password-less connections from
that address alone: it lives for one test session and holds nothing else.

    rig = PostgresRig(workdir).start()
    rig.url("jupyterhub")      # postgresql://hubstock@127.0.0.1:PORT/jupyterhub
    rig.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PG_USER = "postgres"  # the system account Debian's package creates
DB_ROLE = "hubstock"


class PostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The folder of ``initdb`` and ``postgres`` (the newest installed version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresError(
        "PostgreSQL is not installed: `apt-get install postgresql` (or run nox -s tests as root)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresRig:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.sockets = workdir / "run"
        self.log = workdir / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.bindir = find_bindir()
        self.pw = pwd.getpwnam(PG_USER)

    def _as_postgres(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        cmd = ["setpriv", f"--reuid={self.pw.pw_uid}", f"--regid={self.pw.pw_gid}", "--init-groups", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.workdir)

    def start(self, timeout: float = 60) -> PostgresRig:
        for d in (self.workdir, self.sockets):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, self.pw.pw_uid, self.pw.pw_gid)
            os.chmod(d, 0o700)
        if not (self.data / "PG_VERSION").exists():
            res = self._as_postgres(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_ROLE,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ]
            )
            if res.returncode != 0:
                raise PostgresError(f"initdb failed:\n{res.stdout}\n{res.stderr}")
        self.port = _free_port()
        with open(self.log, "ab") as log:
            os.chown(self.log, self.pw.pw_uid, self.pw.pw_gid)
            self.proc = subprocess.Popen(
                ["setpriv", f"--reuid={self.pw.pw_uid}", f"--regid={self.pw.pw_gid}", "--init-groups",
                 str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.sockets)],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PostgresError(f"postgres exited ({self.proc.returncode}):\n{self.log_tail()}")
            res = self._as_postgres(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_ROLE]
            )
            if res.returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresError(f"postgres did not answer within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """A new, empty database ``name`` (dropped first if it exists); its URL."""
        psql = [
            str(self.bindir.parent / "bin" / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            DB_ROLE,
        ]
        if not Path(psql[0]).exists():
            psql[0] = shutil.which("psql") or "psql"
        for sql in (f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'):
            res = self._as_postgres([*psql, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
            if res.returncode != 0:
                raise PostgresError(f"{sql} failed:\n{res.stdout}\n{res.stderr}")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{DB_ROLE}@127.0.0.1:{self.port}/{database}"

    def stop(self, timeout: float = 30) -> None:
        """Stop the server by its PID (a fast shutdown), then wait for it."""
        if not self.proc or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
