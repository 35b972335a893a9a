"""What a refused or failed spawn tells the user and the audit log.

:func:`http_error` turns a :class:`~hubstock.errors.SpawnRefused` into the tornado HTTPError
JupyterHub answers with; :func:`audit_reason` strips what the user sent from a refusal for the
audit log; :func:`read_tail` reads the end of a job's own output, safely, for the message of a
job that ended before its server answered.
"""

from __future__ import annotations

import os
import pwd
import re
import stat

from tornado import web

from ..errors import SpawnRefused
from .status_parse import clean


def http_error(refused: SpawnRefused, html_message: str | None = None) -> web.HTTPError:
    """``refused`` as the tornado HTTPError JupyterHub answers with: its status and its message
    (and ``html_message`` for the pages that show HTML, already escaped). The message tornado
    logs is :func:`audit_reason`'s: no value the user sent reaches the hub's log."""
    reason = "Bad spawn request" if refused.status == 400 else "Spawn failed"
    # the hub's log gets the refusal without what the user sent (as the audit log); the user reads it all
    logged = audit_reason(refused.message) if refused.status == 400 else refused.message
    error = web.HTTPError(refused.status, log_message=logged.replace("%", "%%"), reason=reason)
    error.jupyterhub_message = refused.jupyterhub_message  # type: ignore[attr-defined]  # read by JupyterHub
    if html_message is not None:
        error.jupyterhub_html_message = html_message  # type: ignore[attr-defined]
    return error


_VALUE_ECHO = re.compile(r" \((?:you asked for|you sent|you gave|it was|it had) .*\)(?=\.?$)", re.S)
_KEY_ECHO = re.compile(r"^(unknown server option) .*(?=; the options are)|^(form field) .*(?= must )", re.S)


def audit_reason(message: str) -> str:
    """A refusal's message without what the user sent: for the audit log, which must not hold it.

    >>> audit_reason("cpus must be a whole number from 1 to 4 on queue 'debug' (you asked for '1; rm -rf ~').")
    "cpus must be a whole number from 1 to 4 on queue 'debug'."
    """
    text = _VALUE_ECHO.sub("", message.strip())
    text = _KEY_ECHO.sub(lambda m: m[1] or m[2], text)
    return text if text.endswith(".") else text + "."


def read_tail(path: str, username: str, max_bytes: int = 4096, max_lines: int = 20) -> str | None:
    """The last lines of the user's file ``path``, read by the hub (root) without trusting the path:
    not through a final symlink, only a regular file the user owns; None if there is none."""
    try:
        uid = pwd.getpwnam(username).pw_uid
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (KeyError, OSError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            return None
        start = max(0, st.st_size - max_bytes)
        data = os.pread(fd, max_bytes, start)
    except OSError:
        return None
    finally:
        os.close(fd)
    lines = clean(data.decode("utf-8", errors="replace")).splitlines()
    if start > 0:
        lines = lines[1:]  # the first line was cut
    return "\n".join(lines[-max_lines:]).strip() or None
