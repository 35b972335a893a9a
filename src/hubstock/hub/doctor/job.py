"""The probe job: a short batch job submitted the way the hub submits a user's server (the site's
exec_prefix, submit command and batch template, rendered by :mod:`hubstock.hub.batch`), as the
test account, watched until its report comes back through the shared filesystem, and never left
behind: it is cancelled on timeout, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shlex
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchspawner.batchspawner import format_template

from ...batchjob import JobCommands, job_logs, job_state, output_file, parse_job_id
from .jobscript import REPORT
from .model import Check, fail, ok

POLL = 0.5
QUERY_EVERY = 2.0
GRACE = 5.0  # seconds a finished job's report may take to show through the shared filesystem


@dataclass
class ProbePlan:
    """Everything the probe job needs, prepared on the hub node."""

    cmds: JobCommands
    user: str
    uid: int
    home: Path
    dir: Path  # the probe's folder in the user's home (it does not exist yet)
    files: dict[str, str]  # name -> text, written into dir
    script: str  # the batch script
    submit_env: dict[str, str]
    query_env: dict[str, str]
    cwd: Path
    queue: str
    timeout: float
    log: Callable[[str], None] = field(default=lambda _m: None)


@dataclass
class ProbeResult:
    check: Check
    report: dict[str, Any] | None = None
    job: str | None = None


def _shell(
    cmd: str, env: Mapping[str, str], cwd: Path, stdin: str | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run ``cmd`` with the shell (as batchspawner does), in its own session: a Ctrl-C on the
    terminal reaches doctor, which decides, and not the scheduler's command half-way."""
    try:
        p = subprocess.run(
            cmd,
            shell=True,
            input=stdin,
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"`{cmd}` did not finish within {timeout:.0f} s"
    return p.returncode, p.stdout, p.stderr


@contextlib.contextmanager
def _signals(handler: Any) -> Iterator[list[int]]:
    """SIGINT and SIGTERM go to ``handler`` (a callable, or SIG_IGN) inside; what arrived is listed."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def record(signum: int, _frame: Any) -> None:
        got.append(signum)
        if callable(handler):
            handler(signum, _frame)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, record if handler is not signal.SIG_IGN else signal.SIG_IGN)
    try:
        yield got
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


class ProbeJob:
    """One run of the probe: :meth:`run` submits, waits and always cleans up."""

    def __init__(self, plan: ProbePlan) -> None:
        self.plan = plan
        self.job: str | None = None
        self.state = "unknown"
        self.t_submit = time.time()
        self.kept: set[Path] = set()
        self.made = False  # the probe's folder exists
        self.forced = False  # the job was deleted by force

    def as_user(self, template: str) -> str:
        subvars = {"username": self.plan.user, "job_id": self.job or ""}
        return (
            f"{format_template(self.plan.cmds.exec_prefix, **subvars)} {format_template(template, **subvars)}"
        )

    def as_user_sh(self, script: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        """``sh -c script args`` as the test account (through exec_prefix): the probe's folder is
        that user's, and a home on a root-squashed filesystem is out of root's reach anyway."""
        prefix = format_template(self.plan.cmds.exec_prefix, username=self.plan.user)
        cmd = " ".join([prefix, "/bin/sh", "-c", shlex.quote(script), "sh", *map(shlex.quote, args)])
        return _shell(cmd, self.plan.query_env, self.plan.cwd, stdin=stdin, timeout=60)

    def read(self, name: str) -> str | None:
        """A file of the probe's folder, read as the user (None while it is not there)."""
        code, out, _err = self.as_user_sh('cat "$1" 2>/dev/null', str(self.plan.dir / name))
        return out if code == 0 else None

    def query(self) -> str:
        p = self.plan
        code, out, err = _shell(self.as_user(p.cmds.query), p.query_env, p.cwd, timeout=30)
        self.state = job_state(p.cmds, code, out, err)
        return self.state

    def run(self) -> ProbeResult:
        p = self.plan
        result: ProbeResult | None = None
        try:
            with _signals(None) as deferred:  # until the job id is known, a signal waits
                result = self._submit()
            if deferred:
                raise KeyboardInterrupt
            if result is None:
                with _signals(_interrupt):
                    result = self._wait()
        finally:
            with _signals(signal.SIG_IGN):
                left = self._finish(got_report=result is not None and result.report is not None)
        if left:
            return ProbeResult(
                fail(
                    "node.job",
                    f"job {self.job} is still in the scheduler after cancelling it"
                    f"{' and deleting it by force' if self.forced else ''} ({self.state}); the scheduler "
                    "keeps it until the daemon of its node answers (see scheduler.nodes)",
                    f"start that node's daemon, or cancel the job by hand (`{self.as_user(p.cmds.cancel)}`).",
                ),
                None,
                self.job,
            )
        return result

    def _submit(self) -> ProbeResult | None:
        p = self.plan
        bundle = io.BytesIO()
        with tarfile.open(fileobj=bundle, mode="w") as tar:
            for name, text in p.files.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        code, out, err = self.as_user_sh(
            'umask 077 && mkdir "$1" && base64 -d | tar -x -f - -C "$1"',
            str(p.dir),
            stdin=base64.b64encode(bundle.getvalue()).decode(),
        )
        if code != 0:
            said = (err or out).strip()[-300:] or f"exit code {code}"
            return ProbeResult(
                fail(
                    "node.job",
                    f"the probe's folder {p.dir} cannot be made as {p.user}: {said}",
                    "check [spawner] exec_prefix (the hub runs the scheduler's commands as the user with it) "
                    "and that the test account's home is writable by it.",
                )
            )
        self.made = True
        fixed = output_file(p.script, "")
        self.kept = {fixed} if fixed is not None and fixed.exists() else set()  # not ours to remove
        self.t_submit = time.time()
        cmd = self.as_user(p.cmds.submit)
        p.log(f"submitting the probe job as {p.user} to queue {p.queue!r}: {cmd}")
        code, out, err = _shell(cmd, p.submit_env, p.cwd, stdin=p.script)
        if code != 0:
            said = (err or out).strip()[-300:] or f"exit code {code}"
            return ProbeResult(
                fail(
                    "node.job",
                    f"`{cmd}` refused the probe job: {said}",
                    "run that command by hand with the batch script to see why, and fix [spawner] in hubstock.toml.",
                )
            )
        try:
            self.job = parse_job_id(p.cmds.scheduler, out)
        except ValueError as e:
            return ProbeResult(
                fail("node.job", str(e), "check [spawner] submit_cmd: it must print the job id.")
            )
        self.state = "pending"
        p.log(f"job {self.job} submitted; waiting up to {p.timeout:.0f} s for its report")
        return None

    def _wait(self) -> ProbeResult:
        p = self.plan
        start = time.monotonic()
        next_query = start + QUERY_EVERY
        gone_at: float | None = None
        while True:
            text = self.read(REPORT)
            if text is not None:
                return self._read(text)
            now = time.monotonic()
            if now >= next_query:
                if self.query() == "gone":
                    gone_at = gone_at or now
                next_query = now + QUERY_EVERY
            if gone_at is not None and now - gone_at > GRACE:
                return ProbeResult(
                    fail(
                        "node.job",
                        f"job {self.job} ended without a report{self._tail()}",
                        "read the job's output and the scheduler's log for why it failed on the node.",
                    ),
                    job=self.job,
                )
            if now - start > p.timeout:
                if self.state == "running":
                    said, fix = "ran but did not report", "read the job's output for what the probe was doing"
                else:
                    said, fix = (
                        f"was {self.state}",
                        f"see why it waits (the scheduler's reason for job {self.job})",
                    )
                return ProbeResult(
                    fail(
                        "node.job",
                        f"job {self.job} did not report within {p.timeout:.0f} s (it {said}); it was cancelled",
                        f"{fix}, or give it more time (--timeout, [doctor] timeout).",
                    ),
                    job=self.job,
                )
            time.sleep(POLL)

    def _read(self, text: str) -> ProbeResult:
        p = self.plan
        try:
            report = json.loads(text)
        except ValueError as e:
            return ProbeResult(
                fail(
                    "node.job", f"job {self.job}'s report cannot be read ({e})", "run hubstock doctor again."
                ),
                job=self.job,
            )
        if "probe_failed" in report:
            report["stderr"] = (self.read("probe.err") or "").strip()[-400:]
        waited = float(report.get("started", 0)) - self.t_submit
        took = time.time() - self.t_submit
        host = report.get("host", "?")
        started = (
            f"started {max(waited, 0):.1f} s after submission" if waited > -60 else "started (clocks differ)"
        )
        return ProbeResult(
            ok(
                "node.job",
                f"job {self.job} as {p.user} in queue {p.queue!r} ran on {host}: {started}, reported after {took:.1f} s",
            ),
            report,
            self.job,
        )

    def _logs(self) -> list[Path]:
        """The job's own output files: the user's, written since it was submitted, and not there before."""
        found = []
        for path in job_logs(self.plan.script, self.job or "", self.plan.home):
            if path in self.kept:
                continue
            with contextlib.suppress(OSError):
                st = path.stat()
                if st.st_uid == self.plan.uid and st.st_mtime >= self.t_submit - 2:
                    found.append(path)
        return found

    def _tail(self) -> str:
        for path in self._logs():
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    return f"; its output ({path}) ends: {text[-300:]!r}"
        return ""

    def _finish(self, got_report: bool) -> bool:
        """Leave nothing behind: wait for a job that reported to end, cancel one that did not (or
        that lingers), and wait until the scheduler no longer runs it; remove the probe's files.
        True if the job is still there."""
        p = self.plan
        left = False
        if self.job:
            deadline = time.monotonic() + (15 if got_report else 0)
            while self.query() in ("pending", "running", "ending") and time.monotonic() < deadline:
                time.sleep(0.5)
            if self.state != "gone":
                p.log(f"cancelling job {self.job}")
                _shell(self.as_user(p.cmds.cancel), p.query_env, p.cwd, timeout=30)
                deadline = time.monotonic() + 30
                while self.query() != "gone" and time.monotonic() < deadline:
                    time.sleep(0.5)
                if self.state != "gone" and p.cmds.force_cancel:  # its node's daemon does not answer
                    p.log(f"job {self.job} outlived the cancel; deleting it by force")
                    _shell(self.as_user(p.cmds.force_cancel), p.query_env, p.cwd, timeout=30)
                    self.forced = True
                    deadline = time.monotonic() + 15
                    while self.query() != "gone" and time.monotonic() < deadline:
                        time.sleep(0.5)
                left = self.state != "gone"
            for log in [] if left else self._logs():
                with contextlib.suppress(OSError):
                    log.unlink()
        if self.made:
            self.as_user_sh('rm -rf "$1"', str(p.dir))
        return left
