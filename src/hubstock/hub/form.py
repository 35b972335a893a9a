"""The spawn form: ``templates/spawn_form.html`` rendered from the site's limits (pure, autoescaped).

The form offers the queue (preselected with the default), CPUs, memory, GPUs (only when a
queue has them) and walltime, filled with the default queue's defaults, and a table of each
queue's limits. Its ``pattern`` attributes are a convenience for the browser; the server
checks everything again (:func:`hubstock.hub.options.validate_options`).
"""

from __future__ import annotations

from functools import cache

import jinja2

from ..limits import MAX_VALUE_CHARS, Limits, format_memory, format_walltime

#: the HTML ``pattern`` attributes of the form's text inputs (a subset of what the server accepts)
WALLTIME_PATTERN = "([0-9]{1,3}-([01][0-9]|2[0-3])|[0-9]{1,4}):[0-5][0-9]:[0-5][0-9]"
MEMORY_PATTERN = "[0-9]{1,7}(\\.[0-9]{1,3})?([MmGgTt]([Ii]?[Bb])?)?"


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hubstock.hub", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("spawn_form.html")


def render_options_form(limits: Limits) -> str:
    """HTML for ``Spawner.options_form``; the output depends only on ``limits``, every value escaped."""
    d = limits.defaults_for(limits.queue(limits.default_queue))
    gpus = limits.has_gpus
    queues = [
        {
            "name": q.name,
            "label": f"{q.name}: {q.description}" if q.description else q.name,
            "cells": [
                str(q.max_cpus),
                format_memory(q.max_memory),
                *([str(q.max_gpus)] if gpus else []),
                format_walltime(q.max_walltime),
            ],
        }
        for q in limits.queues
    ]
    return _template().render(
        queues=queues,
        defaults={**d.to_user_options()},
        gpus=gpus,
        most_cpus=max(q.max_cpus for q in limits.queues),
        most_gpus=max(q.max_gpus for q in limits.queues),
        heads=["Queue", "CPUs", "Memory", *(["GPUs"] if gpus else []), "Walltime"],
        memory_pattern=MEMORY_PATTERN,
        walltime_pattern=WALLTIME_PATTERN,
        maxlength=MAX_VALUE_CHARS,
    )
