"""Trait types for the hub's configuration of memory sizes, walltimes and check schedules.

They take exactly what ``hubstock.toml`` takes (the pydantic types :data:`hubstock.limits.Memory`,
:data:`hubstock.limits.Walltime` and :data:`hubstock.site.PollSchedule` check them) and hold the
canonical value, so a setting reads back as it would be written::

    c.SlurmSpawner.default_memory = "1.5gb"   # reads back as "1536M"
    c.SlurmSpawner.default_walltime = "1-12:00:00"   # reads back as "36:00:00"
    c.SlurmSpawner.startup_poll = [0.05, 0.1, 0.5]   # reads back as (0.05, 0.1, 0.5)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import traitlets
from pydantic import TypeAdapter, ValidationError

from .. import limits
from ..site import DEFAULT_STARTUP_POLL, PollSchedule

_MEMORY: TypeAdapter[limits.MiB] = TypeAdapter(limits.Memory)
_WALLTIME: TypeAdapter[limits.Seconds] = TypeAdapter(limits.Walltime)
_SCHEDULE: TypeAdapter[tuple[float, ...]] = TypeAdapter(PollSchedule)
_DEFAULTS = limits.Defaults()


class Walltime(traitlets.TraitType[str, str | int]):
    """A walltime trait: ``"HH:MM:SS"`` or ``"D-HH:MM:SS"``; holds ``"HH:MM:SS"``.

    Example: ``Walltime("04:00:00", help="Longest session, e.g. '04:00:00'.").tag(config=True)``
    """

    default_value = limits.format_walltime(_DEFAULTS.walltime)
    info_text = "a walltime of at least a minute: 'HH:MM:SS' or 'D-HH:MM:SS'"

    def validate(self, obj: Any, value: Any) -> str:
        """The normalized ``"HH:MM:SS"``; a TraitError for anything else or for less than a minute."""
        try:
            return limits.format_walltime(_WALLTIME.validate_python(value))
        except ValidationError:
            self.error(obj, value)


class Memory(traitlets.TraitType[str, str | int]):
    """A memory trait: ``"4G"``, ``"1.5G"``, ``"512M"`` or a number of GiB; holds ``"4G"`` or ``"1536M"``.

    Example: ``Memory("4G", help="Memory when the user names none, e.g. '4G'.").tag(config=True)``
    """

    default_value = limits.format_memory(_DEFAULTS.memory)
    info_text = "a memory size of at least 256M like '4G', '1.5G' or '512M' (a number alone means GB)"

    def validate(self, obj: Any, value: Any) -> str:
        """The normalized size; a TraitError for anything else or for less than 256M."""
        try:
            return limits.format_memory(_MEMORY.validate_python(value))
        except ValidationError:
            self.error(obj, value)


class Schedule(traitlets.TraitType[tuple[float, ...], Sequence[float]]):
    """The waits between two checks of something that is starting: seconds, quick ones first; the last
    one repeats (the cap). One to 20 values from 0.01 to 60; holds a tuple of floats.

    Example: ``Schedule(help="Waits between checks, e.g. [0.05, 0.1, 0.25].").tag(config=True)``
    """

    default_value = DEFAULT_STARTUP_POLL
    info_text = "a list of 1 to 20 waits in seconds, each from 0.01 to 60, like [0.05, 0.1, 0.25]"

    def validate(self, obj: Any, value: Any) -> tuple[float, ...]:
        """The waits as a tuple of floats; a TraitError for anything else."""
        try:
            return _SCHEDULE.validate_python(tuple(value) if isinstance(value, list) else value)
        except (ValidationError, TypeError):
            self.error(obj, value)


def delays(schedule: Sequence[float]) -> Iterator[float]:
    """The waits of ``schedule`` in turn, then its last one for ever: ``0.05, 0.1, 0.25, 0.25, ...``."""
    return itertools.chain(schedule, itertools.repeat(schedule[-1]))
