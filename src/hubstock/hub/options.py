"""What a user asks the batch scheduler for, checked against the site's limits before anything runs.

A single-user server starts as a Slurm or PBS batch job. Everything a user sends—the
spawn form, or ``user_options`` through the REST API, which never sees the form—goes
through :func:`validate_options` first, and only the normalized
:class:`~hubstock.limits.Options` it returns may reach a batch script.

The rules, in one place:

- Values are ``str`` or ``int`` (never ``bool``), or a one-element list of ``str`` as
  JupyterHub's form data gives. Strings are at most 64 characters of printable ASCII;
  spaces around them are ignored; an empty string means "not given".
- Memory and walltime follow the grammar of :mod:`hubstock.limits` (a walltime is ``HH:MM:SS``
  or ``D-HH:MM:SS``, never two fields or a number).
- Requests need ``cpus >= 1``, ``gpus >= 0``, memory of at least 256 MiB and a walltime of
  at least a minute, within the chosen queue's maxima. A missing value takes the site
  default, capped at the chosen queue's maximum.

The first problem found is reported in one sentence the user can read, with at most ~40
characters of the bad value. The module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..limits import (
    MIN_MEMORY_MIB,
    MIN_WALLTIME_S,
    WALLTIME_FORMAT,
    Defaults,
    Limits,
    LimitsError,
    MiB,
    Options,
    OptionsError,
    Queue,
    Seconds,
    clean_text,
    format_memory,
    format_walltime,
    is_int,
    parse_memory,
    parse_walltime,
    show,
)

#: the keys a user may send, in the order they are checked and shown
OPTION_KEYS: tuple[str, ...] = ("queue", "cpus", "memory", "gpus", "walltime")
_COUNT = re.compile(r"[0-9]{1,6}", re.ASCII)
_MISSING = object()


@dataclass(frozen=True)
class _Bad:
    """A value of the wrong type or shape; it fails every field's check."""

    value: object


def _unwrap(key: str, value: object) -> object:
    """The single str or int a user sent for ``key``; ``_MISSING`` for an empty string; else OptionsError.

    Raises only for the shape (list length); other shapes are returned to fail the field's check.
    """
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise OptionsError(f"{key} must be a single value (you sent {show(value)}).")
        value = value[0]
        if not isinstance(value, str):
            return _Bad(value)
    if isinstance(value, str):
        text = clean_text(value)
        if text is None:
            return _Bad(value)
        return _MISSING if text == "" else text
    if is_int(value):
        return value
    return _Bad(value)


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _COUNT.fullmatch(value):
        return int(value)
    return None


def validate_options(raw: Mapping[str, Any], limits: Limits) -> Options:
    """Check what a user asked for against the site's limits; return it normalized or raise OptionsError.

    ``raw`` is ``user_options`` from the spawn form (values may be one-element lists of
    str, as JupyterHub's form data gives) or from the REST API (JSON str or int; a bool is
    refused even though it is an int). Unknown keys are refused, naming the key and the
    allowed ones. A missing key, or an empty string, takes the chosen queue's default
    (:meth:`Limits.defaults_for`). Values must be within the chosen queue's maxima.
    """
    if not isinstance(raw, Mapping):
        raise OptionsError(f"server options must be a mapping of names to values (you sent {show(raw)}).")
    for key in raw:
        if key not in OPTION_KEYS:
            raise OptionsError(
                f"unknown server option {show(key)}; the options are: {', '.join(OPTION_KEYS)}."
            )
    given = {key: _unwrap(key, value) for key, value in raw.items()}

    q_value = given.get("queue", _MISSING)
    if q_value is _MISSING:
        queue = limits.queue(limits.default_queue)
    else:
        found = next((q for q in limits.queues if q.name == q_value), None)
        if found is None:
            shown = show(q_value.value if isinstance(q_value, _Bad) else q_value)
            names = ", ".join(repr(q.name) for q in limits.queues)
            raise OptionsError(f"queue must be one of {names} (you asked for {shown}).")
        queue = found
    defaults = limits.defaults_for(queue)
    on = f"on queue {queue.name!r}"

    def refuse(key: str, expected: str, value: object) -> OptionsError:
        shown = show(value.value if isinstance(value, _Bad) else value)
        return OptionsError(f"{key} must be {expected} {on} (you asked for {shown}).")

    def counted(key: str, low: int, high: int, expected: str, default: int) -> int:
        if (value := given.get(key, _MISSING)) is _MISSING:
            return default
        n = _count(value)
        if n is None or not low <= n <= high:
            raise refuse(key, expected, value)
        return n

    def measured(
        key: str, parse: Callable[[object], int], lo: int, hi: int, expected: str, default: int
    ) -> int:
        """A parsed size or duration within [lo, hi], or the default when not given."""
        if (value := given.get(key, _MISSING)) is _MISSING:
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

    cpus = counted("cpus", 1, queue.max_cpus, f"a whole number from 1 to {queue.max_cpus}", defaults.cpus)
    gpus_expected = f"a whole number from 0 to {queue.max_gpus}" if queue.max_gpus else "0"
    gpus = counted("gpus", 0, queue.max_gpus, gpus_expected, defaults.gpus)
    memory = measured(
        "memory",
        parse_memory,
        MIN_MEMORY_MIB,
        queue.max_memory,
        f"a size from {format_memory(MIN_MEMORY_MIB)} to {format_memory(queue.max_memory)}, like '4G' or '512M',",
        defaults.memory,
    )
    walltime = measured(
        "walltime",
        parse_walltime,
        MIN_WALLTIME_S,
        queue.max_walltime,
        f"a duration from {format_walltime(MIN_WALLTIME_S)} to {format_walltime(queue.max_walltime)} "
        f"as {WALLTIME_FORMAT}",
        defaults.walltime,
    )
    return Options(queue=queue.name, cpus=cpus, memory=MiB(memory), gpus=gpus, walltime=Seconds(walltime))


def options_from_form(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """Flatten form data for ``Spawner.options_from_form``: ``{"cpus": ["2"]}`` -> ``{"cpus": "2"}``.

    An empty value means "not given" and its key is dropped, as is ``_xsrf`` (a transport
    field, not an option). More than one value for a key, or a value that is not a string,
    raises OptionsError. The result still goes through :func:`validate_options`.
    """
    flat: dict[str, str] = {}
    for key, values in formdata.items():
        if key == "_xsrf":
            continue
        if not isinstance(values, list | tuple):
            raise OptionsError(f"form field {show(key)} must be a list of values (it was {show(values)}).")
        if len(values) > 1:
            raise OptionsError(f"form field {show(key)} must have a single value (it had {len(values)}).")
        if not values or values[0] == "":
            continue
        if not isinstance(values[0], str):
            raise OptionsError(f"form field {show(key)} must be text (it was {show(values[0])}).")
        flat[key] = values[0]
    return flat


# ----------------------------------------------------------------------------------------------------------
# The site's limits from the spawner's configuration


def limits_from_config(
    queues: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any], **extras: Any
) -> Limits:
    """:class:`Limits` from plain configuration values (as in hubstock.toml), or a LimitsError.

    ``queues`` is like ``[{"name": "debug", "max_cpus": 4, "max_memory": "16G",
    "max_walltime": "04:00:00"}]``; ``defaults`` like ``{"queue": "debug", "memory": "4G"}``
    (a missing default takes :class:`~hubstock.limits.Defaults`'); ``extras`` are the site's
    account, reservation, qos, constraint and directives. The message names the queue and key.
    """
    try:
        return Limits.model_validate({"queues": queues, "defaults": defaults, **extras})
    except ValidationError as e:
        raise LimitsError(_describe(e, queues)) from None


def _describe(err: ValidationError, queues: object) -> str:
    """One sentence for the first problem pydantic found in :func:`limits_from_config`'s values."""
    errors = err.errors()
    # a misspelt key is the cause of the "missing" error that comes with it
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc, kind, given = e["loc"], e["type"], e.get("input")
    ctx_error = (e.get("ctx") or {}).get("error")
    msg = str(ctx_error) if ctx_error else e["msg"]
    allowed: Sequence[str] = [k for k in Limits.model_fields if k not in ("queues", "defaults")]
    where = "[spawner]"
    if loc == ("queues",):
        return f"queues must be a non-empty list of queue settings, not {show(given)}."
    if loc[:1] == ("queues",) and isinstance(loc[1], int):
        entry = queues[loc[1]] if isinstance(queues, Sequence) and len(queues) > loc[1] else None
        name = entry.get("name") if isinstance(entry, Mapping) else None
        where = f"queue #{loc[1] + 1}" + (f" ({show(name)})" if name is not None else "")
        loc, allowed = loc[2:], list(Queue.model_fields)
        if not loc:
            return f"{where} must be a mapping of settings, not {show(given)}."
    elif loc[:1] == ("defaults",):
        where, loc, allowed = "the defaults", loc[1:], list(Defaults.model_fields)
        if not loc:
            return f"the defaults must be a mapping, not {show(given)}."
        if kind not in ("extra_forbidden", "missing"):
            return f"the default {loc[0]} {msg}."
    key = ".".join(str(p) for p in loc)
    if kind == "extra_forbidden":
        return f"{where}: unknown key {show(key)}; the keys are: {', '.join(allowed)}."
    if kind == "missing":
        return f"{where} lacks {key!r}."
    if kind == "string_type":
        msg = f"must be a string, not {show(given)}"
    return f"{where}: {key} {msg}." if key else f"{msg}."  # a whole-model problem names its values
