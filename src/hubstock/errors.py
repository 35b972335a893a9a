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


class RootBusy(HubstockError):
    """Another command held the root's lock for longer than this one was told to wait (``--wait``)."""


class RootError(HubstockError):
    """The root is absent, not mounted, another root, or read-only where it must be written:
    nothing was read or changed there (``hubstock.store.rootmark``)."""

    exit_code = 2


class AccessError(HubstockError):
    """A Unix group a kernel or env is restricted to does not exist, or a folder cannot be closed
    to its groups (``hubstock.store.access``)."""

    exit_code = 2


class IntegrityError(HubstockError):
    """A package archive does not match the sha256 recorded in the lock."""


class BuildError(HubstockError):
    """Building an environment failed."""


class ModuleError(HubstockError):
    """An environment module (Lmod) is missing or does not load; ``detail`` carries Lmod's output."""


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


class SpawnError(HubstockError):
    """A spawn that cannot go ahead (nothing published, a broken generation).

    JupyterHub shows ``jupyterhub_message`` on the user's spawn page.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message


class SpawnRefused(HubstockError):
    """A spawn request refused, by hubstock or by the scheduler; the message is for the user.

    ``status`` is the HTTP status JupyterHub answers with: 400 when the request is wrong
    (bad server options, from the form or the REST API: refused before anything is
    submitted), 500 when the scheduler refused the job. The hub raises it as a
    ``tornado.web.HTTPError`` carrying ``status`` and ``jupyterhub_message``
    (:func:`hubstock.hub.spawner.http_error`), since that is what JupyterHub turns into
    an answer with that status and this message.
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        #: what JupyterHub shows the user (the spawn form, the progress page, the REST answer)
        self.jupyterhub_message = message


class PersonalError(HubstockError):
    """A user's own environment (``hubstock mine``) cannot be made, or its build failed."""


class UsageError(HubstockError):
    """A command-line value that cannot be used (``gc --keep 0``, an unknown generation)."""

    exit_code = 2


class DiskFullError(HubstockError):
    """A filesystem ran out of space (or quota) while hubstock wrote to it; nothing half-done counts."""

    @classmethod
    def at(cls, path: object, step: str, needs: int | None = None) -> DiskFullError:
        """The one sentence for ``step`` failing on ``path``'s full filesystem: which filesystem,
        how much space is left there, and roughly what the step needs."""
        import os

        where = str(path)
        probe = where
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe.rstrip("/")) or "/"
            if probe == "/":
                break
        mount, left = _filesystem(probe or "/")
        need = f"; it needs about {_size(needs)}" if needs else ""
        return cls(
            f"{step} failed: the filesystem {mount} (holding {where}) is full, {_size(left)} left{need}; "
            "free space there (or raise the quota) and run the command again."
        )


def _filesystem(path: str) -> tuple[str, int]:
    """The mount point holding ``path`` and the bytes left there for an ordinary writer."""
    import os

    try:
        st = os.statvfs(path)
        left = st.f_bavail * st.f_frsize
    except OSError:
        return path, 0
    mount = os.path.realpath(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return mount, left


def _size(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a write that failed for lack of space or quota (ENOSPC, EDQUOT)."""
    import errno

    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
