"""Apply a site's ``hubstock.toml`` to JupyterHub's configuration object.

The site's ``spawner/jupyterhub_config.py`` is just::

    from hubstock.hub.config import apply_site
    site = apply_site(get_config(), site_dir=...)

``apply_site`` sets JupyterHub's ``pre_spawn_hook`` and ``post_stop_hook`` to
hubstock's own; a site adds its steps after it, with ``chain_hooks``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from ..errors import SiteError
from ..limits import LimitsError, Scheduler
from ..personal.job import PASSED_ON
from ..site import SETTINGS_FILE, Site, load_site
from ..store.cancels import cancels_path
from ..store.fs import now_iso
from ..store.hubinfo import note_hub_versions, version_here
from ..store.records import HubVersions
from ..store.root import Root
from .batch import check_extras
from .hooks import PostStopHook, PreSpawnHook
from .reaper import REAPER
from .units import state_dir

log = logging.getLogger(__name__)

SPAWNER_CLASSES = {
    "slurm": "hubstock.hub.spawner.SlurmSpawner",
    "pbs": "hubstock.hub.spawner.PBSSpawner",
    "torque": "hubstock.hub.spawner.PBSSpawner",
    "local": "jupyterhub.spawner.LocalProcessSpawner",
    "simple": "jupyterhub.spawner.SimpleLocalProcessSpawner",
}


def ensure_secret_file(path: Path, nbytes: int = 32) -> str:
    """The secret in ``path``, created (mode 0600) if missing; refused if others can read it."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SiteError(f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`.")
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def ensure_state_dir(site: Site) -> Path:
    """The hub's private state folder (database, cookie secret, proxy token), made mode 0700."""
    state = state_dir(site)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    return state


def apply_site(c: Any, site_dir: str | os.PathLike[str] | None = None, root: str | None = None) -> Site:
    """Configure the hub from the site: networking, security, login, spawner, hooks, culler."""
    site = load_site(site_dir, root)
    hub = site.settings.hub
    state = ensure_state_dir(site)
    _resume_cancels(state)
    _note_versions(site)

    # networking
    c.JupyterHub.ip = hub.ip
    c.JupyterHub.port = hub.port
    c.JupyterHub.hub_ip = hub.hub_ip
    c.JupyterHub.hub_port = hub.hub_port
    if hub.hub_connect_ip:
        c.JupyterHub.hub_connect_ip = hub.hub_connect_ip
    c.ConfigurableHTTPProxy.api_url = f"http://{hub.proxy_api_ip}:{hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.command = list(hub.proxy_command)
    c.ConfigurableHTTPProxy.should_start = not hub.proxy_external
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")

    # security: secrets live in files with mode 0600, never in the repository or a batch script
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.auth_token = ensure_secret_file(state / "proxy_auth_token")
    if hub.ssl_cert or hub.ssl_key:
        if not (hub.ssl_cert and hub.ssl_key):
            raise SiteError("hubstock.toml: [hub] ssl_cert and ssl_key go together; set both or neither.")
        key_mode = stat.S_IMODE(hub.ssl_key.stat().st_mode) if hub.ssl_key.exists() else 0
        if not hub.ssl_key.exists() or key_mode & 0o077:
            raise SiteError(f"[hub] ssl_key {hub.ssl_key} must exist with mode 0600; run `chmod 600` on it.")
        c.JupyterHub.ssl_cert = str(hub.ssl_cert)
        c.JupyterHub.ssl_key = str(hub.ssl_key)
    c.JupyterHub.db_url = hub.db_url or f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": hub.slow_spawn_timeout}
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    # servers are batch jobs that outlive the hub: a restart (an upgrade, a crash) re-attaches to
    # them and never cancels them; stopping servers is something an admin does on purpose
    c.JupyterHub.cleanup_servers = False

    # login
    if hub.authenticator == "pam":
        c.JupyterHub.authenticator_class = "pam"
        if hub.allowed_group:
            c.PAMAuthenticator.allowed_groups = {hub.allowed_group}
        else:
            c.Authenticator.allow_all = True  # every user of the cluster
    else:
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = ensure_secret_file(state / "demo_password", 9)
        c.Authenticator.allow_all = True
    if hub.admin_users:
        c.Authenticator.admin_users = set(hub.admin_users)

    _apply_spawner(c, site, state)
    _apply_hooks(c, site)
    if hub.idle_timeout:
        culler = [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={hub.idle_timeout}"]
        c.JupyterHub.services.append({"name": "idle-culler", "command": culler})
        c.JupyterHub.load_roles.append(
            {
                "name": "idle-culler",
                "services": ["idle-culler"],
                "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            }
        )
    _apply_stock_page(c, site)
    return site


def _apply_spawner(c: Any, site: Site, state: Path) -> None:
    sp = site.settings.spawner
    hub = site.settings.hub
    c.JupyterHub.spawner_class = SPAWNER_CLASSES[sp.scheduler]
    c.Spawner.default_url = hub.default_url
    c.Spawner.environment = dict(sp.environment)
    c.Spawner.start_timeout = sp.start_timeout
    c.Spawner.http_timeout = sp.http_timeout
    if sp.scheduler == "simple":
        # every server runs as the hub's own user: never root (that would give every login root)
        if os.geteuid() == 0:
            raise SiteError(
                "hubstock.toml: [spawner] scheduler 'simple' runs every server as the hub's own user, "
                "so the hub must not run as root; use 'local', 'slurm', 'pbs' or 'torque' as root."
            )
        c.SimpleLocalProcessSpawner.home_dir_template = str(state / "homes" / "{username}")
    if sp.scheduler in ("local", "simple"):
        return
    cls = c.SlurmSpawner if sp.scheduler == "slurm" else c.PBSSpawner
    template = site.dir / "spawner" / ("slurm.sh" if sp.scheduler == "slurm" else "pbs.sh")
    if template.exists():
        cls.batch_script = template.read_text()
    if sp.scheduler != "slurm":
        cls.flavour = "pro" if sp.scheduler == "pbs" else "torque"
    else:
        cls.req_srun = sp.srun
    cls.exec_prefix = sp.exec_prefix
    if sp.submit_cmd:
        cls.batch_submit_cmd = sp.submit_cmd.replace("{site}", str(site.dir))
    cls.req_prologue = sp.prologue
    # the limits were checked when hubstock.toml was loaded; the job extras must also fit the scheduler
    scheduler: Scheduler = (
        "slurm" if sp.scheduler == "slurm" else "pbs" if sp.scheduler == "pbs" else "torque"
    )
    try:
        check_extras(sp, scheduler)
    except LimitsError as e:
        raise SiteError(f"{site.dir / SETTINGS_FILE}: {e}") from None
    cls.queues = [q.model_dump(exclude_none=True) for q in sp.queues]
    cls.default_queue = sp.default_queue
    defaults = sp.defaults.model_dump(exclude={"queue"})
    cls.default_cpus = defaults["cpus"]
    cls.default_memory = defaults["memory"]
    cls.default_gpus = defaults["gpus"]
    cls.default_walltime = defaults["walltime"]
    for key in ("account", "reservation", "qos", "constraint"):
        cls[key] = getattr(sp, key) or ""
    cls.directives = list(sp.directives or ())
    cls.status_interval = float(sp.status_interval)
    cls.submit_timeout = float(sp.submit_timeout)
    cls.startup_poll = list(sp.startup_poll)
    cls.hubstock_root = str(site.root)  # a refused request is audited there
    # the "server not running" page says why the user's last server ended
    ours = str(Path(__file__).with_name("templates") / "stopped")
    paths = c.JupyterHub.template_paths
    if isinstance(paths, list | tuple):
        c.JupyterHub.template_paths = [ours, *paths]
    else:
        paths.prepend([ours])


def _resume_cancels(state: Path) -> None:
    """The jobs an earlier hub still had to cancel (:data:`~.reaper.REAPER`, kept in ``state``):
    taken up now. JupyterHub loads its configuration with its event loop running; a caller
    without one (a test, ``hubstock doctor``) only sets where the list is kept."""
    path = cancels_path(state)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        REAPER.path = path
        return
    REAPER.resume(path)


def this_hub_versions() -> HubVersions:
    """What is installed beside this hubstock (on the hub node: the hub's) that a server build
    must agree with."""
    found = {dist: version_here(dist) for dist in ("jupyterhub", "batchspawner", "hubstock")}
    versions = {dist: v for dist, v in found.items() if v is not None}
    return HubVersions(versions=versions, host=socket.gethostname(), written=now_iso())


def _note_versions(site: Site) -> None:
    """Tell the machines that publish what this hub runs (:mod:`hubstock.store.hubinfo`), when
    JupyterHub itself loads the configuration (its event loop running; not for a test or the
    doctor). A root that cannot take it (not mounted yet, read-only) only costs a log line."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    try:
        note_hub_versions(Root(site.root), this_hub_versions())
    except OSError as e:
        log.warning("hubstock: could not record the hub's versions on the root %s: %s", site.root, e)


def _apply_hooks(c: Any, site: Site) -> None:
    """hubstock's own hooks; a site adds its steps after ``apply_site`` (see ``chain_hooks``)."""
    personal = site.settings.personal
    c.Spawner.pre_spawn_hook = PreSpawnHook(site.root, personal.dir if personal.enabled else None)
    c.Spawner.post_stop_hook = PostStopHook(site.root)


def _apply_stock_page(c: Any, site: Site) -> None:
    """The "Stock environments" page (:mod:`hubstock.hub.stock_page`): a managed service behind the
    proxy at ``/services/<name>/``, listed in the Services menu under its display name, that every
    logged-in user may open. It reads only the root, as ``[hub.stock_page] user`` when the hub is root."""
    sp = site.settings.hub.stock_page
    if not sp.enabled:
        return
    port = sp.port or _free_port()
    c.JupyterHub.services.append(
        {
            "name": sp.name,
            "url": f"http://127.0.0.1:{port}",
            "command": [sys.executable, "-m", "hubstock.hub.stock_page"],
            "environment": {
                "HUBSTOCK_ROOT": str(site.root),
                "HUBSTOCK_SITE": str(site.dir),  # "My environments": [spawner] and [personal]
                "HUBSTOCK_STOCK_PAGE_USER": sp.user,
                # and the hub node's way to the index (its proxies and certificate authorities),
                # which the users' build jobs take: JupyterHub gives its services none of its own
                **{k: os.environ[k] for k in PASSED_ON if k in os.environ},
                **(
                    {"HUBSTOCK_RESTRICTED_NOTE": note}
                    if (note := site.settings.publish.restricted_note)
                    else {}
                ),
            },
            "display": True,  # in the Services menu (of those who may access it)
            "oauth_no_confirm": True,  # part of the hub: no "authorize this service?" page
            "oauth_client_allowed_scopes": [],  # its tokens identify the user, and can do nothing else
            "info": {"display_name": sp.display_name},
        }
    )
    scope = f"access:services!service={sp.name}"
    scopes = c.JupyterHub.extra_user_scopes  # a set, or a lazy value when nothing set it yet
    if isinstance(scopes, list | tuple):
        c.JupyterHub.extra_user_scopes = {*scopes, scope}
    else:
        scopes.add(scope)
    # the Services menu shows info.display_name (JupyterHub's own page.html shows the bare name)
    ours = str(Path(__file__).with_name("templates") / "jupyterhub")
    paths = c.JupyterHub.template_paths
    if isinstance(paths, list | tuple):
        c.JupyterHub.template_paths = [ours, *paths]
    else:
        paths.prepend([ours])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
