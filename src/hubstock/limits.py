"""What a job may ask the batch scheduler for: sizes, durations, queues, defaults and a request.

One set of pydantic models describes the site's queues and defaults, for ``hubstock.toml``
(``[[spawner.queues]]``, ``[spawner.defaults]``), for the spawner's configuration, and for
the validated request (:class:`Options`) that alone may reach a batch script. No I/O.

The grammar, in one place (the spawn form, the REST API and hubstock.toml alike):

- **Memory**: ``"4G"``, ``"4GB"``, ``"4GiB"``, ``"512M"``, ``"1.5G"``, ``"2T"`` (any case).
  Units are binary, as Slurm and PBS read them: ``G`` = ``GB`` = ``GiB`` = 1024 MiB. **A bare
  number means GiB** (``"4"`` or ``4``). Fractions are rounded down to a whole MiB.
- **Walltime**: ``"HH:MM:SS"`` (the hours may exceed 24) or ``"D-HH:MM:SS"``, nothing else.
  Two fields are refused (``"2:15"`` is 2 min 15 s to Slurm but 2 h 15 min to PBS), as are
  Slurm's other ``days-hours[:minutes]`` forms, digits alone and numbers. The batch script
  gets each scheduler's own spelling of the same duration (:func:`format_walltime_for`).
- Every grammar is an anchored, ASCII-only regular expression matched in full, so shell text,
  newlines and non-ASCII digits (``"٣"``) never get through.

A field of type :data:`Memory` holds a :class:`MiB`, one of type :data:`Walltime` holds
:class:`Seconds`; both are ``int`` and serialize back to the grammar (``"4G"``, ``"01:00:00"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    model_validator,
)

from .errors import HubstockError, SiteError

MIN_MEMORY_MIB = 256
MIN_WALLTIME_S = 60
#: the longest string value accepted from a user, before anything else is looked at
MAX_VALUE_CHARS = 64
_ECHO_CHARS = 40  # at most this many characters of a bad value are echoed back
_MAX_MEMORY_NUMBER = 9_999_999
_UNIT_MIB = {"m": 1, "g": 1024, "t": 1024 * 1024}

_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_SCHEDULER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}", re.ASCII)
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,:&|*()\[\]-]{1,128}", re.ASCII)
_DIRECTIVE_UNSAFE = re.compile(r"[^\x20-\x7e]|[`$;\\]")
_MEMORY = re.compile(
    r"(?P<whole>[0-9]{1,7})(?:\.(?P<frac>[0-9]{1,3}))?(?P<unit>[mgt](?:i?b)?)?", re.ASCII | re.I
)
_HMS = re.compile(r"(?P<h>[0-9]{1,4}):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9])", re.ASCII)
_DHMS = re.compile(r"(?P<d>[0-9]{1,3})-(?P<h>[01][0-9]|2[0-3]):(?P<m>[0-5][0-9]):(?P<s>[0-5][0-9])", re.ASCII)
_TWO_FIELDS = re.compile(r"[0-9]{1,4}:[0-9]{1,2}", re.ASCII)
#: the walltime grammar, as users read it in messages
WALLTIME_FORMAT = "HH:MM:SS or D-HH:MM:SS"

Scheduler = Literal["slurm", "pbs", "torque"]


class OptionsError(HubstockError, ValueError):
    """A user's server options are refused; the message is one sentence the user can read.

    Example: ``cpus must be a whole number from 1 to 4 on queue 'debug' (you asked for '999').``
    """


class LimitsError(SiteError, ValueError):
    """The site's queue limits or defaults (hubstock.toml or the hub configuration) are wrong."""


def show(value: object) -> str:
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


def clean_text(value: str) -> str | None:
    """``value`` without surrounding spaces; None if too long, not ASCII, or holding control characters."""
    if len(value) > MAX_VALUE_CHARS or not value.isascii() or not value.isprintable():
        return None
    return value.strip(" ")


def is_int(value: object) -> bool:
    """An ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_walltime(value: object) -> int:
    """Seconds of a walltime: ``"HH:MM:SS"`` (hours may exceed 24) or ``"D-HH:MM:SS"`` (hours below 24).

    >>> parse_walltime("01:30:00"), parse_walltime("36:00:00"), parse_walltime("1-12:00:00")
    (5400, 129600, 129600)

    Anything else raises OptionsError: two fields (``"2:15"``, which Slurm reads as minutes:seconds
    and PBS as hours:minutes), Slurm's ``"1-12"`` and ``"1-12:30"``, digits alone, numbers, bools,
    whitespace inside, non-ASCII digits.
    """
    problem = f"walltime must be {WALLTIME_FORMAT}, e.g. '01:30:00' or '1-12:00:00' (you gave {show(value)})"
    text = clean_text(value) if isinstance(value, str) else None
    if text is None:
        raise OptionsError(problem + ".")
    if m := _HMS.fullmatch(text):
        return int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"])
    if m := _DHMS.fullmatch(text):
        return int(m["d"]) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"])
    if _TWO_FIELDS.fullmatch(text):
        problem += "; two fields are minutes:seconds to Slurm but hours:minutes to PBS, so write all three"
    raise OptionsError(problem + ".")


def format_walltime(seconds: int) -> str:
    """``"HH:MM:SS"``; the hours may exceed 24 (``format_walltime(172800) == "48:00:00"``)."""
    if not is_int(seconds):
        raise TypeError(f"a walltime is a whole number of seconds, not {show(seconds)}")
    if seconds < 0:
        raise ValueError(f"a walltime cannot be negative ({seconds} s)")
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    return f"{hours:02d}:{mins:02d}:{secs:02d}"


def format_walltime_for(seconds: int, scheduler: Scheduler) -> str:
    """The walltime as ``scheduler`` reads it: Slurm's ``--time`` takes ``D-HH:MM:SS`` from a day up
    (``"1-12:00:00"``) and ``HH:MM:SS`` below; PBS Pro and Torque's ``walltime=`` take
    ``HH:MM:SS`` with as many hours as needed (``"36:00:00"``). All of them mean ``seconds``."""
    text = format_walltime(seconds)
    if scheduler == "slurm" and seconds >= 86400:
        days, rest = divmod(seconds, 86400)
        return f"{days}-{format_walltime(rest)}"
    return text


def parse_memory(value: object) -> int:
    """MiB of a memory size: ``"4G"``, ``"4GB"``, ``"4g"``, ``"4GiB"``, ``"512M"``, ``"1.5G"``, ``"2T"``.

    Units are binary (1G = 1024M). **A bare number, string or int, means GiB**:
    ``parse_memory("4") == parse_memory(4) == 4096``. Fractions round down to a whole
    MiB. Anything else raises :class:`OptionsError`.
    """
    problem = f"memory must be a size like '4G', '1.5G' or '512M' (you gave {show(value)})."
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= _MAX_MEMORY_NUMBER:
            raise OptionsError(problem)
        return value * 1024
    text = clean_text(value) if isinstance(value, str) else None
    m = _MEMORY.fullmatch(text) if text is not None else None
    if m is None:
        raise OptionsError(problem)
    frac = m["frac"] or ""
    unit = _UNIT_MIB[(m["unit"] or "g")[0].lower()]
    return int(m["whole"] + frac) * unit // 10 ** len(frac)  # the number times 10**len(frac), in MiB


def check_mib(mib: int) -> int:
    """``mib`` if it is a whole, non-negative number of MiB; else TypeError or ValueError."""
    if not is_int(mib):
        raise TypeError(f"a memory size is a whole number of MiB, not {show(mib)}")
    if mib < 0:
        raise ValueError(f"a memory size cannot be negative ({mib} MiB)")
    return mib


def format_memory(mib: int) -> str:
    """The canonical form: whole GiB as ``"4G"``, anything else as ``"1536M"``."""
    return f"{mib // 1024}G" if check_mib(mib) % 1024 == 0 else f"{mib}M"


# ----------------------------------------------------------------------------------------------------------
# pydantic types: each validator raises ValueError("must be ..., not ...") and pydantic names the key


class MiB(int):
    """A memory size in MiB, as a :data:`Memory` field holds it (passed through as is when re-validated)."""


class Seconds(int):
    """A duration in seconds, as a :data:`Walltime` field holds it (passed through as is when re-validated)."""


def _memory(value: object) -> MiB:
    if isinstance(value, MiB):
        mib = int(value)
    else:
        try:
            mib = parse_memory(value)
        except OptionsError:
            raise ValueError(f"must be a size like '16G', '1.5G' or '512M', not {show(value)}") from None
    if mib < MIN_MEMORY_MIB:
        raise ValueError(f"must be at least {format_memory(MIN_MEMORY_MIB)}, not {format_memory(mib)}")
    return MiB(mib)


def _walltime(value: object) -> Seconds:
    if isinstance(value, Seconds):
        seconds = int(value)
    else:
        try:
            seconds = parse_walltime(value)
        except OptionsError:
            raise ValueError(
                f"must be {WALLTIME_FORMAT} (e.g. '08:00:00' or '1-00:00:00'), not {show(value)}"
            ) from None
    if seconds < MIN_WALLTIME_S:
        raise ValueError(
            f"must be at least {format_walltime(MIN_WALLTIME_S)}, not {format_walltime(seconds)}"
        )
    return Seconds(seconds)


def _at_least(low: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be a whole number, not {show(value)}")
        if value < low:
            raise ValueError(f"must be at least {low}, not {value}")
        return value

    return check


def _matching(pattern: re.Pattern[str], what: str, *, empty: bool = False) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not (pattern.fullmatch(value) or (empty and value == "")):
            raise ValueError(f"must be {what}, not {show(value)}")
        return value

    return check


def _directive(value: object) -> str:
    if not isinstance(value, str) or not value.startswith(("#SBATCH ", "#PBS ")) or len(value) > 200:
        raise ValueError(
            f"must be one '#SBATCH ...' or '#PBS ...' line of at most 200 characters, not {show(value)}"
        )
    if _DIRECTIVE_UNSAFE.search(value):
        raise ValueError(
            f"must be printable ASCII without newlines, '`', '$', ';' or '\\', not {show(value)}"
        )
    return value.rstrip(" ")


#: a memory size of at least 256M; held as :class:`MiB`, written as ``"4G"``
Memory = Annotated[MiB, PlainValidator(_memory), PlainSerializer(format_memory, return_type=str)]
#: a walltime of at least a minute, ``"HH:MM:SS"`` or ``"D-HH:MM:SS"``; held as :class:`Seconds`, written as ``"HH:MM:SS"``
Walltime = Annotated[Seconds, PlainValidator(_walltime), PlainSerializer(format_walltime, return_type=str)]
Cpus = Annotated[int, PlainValidator(_at_least(1))]
Gpus = Annotated[int, PlainValidator(_at_least(0))]
QueueName = Annotated[
    str,
    PlainValidator(
        _matching(
            _QUEUE_NAME,
            "a queue name of 1 to 64 ASCII letters, digits, '_', '.' or '-' starting with a letter or digit",
        )
    ),
]
#: an account, reservation or QoS name ("" for none)
SchedulerName = Annotated[
    str,
    PlainValidator(
        _matching(
            _SCHEDULER_NAME, "a name of 1 to 64 ASCII letters, digits, '_', '.', '+' or '-'", empty=True
        )
    ),
]
#: a Slurm constraint ("" for none)
Constraint = Annotated[
    str,
    PlainValidator(
        _matching(_CONSTRAINT, "a Slurm constraint of ASCII letters, digits and _.,:&|*()[]-", empty=True)
    ),
]
Directive = Annotated[str, PlainValidator(_directive)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobExtras(_Model):
    """What else a job asks the scheduler for, beyond the user's request: account, QoS, extra lines.

    Set for the whole site in ``[spawner]``; a ``[[spawner.queues]]`` entry overrides each one
    it sets (``""`` or ``[]`` there means none on that queue).
    """

    account: SchedulerName | None = Field(None, description="account charged, e.g. 'proj42'")
    reservation: SchedulerName | None = Field(None, description="Slurm reservation, e.g. 'training'")
    qos: SchedulerName | None = Field(None, description="Slurm QoS, e.g. 'interactive'")
    constraint: Constraint | None = Field(None, description="Slurm node features, e.g. 'intel&ib'")
    directives: list[Directive] | None = Field(
        None,
        description="extra lines for the batch script, e.g. ['#SBATCH --exclusive'] or ['#PBS -W group_list=x']",
    )

    def over(self, base: JobExtras) -> JobExtras:
        """These settings where set, ``base``'s elsewhere."""
        mine = self.model_dump(include=set(JobExtras.model_fields), exclude_none=True)
        return JobExtras(**{**base.model_dump(include=set(JobExtras.model_fields)), **mine})


class Queue(JobExtras):
    """One queue (PBS) or partition (Slurm) users may choose, the most a job may ask for there, and
    its own :class:`JobExtras` (None: the site's)."""

    name: QueueName = Field(description="the scheduler's queue or partition name, e.g. 'interactive'")
    description: str = Field("", description="shown in the spawn form, e.g. 'Short sessions'")
    max_cpus: Cpus = Field(description="most CPUs a server may ask for here, e.g. 8")
    max_memory: Memory = Field(description="most memory, e.g. '32G'")
    max_gpus: Gpus = Field(0, description="most GPUs, e.g. 0")
    max_walltime: Walltime = Field(description="longest walltime, e.g. '08:00:00'")


class Defaults(_Model):
    """What a spawn asks for when the user names nothing (capped at the chosen queue's maxima)."""

    queue: QueueName | None = Field(None, description="default queue (default: the first one)")
    cpus: Cpus = Field(1, description="e.g. 1")
    memory: Memory = Field(MiB(4096), description="e.g. '4G'")
    gpus: Gpus = Field(0, description="e.g. 0")
    walltime: Walltime = Field(Seconds(3600), description="e.g. '01:00:00'")


class Options(_Model):
    """A validated, normalized request; the only thing that may be formatted into a batch script."""

    queue: QueueName
    cpus: Cpus
    memory: Memory
    gpus: Gpus
    walltime: Walltime

    def to_user_options(self) -> dict[str, str | int]:
        """The canonical JSON-safe form, e.g. ``{"queue": "debug", "cpus": 2, "memory": "4G",
        "gpus": 0, "walltime": "01:00:00"}``; validating it again gives back the same Options."""
        return self.model_dump()


def _fallback_queues() -> tuple[Queue, ...]:
    return (Queue(name="batch", max_cpus=4, max_memory=MiB(16384), max_walltime=Seconds(8 * 3600)),)


class Limits(JobExtras):
    """The site's queues, the defaults for what a user does not ask for, and the site's JobExtras.

    The defaults must fit the default queue; on another queue each is capped at that
    queue's maximum (:meth:`defaults_for`).
    """

    queues: tuple[Queue, ...] = Field(
        default_factory=_fallback_queues, description="what users may ask for, queue by queue"
    )
    defaults: Defaults = Field(default_factory=Defaults)

    @model_validator(mode="after")
    def _fits(self) -> Limits:
        names = [q.name for q in self.queues]
        if not names:
            raise ValueError("the site must define at least one queue ([[spawner.queues]])")
        if dup := next((n for n in names if names.count(n) > 1), None):
            raise ValueError(f"queue {dup!r} is defined twice; give each queue its own name")
        if self.defaults.queue is not None and self.defaults.queue not in names:
            shown = ", ".join(repr(n) for n in names)
            raise ValueError(f"the default queue {self.defaults.queue!r} is not one of the queues: {shown}")
        q, d = self.queue(self.default_queue), self.defaults
        for what, value, most, fmt in (
            ("cpus", d.cpus, q.max_cpus, str),
            ("memory", d.memory, q.max_memory, format_memory),
            ("gpus", d.gpus, q.max_gpus, str),
            ("walltime", d.walltime, q.max_walltime, format_walltime),
        ):
            if value > most:
                raise ValueError(
                    f"the default {what} {fmt(value)} is more than the default queue {q.name!r} allows ({fmt(most)})"
                )
        return self

    @property
    def default_queue(self) -> str:
        """The default queue's name (the first queue's when the defaults name none)."""
        return self.defaults.queue or self.queues[0].name

    def queue(self, name: str) -> Queue:
        """The queue called ``name``; KeyError if there is none."""
        for q in self.queues:
            if q.name == name:
                return q
        raise KeyError(name)

    def defaults_for(self, queue: Queue) -> Options:
        """What a job on ``queue`` gets for everything the user leaves out: the site defaults, capped."""
        d = self.defaults
        return Options(
            queue=queue.name,
            cpus=min(d.cpus, queue.max_cpus),
            memory=min(d.memory, queue.max_memory),
            gpus=min(d.gpus, queue.max_gpus),
            walltime=min(d.walltime, queue.max_walltime),
        )

    @property
    def has_gpus(self) -> bool:
        """Whether any queue offers GPUs."""
        return any(q.max_gpus > 0 for q in self.queues)

    def extras_for(self, queue: str) -> JobExtras:
        """The JobExtras of a job on ``queue``: the queue's own where it sets them, else the site's."""
        return self.queue(queue).over(self)
