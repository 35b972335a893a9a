"""systemd units for the hub node, rendered from ``hubstock.toml`` (``hubstock units``).

Two services, so that restarting the hub never cuts users off:

- ``hubstock-proxy.service``: configurable-http-proxy on the public port, as an
  unprivileged user (``[hub] proxy_user``), with ``CAP_NET_BIND_SERVICE`` only when the
  port is below 1024. Its secrets reach it through systemd credentials
  (``LoadCredential=``), read by systemd as root and given to the proxy alone: the
  proxy's API token from ``state_dir``, and with TLS the key (``[hub] ssl_key``). With
  TLS set, the public port speaks HTTPS only.
- ``hubstock-hub.service``: JupyterHub with the site's ``spawner/jupyterhub_config.py``,
  as root (it submits jobs as the users), with the scheduler's environment
  (``[spawner] environment``, e.g. ``SLURM_CONF``), since batchspawner runs its status
  and cancel commands with the hub's own environment.

:func:`render_units` is pure; ``hubstock units`` writes its result. Check the files with
``systemd-analyze verify``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import SiteError
from ..site import Site

PROXY_UNIT = "hubstock-proxy.service"
HUB_UNIT = "hubstock-hub.service"
#: the names of the systemd credentials the proxy gets (files in $CREDENTIALS_DIRECTORY)
TOKEN_CREDENTIAL = "proxy-auth-token"
KEY_CREDENTIAL = "tls-key"


#: the PATH systemd gives a service that sets none
SYSTEMD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class Executables:
    """Absolute paths of what the units run (systemd wants absolute paths); ``scheduler_dirs``: the
    folders of the scheduler's commands on the hub node (e.g. /opt/pbs/bin), which the hub's
    unit puts first on its PATH (a service reads no /etc/profile.d)."""

    jupyterhub: str
    proxy: str
    sh: str = "/bin/sh"
    scheduler_dirs: tuple[str, ...] = ()


def scheduler_programs(site: Site) -> list[str]:
    """The programs the hub runs for its scheduler (submit, query, cancel), as the site's settings
    over the spawners' defaults give them (:func:`hubstock.batchjob.job_commands`): each command's
    first word; none for the local spawners."""
    from ..batchjob import job_commands

    if site.settings.spawner.scheduler not in ("slurm", "pbs", "torque"):
        return []
    c = job_commands(site)
    commands = (c.submit, c.query, c.cancel, c.force_cancel)
    return list(dict.fromkeys(shlex.split(cmd)[0] for cmd in commands if cmd.strip()))


def state_dir(site: Site) -> Path:
    hub = site.settings.hub
    return hub.state_dir if hub.state_dir.is_absolute() else site.dir / hub.state_dir


def proxy_command(site: Site, exe: Executables, credentials: str = "$CREDENTIALS_DIRECTORY") -> str:
    """The proxy's shell command line (for ``sh -c``): what the proxy unit runs.

    ``credentials`` is where the token and the TLS key are (systemd's credentials folder).
    """
    hub = site.settings.hub
    target_ip = "127.0.0.1" if hub.hub_ip in ("0.0.0.0", "", "::") else hub.hub_ip
    target = f"http://{target_ip}:{hub.hub_port}"
    args = [
        exe.proxy,
        "--ip",
        hub.ip,
        "--port",
        str(hub.port),
        "--api-ip",
        hub.proxy_api_ip,
        "--api-port",
        str(hub.proxy_api_port),
        "--default-target",
        target,
        "--error-target",
        f"{target}/hub/error",
    ]
    cmd = shlex.join(args)
    if hub.ssl_cert and hub.ssl_key:
        cmd += f' --ssl-key "{credentials}/{KEY_CREDENTIAL}" --ssl-cert {shlex.quote(str(hub.ssl_cert))}'
    token = f'CONFIGPROXY_AUTH_TOKEN="$(cat "{credentials}/{TOKEN_CREDENTIAL}")"'
    return f"{token} exec {cmd}"


def _exec_line(sh: str, command: str) -> str:
    """``ExecStart=sh -c '<command>'`` as systemd reads it.

    systemd expands ``$VAR`` and ``%x`` itself: ``$$`` and ``%%`` pass them on to the shell.
    It accepts a quoted word only as a whole, so the command may not hold a single quote.
    """
    if "'" in command:
        raise SiteError(
            f"hubstock.toml: a path in the proxy's command line holds a single quote ({command!r}); "
            "rename it: systemd cannot quote it."
        )
    return f"ExecStart={sh} -c '{command.replace('$', '$$').replace('%', '%%')}'"


def render_proxy_unit(site: Site, exe: Executables) -> str:
    hub = site.settings.hub
    state = state_dir(site)
    lines = [
        f"# {PROXY_UNIT}: rendered by `hubstock units` from {site.dir / 'hubstock.toml'}; do not edit,",
        "# edit hubstock.toml and render again. The proxy runs on its own, so a hub restart keeps users on.",
        "[Unit]",
        "Description=JupyterHub's proxy (configurable-http-proxy) for hubstock",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        # no Group=: the user's own primary group (Debian's nobody has none of that name: nogroup)
        f"User={hub.proxy_user}",
        f"LoadCredential={TOKEN_CREDENTIAL}:{state / 'proxy_auth_token'}",
    ]
    if hub.ssl_cert and hub.ssl_key:
        lines.append(f"LoadCredential={KEY_CREDENTIAL}:{hub.ssl_key}")
    lines.append(_exec_line(exe.sh, proxy_command(site, exe)))
    if hub.port < 1024:
        lines += ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    else:
        # no capability at all: it may then run in a user namespace of its own too
        lines += ["CapabilityBoundingSet=", "PrivateUsers=yes"]
    lines += [
        *PROXY_SANDBOX,
        "Restart=always",
        "RestartSec=2",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


#: what both units run under: a private /tmp and devices, no kernel knobs, clock or hostname,
#: no new namespaces, realtime, set-id files or foreign system call ABIs, and only IP, Unix and
#: netlink sockets (netlink: getaddrinfo with AI_ADDRCONFIG)
SANDBOX = (
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
)

#: the proxy's (``systemd-analyze security``: see the README): it reads its token and key
#: (credentials), listens and forwards, nothing else; not ``MemoryDenyWriteExecute``, which
#: node's JIT compiler cannot run under
PROXY_SANDBOX = (
    *SANDBOX,
    "NoNewPrivileges=yes",
    "DevicePolicy=closed",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "ProtectProc=invisible",
    "RemoveIPC=yes",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged",
    # a call outside the filter fails with EPERM instead of killing the proxy: node calls one at
    # start (without this, systemd's first start of the unit ended in SIGSYS, restarted every 2 s)
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
)

#: the hub's: what a hub that logs users in with PAM and submits their jobs as them still runs
#: under. It stays root (PAM reads /etc/shadow, runuser switches to the
#: user, the records are chowned to the admin), may gain privileges (PBS's qsub authenticates
#: through the setuid pbs_iff: no NoNewPrivileges), and sees the homes (it reads the end of a
#: failed job's output there; pam_mkhomedir may create them).
HUB_SANDBOX = (
    *SANDBOX,
    "ProtectSystem=full",
    # root, but only with what it uses: switching to users (runuser, PAM), reading /etc/shadow
    # and users' files, handing records to the admin, signalling servers, PAM's audit and limits,
    # PBS's pbs_iff binding a reserved port
    "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE "
    "CAP_DAC_READ_SEARCH CAP_KILL CAP_AUDIT_WRITE CAP_SYS_RESOURCE CAP_NET_BIND_SERVICE",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
)


def render_hub_unit(site: Site, exe: Executables) -> str:
    hub = site.settings.hub
    config = site.dir / "spawner" / "jupyterhub_config.py"
    env = {"HUBSTOCK_SITE": str(site.dir), **site.settings.spawner.environment}
    lines = [
        f"# {HUB_UNIT}: rendered by `hubstock units` from {site.dir / 'hubstock.toml'}; do not edit,",
        "# edit hubstock.toml and render again. Runs as root: it submits jobs as the users.",
        "[Unit]",
        "Description=JupyterHub for hubstock",
        "After=network-online.target",
        "Wants=network-online.target",
    ]
    if hub.proxy_external:
        lines += [f"After={PROXY_UNIT}", f"Wants={PROXY_UNIT}"]
    # the root is on a shared filesystem: the hub starts once it is mounted (and stops before it
    # is unmounted), never on an empty mount point
    lines.append(f"RequiresMountsFor={_unit_path(site.root)} {_unit_path(site.dir)}")
    lines += ["", "[Service]", "User=root", f"WorkingDirectory={site.dir}"]
    extra = [d for d in dict.fromkeys(exe.scheduler_dirs) if d not in SYSTEMD_PATH]
    if extra:  # the scheduler's status and cancel commands run with the hub's own PATH
        env = {"PATH": ":".join((*extra, *SYSTEMD_PATH)), **env}
    lines += [f"Environment={shlex.quote(f'{k}={v}')}" for k, v in env.items()]
    lines += [
        # --upgrade-db: a new JupyterHub upgrades its database on start (a SQLite one is backed up first)
        f"ExecStart={exe.jupyterhub} -f {config} --upgrade-db",
        *HUB_SANDBOX,
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _unit_path(path: object) -> str:
    """A path in a unit's space-separated list (systemd's C-style escape for a space)."""
    return str(path).replace("\\", "\\\\").replace(" ", "\\x20")


def render_units(site: Site, exe: Executables) -> dict[str, str]:
    """The unit files' names and texts (the proxy's only when it runs on its own)."""
    units = {HUB_UNIT: render_hub_unit(site, exe)}
    if site.settings.hub.proxy_external:
        units[PROXY_UNIT] = render_proxy_unit(site, exe)
    return units
