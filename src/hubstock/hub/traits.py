"""Trait types for the hub's configuration of memory sizes and walltimes.

They take exactly what ``hubstock.toml`` takes (the pydantic types :data:`hubstock.limits.Memory`
and :data:`hubstock.limits.Walltime` check them) and hold the canonical text, so a setting
reads back as it would be written::

    c.SlurmSpawner.default_memory = "1.5gb"   # reads back as "1536M"
    c.SlurmSpawner.default_walltime = "1-12:00:00"   # reads back as "36:00:00"
"""

from __future__ import annotations

from typing import Any

import traitlets
from pydantic import TypeAdapter, ValidationError

from .. import limits

_MEMORY: TypeAdapter[limits.MiB] = TypeAdapter(limits.Memory)
_WALLTIME: TypeAdapter[limits.Seconds] = TypeAdapter(limits.Walltime)
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
