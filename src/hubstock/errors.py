"""One error hierarchy.

Every failure an admin or a user can act on is a :class:`HubstockError` whose
message is one sentence: what went wrong, which file, value or package, and the
fix. The CLI prints ``str(error)`` and exits with ``error.exit_code``; the
pre-spawn hook turns it into a message on the spawn page.
"""

from __future__ import annotations


class HubstockError(Exception):
    """Base class: a failure with a message meant for a person."""

    exit_code = 1
    #: whether the CLI shows ``detail`` without -v (a kernel's own error output)
    show_detail = False

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        #: extra output (a command's stderr, a kernel's log) shown after the message
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class SiteError(HubstockError):
    """The site repository or its settings (hubstock.toml) are wrong."""

    exit_code = 2


class SpecError(SiteError):
    """An environment spec (envs/<env>/environment.yml) is malformed."""


class SolveError(HubstockError):
    """An environment spec cannot be solved against the site's channels."""


class LockError(HubstockError):
    """A lock file is missing, stale or unreadable."""


class IntegrityError(HubstockError):
    """A package archive does not match the sha256 recorded in the lock."""


class BuildError(HubstockError):
    """Building an environment failed."""


class PublishError(HubstockError):
    """Publishing kernels failed; the current generation was left as it was."""

    show_detail = True


class CommandError(HubstockError):
    """An external command failed; ``detail`` carries its output."""

    def __init__(self, message: str, *, argv: list[str], returncode: int, output: str) -> None:
        super().__init__(message, detail=output)
        self.argv = argv
        self.returncode = returncode
        self.output = output
