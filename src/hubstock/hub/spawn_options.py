"""The site's limits on a batch spawner: its configuration, the spawn form, and the validation of
``user_options`` before anything is submitted.

:class:`HubstockOptionsPart` is the part of :class:`~hubstock.hub.batch_spawner.HubstockBatchSpawner`
that holds the queues, defaults and site-wide requests (account, reservation, QoS, constraint,
directives) as configuration, builds the spawn form from them (:mod:`hubstock.hub.form`), and
validates a request from the form or the REST API against them, refusing it with an HTTP 400
error and a ``refused`` audit line. batchspawner's ``req_*`` settings hubstock writes itself
(:data:`SCHEDULER_REQUESTS`) are refused with a :class:`SiteError`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import batchspawner
from traitlets import Dict as DictTrait
from traitlets import Integer, List, Unicode, default

from ..errors import SiteError, SpawnRefused
from ..limits import Limits, Options, OptionsError, Scheduler, format_memory, format_walltime
from ..store.root import Root
from .batch import check_extras
from .form import render_options_form
from .options import limits_from_config, options_from_form, validate_options
from .refusals import audit_reason, http_error
from .traits import Memory, Walltime

_FALLBACK = Limits()
_LIMITS = "[[spawner.queues]] max_{0} and [spawner.defaults] {0}"
#: batchspawner's requests that hubstock writes itself, and the hubstock.toml key to use instead
SCHEDULER_REQUESTS: dict[str, str] = {
    "req_queue": "[[spawner.queues]] name (the queues users choose from)",
    "req_partition": "[[spawner.queues]] name (the partitions users choose from)",
    "req_nprocs": _LIMITS.format("cpus"),
    "req_memory": _LIMITS.format("memory"),
    "req_runtime": _LIMITS.format("walltime"),
    "req_ngpus": _LIMITS.format("gpus"),
    "req_gres": _LIMITS.format("gpus") + " (other resources: [spawner] directives)",
    "req_account": "[spawner] account (or account in a [[spawner.queues]] entry)",
    "req_reservation": "[spawner] reservation (or reservation in a [[spawner.queues]] entry)",
    "req_qos": "[spawner] qos (or qos in a [[spawner.queues]] entry)",
    "req_options": "[spawner] directives (or directives in a [[spawner.queues]] entry)",
    "req_cluster": "[spawner] directives, e.g. ['#SBATCH --clusters=NAME']",
}


def apply_user_options(spawner: HubstockOptionsPart, user_options: dict[str, Any]) -> None:
    """``Spawner.apply_user_options`` (JupyterHub >= 5.3) of hubstock's spawners: validate the request
    against the site's limits before the pre-spawn hook runs (an HTTP 400 error if refused).

    A site with its own ``apply_user_options`` calls this first::

        from hubstock.hub.spawner import apply_user_options as hubstock_options

        def my_options(spawner, user_options):
            hubstock_options(spawner, user_options)
            ...

        c.Spawner.apply_user_options = my_options
    """
    spawner.hubstock_apply_options(user_options)


class HubstockOptionsPart(batchspawner.BatchSpawnerRegexStates):
    """The site's limits, the spawn form and validated options, for any batchspawner scheduler."""

    queues = List(
        DictTrait(),
        default_value=[q.model_dump(exclude_none=True) for q in _FALLBACK.queues],
        help="""Queues (PBS) or partitions (Slurm) users may choose, with their limits, as in
        hubstock.toml's [[spawner.queues]] (account, reservation, qos, constraint and directives
        there override the site's for jobs on that queue).

        Example::

            c.SlurmSpawner.queues = [
                {"name": "interactive", "description": "Short sessions, fast start",
                 "max_cpus": 8, "max_memory": "32G", "max_gpus": 0, "max_walltime": "08:00:00"},
                {"name": "gpu", "description": "One node with GPUs", "qos": "gpu",
                 "max_cpus": 16, "max_memory": "128G", "max_gpus": 2, "max_walltime": "24:00:00"},
            ]
        """,
    ).tag(config=True)
    default_queue = Unicode(
        "", help="Queue chosen when the user names none, e.g. 'interactive' ('': the first queue)."
    ).tag(config=True)
    default_cpus = Integer(
        _FALLBACK.defaults.cpus, help="CPUs requested when the user names none, e.g. 1."
    ).tag(config=True)
    default_memory = Memory(
        format_memory(_FALLBACK.defaults.memory), help="Memory requested when the user names none, e.g. '4G'."
    ).tag(config=True)
    default_gpus = Integer(
        _FALLBACK.defaults.gpus, help="GPUs requested when the user names none, e.g. 0."
    ).tag(config=True)
    default_walltime = Walltime(
        format_walltime(_FALLBACK.defaults.walltime),
        help="Walltime requested when the user names none, e.g. '01:00:00'.",
    ).tag(config=True)
    account = Unicode("", help="Account every job is charged to ('': none), e.g. 'proj42'.").tag(config=True)
    reservation = Unicode("", help="Slurm reservation for every job ('': none), e.g. 'training'.").tag(
        config=True
    )
    qos = Unicode("", help="Slurm QoS for every job ('': none), e.g. 'interactive'.").tag(config=True)
    constraint = Unicode("", help="Slurm node features every job needs ('': none), e.g. 'intel&ib'.").tag(
        config=True
    )
    directives = List(
        Unicode(),
        help="""Extra lines for every batch script, after hubstock's own: '#SBATCH ...' for Slurm,
        '#PBS ...' for PBS. Example: ['#SBATCH --exclusive'].""",
    ).tag(config=True)

    hubstock_root = Unicode(
        "",
        help="""The shared root whose audit log gets a 'refused' line for each refused request (set
        by apply_site; '' for none). Example: '/shared/hubstock'.""",
    ).tag(config=True)

    #: why the user's last server ended, for the user (kept in the spawner's state until the next start)
    stop_reason: str = ""
    #: the validated request of the current spawn (set by ``apply_user_options``, or by ``start``)
    _hubstock_options: Options | None = None
    #: the last request was refused (the pre-spawn hook never ran: the post-stop hook must not)
    _hubstock_refused: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_scheduler_requests()
        self.limits  # noqa: B018  # a configuration mistake shows when the spawner is made

    @property
    def scheduler(self) -> Scheduler:
        """Which scheduler's directives and commands this spawner uses."""
        raise NotImplementedError

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Callable[..., None]:
        return apply_user_options

    def check_scheduler_requests(self) -> None:
        """A SiteError if a batchspawner ``req_*`` that hubstock writes itself was set (it would be lost)."""
        for name, key in SCHEDULER_REQUESTS.items():
            value = getattr(self, name, "") if self.has_trait(name) else ""
            if value:
                raise SiteError(
                    f"{self._where(name)} = {value!r} would be ignored, since hubstock writes the job's "
                    f"requests from hubstock.toml; remove it and set {key} in hubstock.toml instead."
                )

    def _where(self, name: str) -> str:
        """Where the trait ``name`` was set: ``c.SlurmSpawner.req_account`` (or the class, if not in config)."""
        for cls in type(self).mro():
            if cls.__name__ in self.config and name in self.config[cls.__name__]:
                return f"c.{cls.__name__}.{name}"
        return f"{type(self).__name__}.{name}"

    @property
    def limits(self) -> Limits:
        """The site's limits from this spawner's configuration (a LimitsError, a SiteError, if they are wrong)."""
        limits = limits_from_config(
            self.queues,
            {
                "queue": self.default_queue or None,
                "cpus": self.default_cpus,
                "memory": self.default_memory,
                "gpus": self.default_gpus,
                "walltime": self.default_walltime,
            },
            account=self.account,
            reservation=self.reservation,
            qos=self.qos,
            constraint=self.constraint,
            directives=list(self.directives),
        )
        check_extras(limits, self.scheduler)
        return limits

    @default("options_form")
    def _options_form_default(self) -> str:
        return render_options_form(self.limits)

    async def get_options_form(self) -> str:
        """The spawn form, with why the last server ended above it (once, until the next start)."""
        form = await super().get_options_form()
        if self.stop_reason and form:
            notice = html.escape(self.stop_reason)
            form = f'<div class="alert alert-warning" role="alert" id="hubstock-stop-reason">{notice}</div>\n{form}'
        return str(form)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        """Validate the form at once, so a mistake is shown on the form itself."""
        try:
            return validate_options(options_from_form(formdata), self.limits).to_user_options()
        except OptionsError as e:
            self._audit_refused(str(e))
            raise http_error(SpawnRefused(str(e))) from None

    def validated_options(self) -> Options:
        """``user_options`` checked against the site's limits (an HTTP 400 error with the reason if not)."""
        try:
            return validate_options(self.user_options or {}, self.limits)
        except OptionsError as e:
            raise http_error(SpawnRefused(str(e))) from None

    def hubstock_apply_options(self, user_options: Mapping[str, Any] | None) -> None:
        """Validate ``user_options`` (JupyterHub calls this through ``apply_user_options``, before the
        pre-spawn hook): keep the normalized request, or refuse it with an HTTP 400 error and one
        ``refused`` audit line (the reason and the user's name, never the values sent)."""
        try:
            opts = validate_options(user_options or {}, self.limits)
        except OptionsError as e:
            self._hubstock_refused = True
            self._hubstock_options = None
            self._forget_options()
            self._audit_refused(str(e))
            raise http_error(SpawnRefused(str(e))) from None
        self._hubstock_refused = False
        self._hubstock_options = opts
        self.user_options = opts.to_user_options()
        self.stop_reason = ""
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is not None:  # what the server runs with, while it runs (clear_state forgets it)
            orm_spawner.user_options = dict(self.user_options)

    def _forget_options(self) -> None:
        """JupyterHub starts a server asked for without options (an empty REST body) with the options
        it keeps in its database: keep none there, so such a request gets the site's defaults."""
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is not None and orm_spawner.user_options:
            orm_spawner.user_options = {}

    def _audit_refused(self, message: str) -> None:
        if not self.hubstock_root:
            return
        try:
            Root(Path(self.hubstock_root)).audit(
                "refused", user=self.user.name, server=self.name or "", reason=audit_reason(message)
            )
        except Exception:  # the user still gets the refusal
            self.log.exception("Could not write the audit log's 'refused' line for %s", self.user.name)

    def run_post_stop_hook(self) -> Any:
        """Not after a refused request: the pre-spawn hook never ran, there is nothing to undo."""
        if self._hubstock_refused:
            return None
        return super().run_post_stop_hook()
