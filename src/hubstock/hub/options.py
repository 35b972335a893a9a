"""What a user may ask the batch scheduler for: the spawn form and its server-side check.

A single-user server starts as a Slurm or PBS batch job, and batchspawner formats
the spawner's ``user_options`` straight into a shell batch script. Everything a
user sends—the spawn form, or ``user_options`` through the REST API, which never
sees the form—therefore goes through :func:`validate_options` first, and only the
normalized :class:`Options` it returns (or their :meth:`Options.to_user_options`)
may reach a script.

The rules, in one place:

- Values are ``str`` or ``int`` (never ``bool``), or a one-element list of ``str``
  as JupyterHub's form data gives. Strings are at most 64 characters of printable
  ASCII; spaces around them are ignored; an empty string means "not given".
- Every grammar is an anchored, ASCII-only regular expression matched in full, so
  shell text, newlines and non-ASCII digits (``"٣"``) never get through.
- **Memory**: ``"4G"``, ``"4GB"``, ``"4GiB"``, ``"512M"``, ``"1.5G"``, ``"2T"``
  (any case). Units are binary, as Slurm and PBS read them: ``G`` = ``GB`` =
  ``GiB`` = 1024 MiB. **A bare number means GiB** (``"4"`` or ``4`` is 4 GiB),
  since that is what people type into a field about memory. Fractions are rounded
  down to a whole MiB.
- **Walltime**: ``"HH:MM:SS"``, ``"H:MM"`` (hours and minutes) or ``"D-HH:MM:SS"``;
  an ``int`` is minutes. A string of digits alone is refused (``"4"`` is too
  easily meant as hours).
- Requests need ``cpus >= 1``, ``gpus >= 0``, memory of at least 256 MiB and a
  walltime of at least a minute, within the chosen queue's maxima. A missing value
  takes the site default, capped at the chosen queue's maximum.

The module does no I/O. The trait types :class:`Walltime` and :class:`Memory` are
for the hub-side configuration of these values.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import traitlets

from ..errors import HubstockError, SiteError

__all__ = [
    "MIN_MEMORY_MIB",
    "MIN_WALLTIME_S",
    "OPTION_KEYS",
    "Limits",
    "LimitsError",
    "Memory",
    "Options",
    "OptionsError",
    "Queue",
    "Walltime",
    "format_memory",
    "format_memory_pbs",
    "format_memory_slurm",
    "format_walltime",
    "options_from_form",
    "parse_memory",
    "parse_walltime",
    "render_options_form",
    "validate_options",
]

#: the keys a user may send, in the order they are checked and shown
OPTION_KEYS: tuple[str, ...] = ("queue", "cpus", "memory", "gpus", "walltime")
MIN_MEMORY_MIB = 256
MIN_WALLTIME_S = 60
#: the longest string value accepted from a user, before anything else is looked at
MAX_VALUE_CHARS = 64
#: at most this many characters of a bad value are echoed back
_ECHO_CHARS = 40

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_COUNT = re.compile(r"[0-9]{1,6}", re.ASCII)
_MEMORY = re.compile(
    r"(?P<whole>[0-9]{1,7})(?:\.(?P<frac>[0-9]{1,3}))?(?P<unit>[mgt](?:i?b)?)?", re.ASCII | re.I
)
_HMS = re.compile(r"(?P<h>[0-9]{1,4}):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9])", re.ASCII)
_HM = re.compile(r"(?P<h>[0-9]{1,4}):(?P<m>[0-5][0-9])", re.ASCII)
_DHMS = re.compile(r"(?P<d>[0-9]{1,3})-(?P<h>[0-9]{1,2}):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9])", re.ASCII)
_MAX_MINUTES = 999_999
_MAX_MEMORY_NUMBER = 9_999_999
_UNIT_MIB = {"m": 1, "g": 1024, "t": 1024 * 1024}

#: the HTML ``pattern`` attributes of the form's text inputs (a subset of what the server accepts)
WALLTIME_PATTERN = "[0-9]{1,4}:[0-5][0-9]:[0-5][0-9]"
MEMORY_PATTERN = "[0-9]{1,7}(\\.[0-9]{1,3})?([MmGgTt]([Ii]?[Bb])?)?"


class OptionsError(HubstockError, ValueError):
    """A user's server options are refused; the message is one sentence the user can read.

    Example: ``cpus must be a whole number from 1 to 4 on queue 'debug' (you asked for '999').``
    """


class LimitsError(SiteError, ValueError):
    """The site's queue limits or defaults (the hub configuration) are wrong."""


# ----------------------------------------------------------------------------------------------------------
# Showing bad values, and the shape of a user's string


def _show(value: object) -> str:
    """A short, safe description of a bad value: ``repr()`` of at most ~40 characters, never a container."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**15 else "a very large number"
    if isinstance(value, str):
        cut = value[:_ECHO_CHARS]
        while len(repr(cut)) > _ECHO_CHARS + 2:
            cut = cut[:-1]
        return repr(cut) + ("..." if len(cut) < len(value) else "")
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} values"
    return f"a {type(value).__name__}"


def _clean_text(value: str) -> str | None:
    """``value`` without surrounding spaces; None if too long, not ASCII, or holding control characters."""
    if len(value) > MAX_VALUE_CHARS or not value.isascii() or not value.isprintable():
        return None
    return value.strip(" ")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------------------
# Walltime and memory


def parse_walltime(value: str | int) -> int:
    """Seconds of a walltime: ``"HH:MM:SS"``, ``"H:MM"``, ``"D-HH:MM:SS"``, or an ``int`` of minutes.

    >>> parse_walltime("01:30:00"), parse_walltime("2:15"), parse_walltime("1-12:00:00"), parse_walltime(90)
    (5400, 8100, 129600, 5400)

    Anything else (a bool, a float, a string of digits alone, whitespace inside,
    non-ASCII digits) raises :class:`OptionsError`.
    """
    problem = (
        f"walltime must be HH:MM:SS, H:MM, D-HH:MM:SS or a whole number of minutes (you gave {_show(value)})."
    )
    if _is_int(value):
        if not 0 <= value <= _MAX_MINUTES:  # type: ignore[operator]
            raise OptionsError(problem)
        return int(value) * 60
    if not isinstance(value, str):
        raise OptionsError(problem)
    text = _clean_text(value)
    if text is None:
        raise OptionsError(problem)
    if m := _HMS.fullmatch(text):
        return int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"])
    if m := _HM.fullmatch(text):
        return int(m["h"]) * 3600 + int(m["m"]) * 60
    if (m := _DHMS.fullmatch(text)) and int(m["h"]) < 24:
        return int(m["d"]) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"])
    raise OptionsError(problem)


def format_walltime(seconds: int) -> str:
    """``"HH:MM:SS"``; the hours may exceed 24 (``format_walltime(172800) == "48:00:00"``)."""
    if not _is_int(seconds):
        raise TypeError(f"a walltime is a whole number of seconds, not {_show(seconds)}")
    if seconds < 0:
        raise ValueError(f"a walltime cannot be negative ({seconds} s)")
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    return f"{hours:02d}:{mins:02d}:{secs:02d}"


def parse_memory(value: str | int) -> int:
    """MiB of a memory size: ``"4G"``, ``"4GB"``, ``"4g"``, ``"4GiB"``, ``"512M"``, ``"1.5G"``, ``"2T"``.

    Units are binary (1G = 1024M, as Slurm and PBS read them). **A bare number,
    string or int, means GiB**: ``parse_memory("4") == parse_memory(4) == 4096``.
    Fractions round down to a whole MiB. Anything else raises :class:`OptionsError`.
    """
    problem = f"memory must be a size like '4G', '1.5G' or '512M' (you gave {_show(value)})."
    if _is_int(value):
        if not 0 <= value <= _MAX_MEMORY_NUMBER:  # type: ignore[operator]
            raise OptionsError(problem)
        return int(value) * 1024
    if not isinstance(value, str):
        raise OptionsError(problem)
    text = _clean_text(value)
    m = _MEMORY.fullmatch(text) if text is not None else None
    if m is None:
        raise OptionsError(problem)
    frac = m["frac"] or ""
    unit = _UNIT_MIB[(m["unit"] or "g")[0].lower()]
    scaled = int(m["whole"] + frac) * unit  # the number times 10**len(frac), in MiB
    return scaled // 10 ** len(frac)


def format_memory(mib: int) -> str:
    """The canonical form: whole GiB as ``"4G"``, anything else as ``"1536M"``."""
    _check_mib(mib)
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def format_memory_slurm(mib: int) -> str:
    """Memory for Slurm's ``--mem``: ``"4096M"``."""
    _check_mib(mib)
    return f"{mib}M"


def format_memory_pbs(mib: int) -> str:
    """Memory for PBS's ``-l mem=``: ``"4096mb"``."""
    _check_mib(mib)
    return f"{mib}mb"


def _check_mib(mib: int) -> None:
    if not _is_int(mib):
        raise TypeError(f"a memory size is a whole number of MiB, not {_show(mib)}")
    if mib < 0:
        raise ValueError(f"a memory size cannot be negative ({mib} MiB)")


# ----------------------------------------------------------------------------------------------------------
# The site's limits


def _check_config_int(where: str, value: object, low: int, show: Callable[[int], str] = str) -> None:
    if not _is_int(value):
        raise LimitsError(f"{where} must be a whole number, not {_show(value)}.")
    if value < low:  # type: ignore[operator]
        raise LimitsError(f"{where} must be at least {show(low)}, not {show(value)}.")  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class Queue:
    """One batch queue (a Slurm partition or a PBS queue) and the most a job on it may ask for."""

    name: str
    description: str = ""
    max_cpus: int
    max_memory_mib: int
    max_gpus: int = 0
    max_walltime_s: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _QUEUE_NAME.fullmatch(self.name):
            raise LimitsError(
                f"a queue name must be 1 to 64 ASCII letters, digits, '_', '.' or '-', starting with a "
                f"letter or digit, not {_show(self.name)}."
            )
        if not isinstance(self.description, str):
            raise LimitsError(
                f"queue {self.name!r}: description must be a string, not {_show(self.description)}."
            )
        _check_config_int(f"queue {self.name!r}: max_cpus", self.max_cpus, 1)
        _check_config_int(
            f"queue {self.name!r}: max_memory", self.max_memory_mib, MIN_MEMORY_MIB, format_memory
        )
        _check_config_int(f"queue {self.name!r}: max_gpus", self.max_gpus, 0)
        _check_config_int(
            f"queue {self.name!r}: max_walltime", self.max_walltime_s, MIN_WALLTIME_S, format_walltime
        )


_QUEUE_KEYS = ("name", "description", "max_cpus", "max_memory", "max_gpus", "max_walltime")
_DEFAULT_KEYS = ("queue", "cpus", "memory", "gpus", "walltime")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The site's queues and the defaults for what a user does not ask for.

    The defaults must fit :attr:`default_queue`; on another queue each is capped at
    that queue's maximum (see :meth:`defaults_for`).
    """

    queues: tuple[Queue, ...]
    default_queue: str
    default_cpus: int = 1
    default_memory_mib: int
    default_gpus: int = 0
    default_walltime_s: int

    def __post_init__(self) -> None:
        if not isinstance(self.queues, tuple) or not self.queues:
            raise LimitsError("the site must define at least one queue (a non-empty tuple of Queue).")
        seen: set[str] = set()
        for q in self.queues:
            if not isinstance(q, Queue):
                raise LimitsError(f"queues must be Queue objects, not {_show(q)}.")
            if q.name in seen:
                raise LimitsError(f"queue {q.name!r} is defined twice.")
            seen.add(q.name)
        if self.default_queue not in seen:
            raise LimitsError(
                f"the default queue {_show(self.default_queue)} is not one of the queues: "
                f"{_names(self.queues)}."
            )
        _check_config_int("the default cpus", self.default_cpus, 1)
        _check_config_int("the default memory", self.default_memory_mib, MIN_MEMORY_MIB, format_memory)
        _check_config_int("the default gpus", self.default_gpus, 0)
        _check_config_int("the default walltime", self.default_walltime_s, MIN_WALLTIME_S, format_walltime)
        q = self.queue(self.default_queue)
        for what, value, most, show in (
            ("cpus", self.default_cpus, q.max_cpus, str),
            ("memory", self.default_memory_mib, q.max_memory_mib, format_memory),
            ("gpus", self.default_gpus, q.max_gpus, str),
            ("walltime", self.default_walltime_s, q.max_walltime_s, format_walltime),
        ):
            if value > most:
                raise LimitsError(
                    f"the default {what} {show(value)} is more than the default queue {q.name!r} allows "
                    f"({show(most)})."
                )

    @classmethod
    def from_config(cls, queues: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any]) -> Limits:
        """Build from plain configuration values, raising :class:`LimitsError` (a ValueError) on any mistake.

        ``queues`` is a list like ``[{"name": "debug", "description": "...", "max_cpus": 4,
        "max_memory": "16G", "max_gpus": 0, "max_walltime": "04:00:00"}]`` (``description``
        and ``max_gpus`` are optional); ``defaults`` is like ``{"queue": "debug", "cpus": 1,
        "memory": "4G", "gpus": 0, "walltime": "01:00:00"}`` (``queue`` defaults to the first
        queue, ``cpus`` to 1, ``gpus`` to 0; ``memory`` and ``walltime`` are required).
        Memory and walltime take the same forms as from users; unknown keys are errors.
        """
        if isinstance(queues, str | bytes) or not isinstance(queues, Sequence) or not queues:
            raise LimitsError(f"queues must be a non-empty list of queue settings, not {_show(queues)}.")
        built = tuple(_queue_from_config(i, entry) for i, entry in enumerate(queues, 1))
        if not isinstance(defaults, Mapping):
            raise LimitsError(f"the defaults must be a mapping, not {_show(defaults)}.")
        _check_keys("the defaults", defaults, _DEFAULT_KEYS)
        for key in ("memory", "walltime"):
            if key not in defaults:
                raise LimitsError(f"the defaults lack {key!r}.")
        return cls(
            queues=built,
            default_queue=defaults.get("queue", built[0].name),
            default_cpus=defaults.get("cpus", 1),
            default_memory_mib=_config_memory("the default memory", defaults["memory"]),
            default_gpus=defaults.get("gpus", 0),
            default_walltime_s=_config_walltime("the default walltime", defaults["walltime"]),
        )

    def queue(self, name: str) -> Queue:
        """The queue called ``name``; KeyError if there is none."""
        for q in self.queues:
            if q.name == name:
                return q
        raise KeyError(name)

    def defaults_for(self, queue: Queue) -> Options:
        """What a job on ``queue`` gets for everything the user leaves out: the site defaults, capped."""
        return Options(
            queue=queue.name,
            cpus=min(self.default_cpus, queue.max_cpus),
            memory_mib=min(self.default_memory_mib, queue.max_memory_mib),
            gpus=min(self.default_gpus, queue.max_gpus),
            walltime_s=min(self.default_walltime_s, queue.max_walltime_s),
        )

    @property
    def has_gpus(self) -> bool:
        """Whether any queue offers GPUs."""
        return any(q.max_gpus > 0 for q in self.queues)


def _names(queues: Sequence[Queue]) -> str:
    return ", ".join(repr(q.name) for q in queues)


def _check_keys(where: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in given:
        if key not in allowed:
            raise LimitsError(f"{where}: unknown key {_show(key)}; the keys are: {', '.join(allowed)}.")


def _config_memory(where: str, value: object) -> int:
    try:
        return parse_memory(value)  # type: ignore[arg-type]
    except OptionsError:
        raise LimitsError(f"{where} must be a size like '16G' or '512M', not {_show(value)}.") from None


def _config_walltime(where: str, value: object) -> int:
    try:
        return parse_walltime(value)  # type: ignore[arg-type]
    except OptionsError:
        raise LimitsError(
            f"{where} must be HH:MM:SS, H:MM, D-HH:MM:SS or whole minutes, not {_show(value)}."
        ) from None


def _queue_from_config(index: int, entry: object) -> Queue:
    if not isinstance(entry, Mapping):
        raise LimitsError(f"queue #{index} must be a mapping of settings, not {_show(entry)}.")
    where = f"queue #{index}" + (f" ({_show(entry['name'])})" if "name" in entry else "")
    _check_keys(where, entry, _QUEUE_KEYS)
    for key in ("name", "max_cpus", "max_memory", "max_walltime"):
        if key not in entry:
            raise LimitsError(f"{where} lacks {key!r}.")
    return Queue(
        name=entry["name"],
        description=entry.get("description", ""),
        max_cpus=entry["max_cpus"],
        max_memory_mib=_config_memory(f"{where}: max_memory", entry["max_memory"]),
        max_gpus=entry.get("max_gpus", 0),
        max_walltime_s=_config_walltime(f"{where}: max_walltime", entry["max_walltime"]),
    )


# ----------------------------------------------------------------------------------------------------------
# A user's request


@dataclass(frozen=True)
class Options:
    """A validated, normalized request; the only thing that may be formatted into a batch script."""

    queue: str
    cpus: int
    memory_mib: int
    gpus: int
    walltime_s: int

    def __post_init__(self) -> None:
        # defence in depth: even an Options built by hand carries nothing a shell would read
        if not isinstance(self.queue, str) or not _QUEUE_NAME.fullmatch(self.queue):
            raise ValueError(f"not a queue name: {_show(self.queue)}")
        for name in ("cpus", "memory_mib", "gpus", "walltime_s"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be a whole number of at least 0, not {_show(value)}")

    def to_user_options(self) -> dict[str, str | int]:
        """The canonical JSON-safe form, e.g. ``{"queue": "debug", "cpus": 2, "memory": "4G",
        "gpus": 0, "walltime": "01:00:00"}``; :func:`validate_options` gives back the same Options."""
        return {
            "queue": self.queue,
            "cpus": self.cpus,
            "memory": format_memory(self.memory_mib),
            "gpus": self.gpus,
            "walltime": format_walltime(self.walltime_s),
        }


_MISSING = object()


def _unwrap(key: str, value: object) -> object:
    """The single str or int a user sent for ``key``; ``_MISSING`` for an empty string; else OptionsError.

    Raises only for the shape (list length); other shapes are returned to fail the field's check.
    """
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise OptionsError(f"{key} must be a single value (you sent {_show(value)}).")
        value = value[0]
        if not isinstance(value, str):
            return _Bad(value)
    if isinstance(value, str):
        text = _clean_text(value)
        if text is None:
            return _Bad(value)
        return _MISSING if text == "" else text
    if _is_int(value):
        return value
    return _Bad(value)


@dataclass(frozen=True)
class _Bad:
    """A value of the wrong type or shape; it fails every field's check."""

    value: object


def _count(value: object) -> int | None:
    if _is_int(value):
        return int(value)  # type: ignore[call-overload]
    if isinstance(value, str) and _COUNT.fullmatch(value):
        return int(value)
    return None


def validate_options(raw: Mapping[str, Any], limits: Limits) -> Options:
    """Check what a user asked for against the site's limits; return it normalized or raise OptionsError.

    ``raw`` is ``user_options`` from the spawn form (values may be one-element lists of
    str, as JupyterHub's form data gives) or from the REST API (JSON str or int; a
    bool is refused even though it is an int). Unknown keys are refused, naming the
    key and the allowed ones. A missing key, or an empty string, takes the chosen
    queue's default (:meth:`Limits.defaults_for`). Values must be within the chosen
    queue's maxima, with cpus >= 1, gpus >= 0, memory >= 256 MiB and walltime >= 60 s.
    The first problem found is reported, with at most ~40 characters of the bad value.
    """
    if not isinstance(raw, Mapping):
        raise OptionsError(f"server options must be a mapping of names to values (you sent {_show(raw)}).")
    for key in raw:
        if key not in OPTION_KEYS:
            raise OptionsError(
                f"unknown server option {_show(key)}; the options are: {', '.join(OPTION_KEYS)}."
            )
    given = {key: _unwrap(key, value) for key, value in raw.items()}

    q_value = given.get("queue", _MISSING)
    if q_value is _MISSING:
        queue = limits.queue(limits.default_queue)
    else:
        queue = next((q for q in limits.queues if q.name == q_value), None)
        if queue is None:
            shown = _show(q_value.value if isinstance(q_value, _Bad) else q_value)
            raise OptionsError(f"queue must be one of {_names(limits.queues)} (you asked for {shown}).")
    defaults = limits.defaults_for(queue)
    on = f"on queue {queue.name!r}"

    def refuse(key: str, expected: str, value: object) -> OptionsError:
        shown = _show(value.value if isinstance(value, _Bad) else value)
        return OptionsError(f"{key} must be {expected} {on} (you asked for {shown}).")

    cpus = defaults.cpus
    if (value := given.get("cpus", _MISSING)) is not _MISSING:
        n = _count(value)
        if n is None or not 1 <= n <= queue.max_cpus:
            raise refuse("cpus", f"a whole number from 1 to {queue.max_cpus}", value)
        cpus = n

    gpus = defaults.gpus
    if (value := given.get("gpus", _MISSING)) is not _MISSING:
        n = _count(value)
        if n is None or not 0 <= n <= queue.max_gpus:
            expected = f"a whole number from 0 to {queue.max_gpus}" if queue.max_gpus else "0"
            raise refuse("gpus", expected, value)
        gpus = n

    def measured(key: str, parse: Callable[[Any], int], lo: int, hi: int, expected: str, default: int) -> int:
        """A parsed size or duration within [lo, hi], or the default when not given."""
        value = given.get(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, _Bad):
            raise refuse(key, expected, value)
        try:
            n = parse(value)
        except OptionsError:
            raise refuse(key, expected, value) from None
        if not lo <= n <= hi:
            raise refuse(key, expected, value)
        return n

    memory = measured(
        "memory",
        parse_memory,
        MIN_MEMORY_MIB,
        queue.max_memory_mib,
        f"a size from {format_memory(MIN_MEMORY_MIB)} to {format_memory(queue.max_memory_mib)}, like '4G' or '512M',",
        defaults.memory_mib,
    )
    walltime = measured(
        "walltime",
        parse_walltime,
        MIN_WALLTIME_S,
        queue.max_walltime_s,
        f"a duration from {format_walltime(MIN_WALLTIME_S)} to {format_walltime(queue.max_walltime_s)} as HH:MM:SS",
        defaults.walltime_s,
    )

    return Options(queue=queue.name, cpus=cpus, memory_mib=memory, gpus=gpus, walltime_s=walltime)


def options_from_form(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """Flatten form data for ``Spawner.options_from_form``: ``{"cpus": ["2"]}`` -> ``{"cpus": "2"}``.

    An empty value means "not given" and its key is dropped, as is ``_xsrf`` (a
    transport field, not an option). More than one value for a key, or a value that
    is not a string, raises OptionsError. The result still goes through
    :func:`validate_options`.
    """
    flat: dict[str, str] = {}
    for key, values in formdata.items():
        if key == "_xsrf":
            continue
        if not isinstance(values, list | tuple):
            raise OptionsError(f"form field {_show(key)} must be a list of values (it was {_show(values)}).")
        if len(values) > 1:
            raise OptionsError(f"form field {_show(key)} must have a single value (it had {len(values)}).")
        if not values or values[0] == "":
            continue
        if not isinstance(values[0], str):
            raise OptionsError(f"form field {_show(key)} must be text (it was {_show(values[0])}).")
        flat[key] = values[0]
    return flat


# ----------------------------------------------------------------------------------------------------------
# The spawn form


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_options_form(limits: Limits) -> str:
    """HTML for ``Spawner.options_form``: queue, cpus, memory, gpus (if any queue has them), walltime.

    Inputs carry the default queue's defaults; an input left empty means the chosen
    queue's default. A table lists each queue's limits. Every value is escaped with
    :func:`html.escape`; the output depends only on ``limits``.
    """
    d = limits.defaults_for(limits.queue(limits.default_queue))
    gpus = limits.has_gpus
    most_cpus = max(q.max_cpus for q in limits.queues)
    most_gpus = max(q.max_gpus for q in limits.queues)
    out: list[str] = ['<div class="hubstock-options">']

    out.append('<div class="form-group">')
    out.append('<label for="hubstock-queue">Queue</label>')
    out.append('<select name="queue" id="hubstock-queue" class="form-control">')
    for q in limits.queues:
        label = f"{q.name}: {q.description}" if q.description else q.name
        selected = " selected" if q.name == d.queue else ""
        out.append(f'<option value="{_e(q.name)}"{selected}>{_e(label)}</option>')
    out.append("</select>")
    out.append("</div>")

    def number(name: str, label: str, low: int, high: int, value: int) -> None:
        out.append('<div class="form-group">')
        out.append(f'<label for="hubstock-{name}">{_e(label)}</label>')
        out.append(
            f'<input type="number" name="{name}" id="hubstock-{name}" class="form-control" '
            f'min="{low}" max="{high}" step="1" value="{value}">'
        )
        out.append("</div>")

    def text(name: str, label: str, value: str, pattern: str, hint: str) -> None:
        out.append('<div class="form-group">')
        out.append(f'<label for="hubstock-{name}">{_e(label)}</label>')
        out.append(
            f'<input type="text" name="{name}" id="hubstock-{name}" class="form-control" '
            f'value="{_e(value)}" placeholder="{_e(value)}" pattern="{_e(pattern)}" '
            f'title="{_e(hint)}" maxlength="{MAX_VALUE_CHARS}">'
        )
        out.append(f'<small class="form-text text-muted">{_e(hint)}</small>')
        out.append("</div>")

    number("cpus", "CPUs", 1, most_cpus, d.cpus)
    text(
        "memory",
        "Memory",
        format_memory(d.memory_mib),
        MEMORY_PATTERN,
        "A size like 4G or 512M; a number alone means GB.",
    )
    if gpus:
        number("gpus", "GPUs", 0, most_gpus, d.gpus)
    text(
        "walltime",
        "Walltime",
        format_walltime(d.walltime_s),
        WALLTIME_PATTERN,
        "HH:MM:SS, e.g. 01:30:00; the server stops when it runs out.",
    )

    out.append('<table class="table table-sm hubstock-limits">')
    out.append("<caption>The most each queue allows. An empty field takes the queue's default.</caption>")
    heads = ["Queue", "CPUs", "Memory", *(["GPUs"] if gpus else []), "Walltime"]
    out.append("<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in heads) + "</tr></thead>")
    out.append("<tbody>")
    for q in limits.queues:
        cells = [str(q.max_cpus), format_memory(q.max_memory_mib)]
        if gpus:
            cells.append(str(q.max_gpus))
        cells.append(format_walltime(q.max_walltime_s))
        out.append(
            f'<tr><th scope="row">{_e(q.name)}</th>' + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"
        )
    out.append("</tbody>")
    out.append("</table>")
    out.append("</div>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Trait types for the hub's configuration


class Walltime(traitlets.TraitType[str, str | int]):
    """A walltime trait: takes what :func:`parse_walltime` does (int = minutes); holds ``"HH:MM:SS"``."""

    default_value = "01:00:00"
    info_text = (
        "a walltime of at least a minute: 'HH:MM:SS', 'H:MM', 'D-HH:MM:SS' or a whole number of minutes"
    )

    def validate(self, obj: Any, value: Any) -> str:
        """The normalized ``"HH:MM:SS"``; a TraitError for anything else or for less than a minute."""
        try:
            seconds = parse_walltime(value)
        except OptionsError:
            self.error(obj, value)
        if seconds < MIN_WALLTIME_S:
            self.error(obj, value)
        return format_walltime(seconds)


class Memory(traitlets.TraitType[str, str | int]):
    """A memory trait: accepts what :func:`parse_memory` does; holds ``"4G"`` or ``"1536M"``."""

    default_value = "4G"
    info_text = "a memory size of at least 1M like '4G', '1.5G' or '512M' (a number alone means GB)"

    def validate(self, obj: Any, value: Any) -> str:
        """The normalized size; a TraitError for anything else or for zero."""
        try:
            mib = parse_memory(value)
        except OptionsError:
            self.error(obj, value)
        if mib < 1:
            self.error(obj, value)
        return format_memory(mib)
