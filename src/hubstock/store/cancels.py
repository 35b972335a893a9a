"""The hub's jobs still to cancel, on disk: a restart of the hub forgets none of them.

    $STATE_DIR/hubstock-cancels.json     (0600, the hub's account)

Written by :class:`~hubstock.hub.reaper.Reaper` each time the list changes, read when the hub
starts (:func:`~hubstock.hub.config.apply_site`). The record of a job is removed only once the
scheduler has taken its cancellation or says the job no longer exists.
"""

from __future__ import annotations

from pathlib import Path

from .fs import atomic_write, read_regular
from .records import PendingCancels, RecordError

CANCELS_FILE = "hubstock-cancels.json"


def cancels_path(state_dir: Path) -> Path:
    return state_dir / CANCELS_FILE


def read_cancels(path: Path) -> PendingCancels:
    """The jobs to cancel; none when there is no file. An unreadable file is a :class:`RecordError`."""
    data = read_regular(path)
    if data is None:
        return PendingCancels()
    return PendingCancels.from_text(data, str(path))


def write_cancels(path: Path, record: PendingCancels) -> None:
    atomic_write(path, record.to_json(), mode=0o600)


__all__ = ["CANCELS_FILE", "RecordError", "cancels_path", "read_cancels", "write_cancels"]
