"""The site: its repository (``hubstock.toml``, ``envs/``, ``kernels/``...) and its settings.

``hubstock.toml`` is a pydantic model that forbids unknown keys, so a typo is an
error naming the key. Paths are resolved when a site is loaded, never at import.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import SiteError
from .limits import Limits

SETTINGS_FILE = "hubstock.toml"
#: where the shared root goes when nothing else says (git-ignored in the site repo)
EMBEDDED_ROOT = ".hubstock-root"
KNOWN_PLATFORMS = (
    "linux-64",
    "linux-aarch64",
    "linux-ppc64le",
    "osx-64",
    "osx-arm64",
    "win-64",
)
#: the files that make a folder of envs/ an environment: its kind's settings, or a conda spec
ENV_SPEC_FILES = ("env.toml", "environment.yml")
ENV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: the waits (seconds) between two checks of a starting server: quick first, then each next one; the last repeats
PollSchedule = Annotated[
    tuple[Annotated[float, Field(ge=0.01, le=60)], ...], Field(min_length=1, max_length=20)
]
DEFAULT_STARTUP_POLL: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VirtualPackages(_Model):
    """The virtual packages of the *compute nodes*, used when solving.

    The locking machine's own glibc or GPU driver do not matter: a lock must fit
    the nodes where the servers and kernels run.
    """

    glibc: str = Field("2.28", description="glibc version of the compute nodes, e.g. '2.28'")
    linux: str = Field("5.10", description="Linux kernel version of the compute nodes")
    cuda: str | None = Field(
        None,
        description="highest CUDA version the nodes' driver supports, e.g. '12.4'; "
        "unset when the nodes have no NVIDIA GPU",
    )

    @field_validator("glibc", "linux", "cuda")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None and not _VERSION_RE.match(v):
            raise ValueError(f"{v!r} is not a version like '2.28'")
        return v


class ServerSettings(_Model):
    """The single-user server environment and its package policy."""

    env: str = Field("server", description="the env that runs jupyterhub-singleuser, e.g. 'server'")
    required: list[str] = Field(
        default_factory=lambda: ["jupyterlab", "batchspawner"],
        description="packages the server env must contain (conda or pip names)",
    )
    forbidden: list[str] = Field(
        default_factory=lambda: ["nbgrader"], description="packages the server env must not contain"
    )


class PublishSettings(_Model):
    """How kernels are published."""

    default_kernel: str | None = Field(
        None, description="kernel opened by default, e.g. 'python'; unset: the first stock kernel"
    )
    keep_previous_builds: int = Field(
        1,
        ge=0,
        le=10,
        description="builds a kernel ran on before that stay published under pinned names, "
        "so old notebooks still run where they were written",
    )
    smoke_timeout: float = Field(
        120, gt=0, description="seconds a kernel may take to start and run its check"
    )
    restricted_note: str | None = Field(
        None,
        max_length=500,
        description="what the stock page tells a user outside the groups of a kernel for some groups "
        "only, e.g. 'Licensed software: ask research-computing@example.edu for access'; unset: such "
        "kernels are not shown to them at all",
    )


class GcSettings(_Model):
    """What ``hubstock gc`` keeps."""

    keep: int = Field(3, ge=1, description="published generations to keep, newest first")
    session_max_age_hours: float = Field(
        168, gt=0, description="a session record older than this no longer protects what it uses"
    )


class SpawnerSettings(Limits):
    """How user servers are started: the scheduler and its commands, and (from :class:`~hubstock.limits.Limits`)
    the site's queues (``[[spawner.queues]]``), defaults (``[spawner.defaults]``) and the
    account, reservation, qos, constraint and directive lines of every job."""

    scheduler: Literal["slurm", "pbs", "torque", "local", "simple"] = Field(
        "slurm",
        description="'slurm'; 'pbs' (PBS Pro / OpenPBS); 'torque' (Torque-compatible commands, such as "
        "Slurm's slurm-wlm-torque wrappers); 'local' (no scheduler: the hub, running as root, starts each "
        "server on the hub node as its user, for trials); 'simple' (no scheduler and no users: every server "
        "runs as the hub's own non-root user on the hub node, with no isolation, for demos only)",
    )
    exec_prefix: str = Field(
        "sudo -E -u {username}", description="how the hub runs the submit commands as the user"
    )
    submit_cmd: str | None = Field(None, description="override the submit command, e.g. 'qsub'")
    prologue: str = Field("", description="shell lines run in the job before the server starts")
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="extra environment for the job, e.g. {SLURM_CONF = '/etc/slurm/slurm.conf'}",
    )
    start_timeout: int = Field(300, gt=0, description="seconds a job may take to start, queueing included")
    http_timeout: int = Field(120, gt=0, description="seconds the server may take to answer once running")
    srun: str = Field(
        "srun", description="Slurm only: prefix that runs the server as a job step ('' for none)"
    )
    status_interval: float = Field(
        10,
        ge=1,
        le=300,
        description="seconds between two status queries of all the hub's jobs (one squeue or qstat for "
        "every server); a job that ended is noticed within one interval, e.g. 10",
    )
    submit_timeout: float = Field(
        10,
        ge=1,
        le=600,
        description="seconds the scheduler may take to accept a job; longer, and the user is told it is "
        "not answering (a job it accepts later is cancelled), e.g. 10",
    )
    startup_poll: PollSchedule = Field(
        DEFAULT_STARTUP_POLL,
        description="seconds between two checks of a starting server (its job's state, then its first HTTP "
        "answer): the first values apply first, the last one repeats, e.g. [0.05, 0.1, 0.15, 0.2, 0.25]; "
        "however many servers start, the hub queries the scheduler at most twice a second",
    )


class StockPageSettings(_Model):
    """The "Stock environments" page: a JupyterHub service that shows users what the stock holds."""

    enabled: bool = Field(
        True, description="serve the page (in the hub's Services menu) to every logged-in user"
    )
    name: str = Field(
        "stock",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="the service's name: the page is at /services/<name>/",
    )
    display_name: str = Field("Stock environments", description="its name in the hub's Services menu")
    user: str = Field(
        "nobody",
        description="the unprivileged user the page runs as when the hub runs as root (it reads only the root)",
    )
    port: int = Field(
        0, ge=0, lt=65536, description="its port on 127.0.0.1, behind the proxy; 0: a free one at hub start"
    )


class HubSettings(_Model):
    """The hub node: networking, security, login and state."""

    ip: str = Field("0.0.0.0", description="address the proxy listens on for users")
    port: int = Field(8000, gt=0, lt=65536, description="port the proxy listens on for users")
    hub_ip: str = Field("0.0.0.0", description="address the hub's API listens on (servers reach it)")
    hub_port: int = Field(8081, gt=0, lt=65536)
    hub_connect_ip: str = Field(
        "", description="address compute nodes use to reach the hub, e.g. the hub node's cluster-network name"
    )
    proxy_api_ip: str = "127.0.0.1"
    proxy_api_port: int = Field(8001, gt=0, lt=65536)
    proxy_command: list[str] = Field(default_factory=lambda: ["configurable-http-proxy"])
    proxy_external: bool = Field(
        True,
        description="the proxy runs as its own service (`hubstock units` renders it), so a hub restart "
        "keeps users connected to their servers; false: the hub starts its own proxy, which stops "
        "with it (a demo, or a hub run by hand without the proxy's service)",
    )
    proxy_user: str = Field(
        "hubstock-proxy",
        description="the unprivileged user the proxy's service runs as (`hubstock units`), e.g. "
        "'hubstock-proxy' (create it with `useradd --system --no-create-home hubstock-proxy`)",
    )
    state_dir: Path = Field(
        Path("/var/lib/hubstock-hub"),
        description="the hub's private state: database, cookie secret, proxy token (mode 0700)",
    )
    ssl_cert: Path | None = Field(
        None, description="TLS certificate for the public port, e.g. /etc/ssl/hub.pem"
    )
    ssl_key: Path | None = Field(None, description="its key (mode 0600), e.g. /etc/ssl/private/hub.key")
    db_url: str | None = Field(None, description="database URL (default: SQLite in state_dir)")
    authenticator: Literal["pam", "shared-password"] = Field(
        "pam",
        description="'pam' (the cluster's passwords); 'shared-password' (one password in state_dir, for demos)",
    )
    allowed_group: str | None = Field(None, description="only members of this Unix group may log in")
    admin_users: list[str] = Field(default_factory=list)
    idle_timeout: int = Field(3600, ge=0, description="seconds before an idle server is stopped; 0: never")
    slow_spawn_timeout: float = Field(
        10,
        ge=0,
        description="seconds a spawn request waits before showing the progress page; refused "
        "options are answered within it (so a REST client gets its 400), queued jobs then show their progress",
    )
    default_url: str = "/lab"
    stock_page: StockPageSettings = Field(default_factory=StockPageSettings)


class DoctorSettings(_Model):
    """``hubstock doctor``: the account and queue of its probe job on a compute node."""

    user: str | None = Field(
        None,
        description="the test account the probe job runs as (its home must be on the shared filesystem), "
        "e.g. 'hubtest'; unset: only `hubstock doctor --as-user USER` submits a probe job",
    )
    queue: str | None = Field(
        None, description="the queue the probe job runs in (default: the default queue)"
    )
    timeout: float = Field(
        180,
        gt=0,
        description="seconds the probe job may take from submission to its report, queueing included",
    )


class ModulesSettings(_Model):
    """Lmod: where its shell init is and which module trees the site adds (``module use``)."""

    init: str | None = Field(
        None,
        description="Lmod's bash init, e.g. '/usr/share/lmod/lmod/init/bash'; unset: found "
        "($LMOD_PKG, then Debian's and the usual places)",
    )
    use: list[str] = Field(
        default_factory=list,
        description="module trees to `module use` before loading, e.g. ['/software/modules']; relative "
        "paths are relative to the site. They must be at the same path on the compute nodes",
    )


class PersonalSettings(_Model):
    """Users' own environments (``hubstock mine``): a few packages on top of a stock environment,
    locked and built as the user's batch job, into the user's own folder."""

    enabled: bool = Field(True, description="whether users may make their own environments")
    dir: str = Field(
        "{home}/.hubstock/envs",
        description="where a user's environments go, the same path on every node; '{home}' is the "
        "user's home and '{user}' the user name, e.g. '/scratch/{user}/hubstock-envs'",
    )
    max_envs: int = Field(5, ge=1, le=100, description="how many environments a user may have")
    max_size_mb: int = Field(
        2048, ge=1, description="the largest a build may be (its own files, the stock's not counted)"
    )
    max_packages: int = Field(50, ge=1, le=500, description="how many requirements one environment may name")
    allow: list[str] = Field(
        default_factory=list,
        description="when set, the only packages a user may ask for, e.g. ['tabulate', 'humanize']",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="packages no personal environment may contain (beside [server] forbidden), e.g. ['tensorflow']",
    )
    index_url: str | None = Field(
        None,
        description="the package index the builds use, e.g. 'https://pypi.example.edu/simple'; unset: PyPI",
    )
    find_links: list[str] = Field(
        default_factory=list,
        description="folders of wheels (a site wheelhouse on the shared storage) the builds may use, "
        "e.g. ['/software/wheelhouse']",
    )
    no_index: bool = Field(
        False,
        description="use the find_links folders only, never an index: for compute nodes without a way out",
    )
    queue: str | None = Field(None, description="the build job's queue (default: the site's default queue)")
    walltime_minutes: int = Field(30, ge=1, le=24 * 60, description="the build job's walltime at most")
    tools: str | None = Field(
        None,
        description="the Python that runs hubstock (with its admin and hub extras) in the build job, at "
        "the same path on the compute nodes, e.g. '/software/hubstock-tools/bin/python'; unset: the "
        "Python that runs `hubstock mine`",
    )

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        if not v.startswith(("/", "{home}")):
            raise ValueError("must be an absolute path or start with '{home}', e.g. '{home}/.hubstock/envs'")
        if ".." in Path(v).parts:
            raise ValueError("may not contain '..'")
        try:
            v.format(home="h", user="u")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may use only '{home}' and '{user}'") from None
        return v

    def dir_for(self, user: str, home: str) -> Path:
        """The user's folder of personal environments."""
        return Path(self.dir.format(home=home.rstrip("/") or "/", user=user))


class Settings(_Model):
    """The schema of ``hubstock.toml``."""

    root: Path | None = Field(
        None,
        description="shared storage path that holds builds, generations and the package "
        "cache, e.g. '/software/hubstock'; relative paths are relative to the site",
    )
    channels: list[str] = Field(
        default_factory=lambda: ["conda-forge"],
        description="channels used for environments whose spec names none",
    )
    platforms: list[str] = Field(
        default_factory=lambda: ["linux-64"], description="platforms every lock covers"
    )
    mirrors: list[Path] = Field(
        default_factory=list,
        description="folders `hubstock mirror` wrote (relative paths: to the site): a build takes each "
        "package from them, by its sha256, before its locked URL; e.g. ['/mnt/stock-mirror']",
    )
    virtual_packages: VirtualPackages = Field(default_factory=VirtualPackages)
    server: ServerSettings = Field(default_factory=ServerSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    gc: GcSettings = Field(default_factory=GcSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    spawner: SpawnerSettings = Field(default_factory=SpawnerSettings)
    doctor: DoctorSettings = Field(default_factory=DoctorSettings)
    modules: ModulesSettings = Field(default_factory=ModulesSettings)
    personal: PersonalSettings = Field(default_factory=PersonalSettings)

    @field_validator("root", mode="before")
    @classmethod
    def _root(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("may not be empty; remove the key for the default (.hubstock-root in the site)")
        return v

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one platform is needed, e.g. ['linux-64']")
        for p in v:
            if p not in KNOWN_PLATFORMS:
                raise ValueError(f"unknown platform {p!r}; use one of {', '.join(KNOWN_PLATFORMS)}")
        return sorted(set(v), key=v.index)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one channel is needed, e.g. ['conda-forge']")
        return v


def describe_validation_error(source: str, err: ValidationError) -> str:
    """One sentence for the first problem pydantic found in ``source``."""
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key {where!r}; check its spelling (see the README for the keys)."
    msg = e["msg"].removeprefix("Value error, ")
    return f"{source}: {where}: {msg}; fix the value and run again."


def load_settings(path: Path) -> Settings:
    """Read and validate ``hubstock.toml`` (all defaults when it does not exist)."""
    if not path.exists():
        return Settings()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SiteError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as e:
        raise SiteError(f"{path}: not valid TOML ({e}); fix the file.") from None
    except OSError as e:
        raise SiteError(f"{path}: cannot be read ({e.strerror}).") from None
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise SiteError(describe_validation_error(str(path), e)) from None


@dataclass(frozen=True)
class Site:
    """A site repository and the shared root it builds into."""

    dir: Path
    settings: Settings
    root: Path

    @property
    def envs_dir(self) -> Path:
        return self.dir / "envs"

    @property
    def kernels_dir(self) -> Path:
        return self.dir / "kernels"

    @property
    def extensions_dir(self) -> Path:
        return self.dir / "extensions"

    def mirror_dirs(self) -> list[Path]:
        """``mirrors`` as absolute paths (relative ones are the site's)."""
        return [Path(os.path.normpath(self.dir / m)) for m in self.settings.mirrors]

    def module_use(self) -> list[str]:
        """``[modules] use`` as absolute paths (relative ones are the site's)."""
        return [os.path.normpath(self.dir / u) for u in self.settings.modules.use]

    def env_names(self) -> list[str]:
        """Every environment of the site: ``envs/<name>/`` with an ``env.toml`` (its kind and
        interpreter or modules) or a conda ``environment.yml``."""
        if not self.envs_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.envs_dir.iterdir() if any((p / f).is_file() for f in ENV_SPEC_FILES)
        )

    def check_env_names(self, names: list[str]) -> list[str]:
        """``names`` if all exist (all envs when empty), else a :class:`SiteError`."""
        known = self.env_names()
        if not names:
            return known
        for name in names:
            if name not in known:
                have = ", ".join(known) or "none"
                raise SiteError(
                    f"no environment named {name!r}: neither {self.envs_dir / name / 'env.toml'} nor "
                    f"{self.envs_dir / name / 'environment.yml'} exists (the site has: {have})."
                )
        return list(dict.fromkeys(names))


def load_site(
    site_dir: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] | None = None
) -> Site:
    """Load the site at ``site_dir`` (or ``$HUBSTOCK_SITE``, or the current directory).

    The root is, in order: ``root`` (``--root``) and ``$HUBSTOCK_ROOT`` (both relative to the
    working directory), ``root`` in hubstock.toml (relative to the site), and the embedded
    default ``<site>/.hubstock-root``. A root that is empty, the site itself, a file, below a
    file, or on a pseudo-filesystem such as /proc is a :class:`SiteError`.
    """
    sdir = Path(site_dir or os.environ.get("HUBSTOCK_SITE") or os.getcwd()).absolute()
    if not sdir.is_dir():
        raise SiteError(f"site directory {sdir} does not exist; pass --site or set HUBSTOCK_SITE.")
    settings_path = sdir / SETTINGS_FILE
    if not settings_path.exists() and not (sdir / "envs").is_dir():
        raise SiteError(
            f"{sdir} is not a hubstock site (no {SETTINGS_FILE} and no envs/); "
            "run from the site repository or pass --site DIR."
        )
    settings = load_settings(settings_path)
    if root is not None and not os.fspath(root).strip():
        raise SiteError("--root is empty; give the shared root's path, or leave the option out.")
    if root:  # on the command line, or from the environment: relative to the working directory
        root_path, source = Path(os.path.abspath(root)), "--root"
    elif os.environ.get("HUBSTOCK_ROOT", "").strip():
        root_path, source = Path(os.path.abspath(os.environ["HUBSTOCK_ROOT"])), "HUBSTOCK_ROOT"
    elif settings.root is not None:  # in hubstock.toml: relative to the site
        root_path, source = Path(os.path.abspath(sdir / settings.root)), f"{settings_path}: root"
    else:
        root_path, source = sdir / EMBEDDED_ROOT, "the default root"
    _check_root(root_path, sdir, source)
    return Site(dir=sdir, settings=settings, root=root_path)


def _check_root(root: Path, sdir: Path, source: str) -> None:
    """The root may not be the site itself (or hold it), a file, below a file, or on /proc."""
    from .store.root import root_problem

    real, site = Path(os.path.realpath(root)), Path(os.path.realpath(sdir))
    if real == site or site.is_relative_to(real):
        raise SiteError(
            f"{source} is {root}, which is the site repository {'itself' if real == site else 'or holds it'}; "
            f"give the root a folder of its own, e.g. {sdir / EMBEDDED_ROOT} or /software/hubstock."
        )
    problem = root_problem(root)
    if problem:
        raise SiteError(
            f"{source} is {root}, which {problem}; point it at a directory for hubstock's builds."
        )
