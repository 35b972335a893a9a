"""The spawner as the hub makes it: the site's ``spawner/jupyterhub_config.py`` loaded as JupyterHub
loads it, so that what a site sets there (its own ``batch_query_cmd``, a ``req_*`` that hubstock
refuses, a subclass of its own) is what doctor checks and what its probe job uses.

:func:`load_spawner` has the side effects of loading that file (it runs the site's Python, and
``apply_site`` makes the hub's state folder), and so has :func:`site_settings`, which compares the
spawner with the one hubstock.toml alone makes; :func:`spawner_commands` reads it: pure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from traitlets.config import Config, PyFileConfigLoader
from traitlets.utils.importstring import import_item

from ...batchjob import JobCommands
from ...errors import SiteError
from ...site import Site
from .model import Check, fail, ok

CONFIG_FILE = ("spawner", "jupyterhub_config.py")
#: the spawner settings a site's own jupyterhub_config.py may set that the probe job follows
FOLLOWED = (
    "batch_submit_cmd",
    "batch_query_cmd",
    "batch_cancel_cmd",
    "exec_prefix",
    "state_pending_re",
    "state_running_re",
    "batch_script",
    "req_srun",
    "req_prologue",
)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_config(site: Site) -> Config:
    """The configuration JupyterHub gets from the site's ``spawner/jupyterhub_config.py`` (with
    ``HUBSTOCK_SITE`` and ``HUBSTOCK_ROOT`` set to this site and its root, as the units set them)."""
    path = site.dir.joinpath(*CONFIG_FILE)
    if not path.is_file():
        from ..config import apply_site

        c = Config()
        apply_site(c, site.dir, root=str(site.root))
        return c
    with _environ(HUBSTOCK_SITE=str(site.dir), HUBSTOCK_ROOT=str(site.root)):
        try:
            return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()
        except SiteError:
            raise
        except Exception as e:  # the site's own Python: whatever it raises, JupyterHub would not start
            said = " ".join(str(e).split())[:200] or type(e).__name__
            raise SiteError(
                f"{path} does not load ({type(e).__name__}: {said}); JupyterHub would not start with it: fix it."
            ) from None


def load_spawner(site: Site) -> Any:
    """The site's spawner, made from :func:`load_config` as JupyterHub makes it (without a user);
    a :class:`SiteError` as the hub would raise it."""
    c = load_config(site)
    name = c.JupyterHub.get("spawner_class", "")
    try:
        cls = import_item(name) if isinstance(name, str) else name
    except (ImportError, AttributeError) as e:
        raise SiteError(f"c.JupyterHub.spawner_class = {name!r} cannot be imported ({e}); fix it.") from None
    try:
        return cls(config=c)
    except SiteError:
        raise
    except Exception as e:
        said = " ".join(str(e).split())[:200]
        raise SiteError(f"{name} cannot be made from the site's configuration ({said}); fix it.") from None


def spawner_commands(spawner: Any) -> JobCommands:
    """How that spawner submits, queries and cancels a job, and its batch template."""
    slurm = spawner.scheduler == "slurm"
    return JobCommands(
        scheduler=spawner.scheduler,
        exec_prefix=spawner.exec_prefix,
        submit=spawner.batch_submit_cmd,
        query=spawner.batch_query_cmd,
        cancel=spawner.batch_cancel_cmd,
        pending_re=spawner.state_pending_re,
        running_re=spawner.state_running_re,
        template=spawner.batch_script,
        srun=spawner.req_srun if slurm else "",
        prologue=spawner.req_prologue,
        force_cancel=getattr(spawner, "batch_force_cancel_cmd", "") if spawner.scheduler == "pbs" else "",
    )


def site_settings(spawner: Any, site: Site) -> list[str]:
    """The followed settings whose value differs from what hubstock.toml alone gives the same spawner
    class (the site's jupyterhub_config.py, or its subclass, set them): ``batch_query_cmd = '...'``."""
    from ..config import apply_site

    base = Config()
    apply_site(base, site.dir, root=str(site.root))
    plain = type(spawner)(config=base)
    return [
        f"{n} = {getattr(spawner, n)!r}"
        for n in FOLLOWED
        if spawner.has_trait(n) and getattr(spawner, n) != getattr(plain, n)
    ]


def check_spawner(site: Site) -> tuple[Check, Any | None]:
    """``spawner``: the site's jupyterhub_config.py loads and makes its spawner; the spawner, or None."""
    try:
        spawner = load_spawner(site)
    except SiteError as e:
        return fail("spawner", str(e), "fix the setting it names, then run doctor again."), None
    try:
        own = site_settings(spawner, site)
    except SiteError:  # hubstock.toml alone does not make a spawner: the site's config did, so it is its own
        own = []
    where = "/".join(CONFIG_FILE)
    detail = f"{type(spawner).__name__} as {where} makes it"
    detail += f"; the site's own: {', '.join(own)}" if own else ""
    return ok("spawner", detail), spawner
