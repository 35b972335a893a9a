"""The one helper through which hubstock runs external commands."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from .errors import CommandError

log = logging.getLogger(__name__)

#: how much of a failed command's output is kept in the error
_TAIL = 8000


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: str | None = None,
    timeout: float | None = None,
    check: bool = True,
    stderr_to_terminal: bool = False,
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, capturing its output, and raise :class:`CommandError` if it fails.

    ``what`` names the step for the error message ("installing the pip packages of
    env 'python'"). ``env`` entries are added to the current environment; they are
    never logged (they may carry tokens). ``stderr_to_terminal``: the command's standard error
    goes to ours as it comes (its progress lines), and only its standard output is captured.
    ``umask``: the command's own (-1: ours).
    """
    args = [os.fspath(a) for a in argv]
    log.debug("running: %s", shlex.join(args))
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(
            args,
            env=full_env,
            cwd=cwd,
            input=input,
            text=True,
            stdout=subprocess.PIPE,
            stderr=None if stderr_to_terminal else subprocess.STDOUT,
            timeout=timeout,
            umask=umask,
        )
    except FileNotFoundError as e:
        raise CommandError(
            f"{what} failed: the command {args[0]!r} was not found; install it or fix PATH.",
            argv=args,
            returncode=127,
            output=str(e),
        ) from None
    except subprocess.TimeoutExpired as e:
        out = e.output if isinstance(e.output, str) else ""
        raise CommandError(
            f"{what} failed: {shlex.join(args[:3])}... did not finish within {timeout:.0f} s.",
            argv=args,
            returncode=-1,
            output=out[-_TAIL:],
        ) from None
    if check and proc.returncode != 0:
        raise CommandError(
            f"{what} failed: {os.path.basename(args[0])} exited with status {proc.returncode}.",
            argv=args,
            returncode=proc.returncode,
            output=proc.stdout[-_TAIL:],
        )
    return proc
