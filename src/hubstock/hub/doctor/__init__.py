"""``hubstock doctor``: the site checked end to end, on the hub node and from a compute node.

On the hub node: the shared root (there, the admin's, closed to users, its lock free, its
current generation whole), the hub's settings (ports, private state, secrets, TLS, PAM, the
allowed group), the scheduler and its queues against the spawn form, and the hub's jupyterhub
and batchspawner against the published server build's, the site interpreters and Lmod modules
the generation's venv and module builds need. From a compute node: a short probe job, submitted
the way the hub submits servers, as a test account, that reports what the node sees (the same
interpreters and modules included).

Each check is a small function returning :class:`~.model.Check` values (``ok``, ``warn`` or
``FAIL``, with one sentence of fix); :func:`run_doctor` runs them in order. This package runs
on the hub node, so it reads the root only through :mod:`hubstock.store` and never imports the
admin wing.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...batchjob import JobCommands, job_commands, render_probe_script
from ...errors import SiteError
from ...site import Site
from ...store.access import may_use, user_groups
from ...store.builds import read_provenance
from ...store.generations import Generation
from ...store.hubinfo import installed_version, version_here
from ...store.records import GenerationManifest, RecordError
from ...store.root import Root
from ..hooks import BASE_PATH, restricted_kernels
from ..units import state_dir
from .disk import check_space
from .effective import check_spawner, spawner_commands
from .envs import (
    GenerationEnvs,
    check_interpreters_here,
    check_modules_here,
    probe_args,
    read_generation_envs,
)
from .hubcheck import (
    check_hub_running,
    check_login,
    check_ports,
    check_secrets,
    check_state_dir,
    check_tls,
    probe_hub,
    url_host,
)
from .job import ProbeJob, ProbePlan
from .jobscript import probe_options, probe_shell
from .model import Check, exit_code, fail, format_check, ok, warn
from .node import NodeExpect, node_checks
from .rootcheck import (
    check_generation,
    check_lock,
    check_root,
    compare_versions,
)
from .scheduler import check_scheduler, run_command

__all__ = ["Check", "DoctorOptions", "exit_code", "format_check", "run_doctor"]

BATCH = ("slurm", "pbs", "torque")


@dataclass(frozen=True)
class DoctorOptions:
    """What ``hubstock doctor`` was asked: the probe job's account and queue, whether to submit it,
    and how long it may take (None: the site's ``[doctor]`` settings)."""

    as_user: str | None = None
    queue: str | None = None
    job: bool = True
    timeout: float | None = None


def run_doctor(
    site: Site,
    opts: DoctorOptions,
    emit: Callable[[Check], None] = lambda _c: None,
    log: Callable[[str], None] = lambda _m: None,
) -> list[Check]:
    """Every check, in order; ``emit`` gets each as soon as it is known, ``log`` what the probe does."""
    checks: list[Check] = []

    def add(*found: Check) -> None:
        for c in found:
            checks.append(c)
            emit(c)

    sp, hub = site.settings.spawner, site.settings.hub
    queue = opts.queue or site.settings.doctor.queue or sp.default_queue
    if queue not in [q.name for q in sp.queues]:
        names = ", ".join(q.name for q in sp.queues)
        raise SiteError(f"queue {queue!r} is not one of the site's queues ({names}); name one of them.")

    root = Root(site.root)
    root_checks = check_root(root)
    add(*root_checks)
    gen: Generation | None = None
    manifest: GenerationManifest | None = None
    envs = GenerationEnvs()
    modules = site.settings.modules
    if root_checks[0].status != "FAIL":
        add(check_lock(root))
        gen_check, gen, manifest = check_generation(root)
        add(gen_check)
        if gen is not None and manifest is not None:
            envs = read_generation_envs(root, gen, manifest)
            add(*check_interpreters_here(envs))
            add(*check_modules_here(envs, modules.init, site.module_use()))
    server = manifest.server if manifest else None
    if server is not None:
        prefix = Path(server.prefix)
        for dist in ("jupyterhub", *(["batchspawner"] if sp.scheduler in BATCH else [])):
            add(compare_versions(dist, version_here(dist), installed_version(prefix, dist), server.env))

    state = state_dir(site)
    running = probe_hub(hub)
    add(check_hub_running(running))
    add(*check_ports(hub, state))
    add(check_state_dir(state), check_secrets(state, hub.authenticator == "shared-password"), check_tls(hub))
    add(*check_space(state, root.path))
    add(*check_login(hub))

    if sp.scheduler not in BATCH:
        add(ok("scheduler", f"none: servers run on the hub node ([spawner] scheduler = {sp.scheduler!r})"))
        return checks
    spawner_check, spawner = check_spawner(site)
    add(spawner_check)
    env = {**os.environ, **sp.environment}
    add(
        *check_scheduler(
            sp.scheduler, sp.queues, run_command(env, timeout=15), env, run_command(env, timeout=5)
        )
    )

    if not opts.job:
        return checks
    down = [c for c in checks if c.name in ("scheduler", "scheduler.nodes") and c.status == "FAIL"]
    if down:  # a probe job would wait for nothing, and could not be removed
        add(
            warn(
                "node.job", f"not run: see the {down[0].name} check", "fix that first, then run doctor again."
            )
        )
        return checks
    user = opts.as_user or site.settings.doctor.user
    if not user:
        add(
            warn(
                "node.job",
                "no test account to run the probe job as",
                "set [doctor] user in hubstock.toml, or pass --as-user USER.",
            )
        )
        return checks
    if gen is None or manifest is None or server is None:
        add(
            warn(
                "node.job",
                "not run: nothing usable is published",
                "publish first (see the generation check).",
            )
        )
        return checks
    cmds = spawner_commands(spawner) if spawner is not None else job_commands(site)
    plan_or_check = _plan(site, opts, user, queue, gen, manifest, envs, running.running, cmds, log)
    if isinstance(plan_or_check, Check):
        add(plan_or_check)
        return checks
    plan, expect = plan_or_check
    result = ProbeJob(plan).run()
    add(result.check)
    if result.report is not None:
        add(*node_checks(result.report, expect))
    return checks


def probe_access(
    root: Root, gen: Generation, manifest: GenerationManifest, builds: set[str], user: str
) -> dict[str, Any]:
    """What the probe job needs to check the kernels and builds for some groups only, as ``user``
    (by the groups the hub node gives it): ``reachable``, the restricted kernels it may walk;
    ``closed``, the folders that must refuse it; ``groups``, every group named, which must exist
    on the node."""
    member_of = user_groups(user)
    reachable, closed, groups = [], [], []
    for k in manifest.kernels:
        if not k.groups:
            continue
        groups += k.groups
        path = str(gen.restricted_dir(k.name))
        if may_use(k.groups, member_of):
            reachable.append(path)
        else:
            closed.append({"path": path, "groups": k.groups, "kernel": k.name})
    for prefix in sorted(builds):
        try:
            prov = read_provenance(Path(prefix))
        except RecordError:
            continue
        if prov is not None and prov.groups:
            groups += prov.groups
            if not may_use(prov.groups, member_of):
                closed.append({"path": prefix, "groups": prov.groups, "build": f"{prov.env}/{prov.build_id}"})
    return {"reachable": reachable, "closed": closed, "groups": sorted(set(groups))}


def hub_api_url(site: Site) -> str:
    """Where a server on a compute node reaches the hub's API (JupyterHub's own default when
    ``hub_connect_ip`` is unset: ``hub_ip``, or this node's name for the wildcard)."""
    hub = site.settings.hub
    connect = hub.hub_connect_ip or (
        hub.hub_ip if hub.hub_ip not in ("", "0.0.0.0", "::") else socket.gethostname()
    )
    return f"http://{url_host(connect)}:{hub.hub_port}/hub/api"


def _plan(
    site: Site,
    opts: DoctorOptions,
    user: str,
    queue: str,
    gen: Generation,
    manifest: GenerationManifest,
    envs: GenerationEnvs,
    hub_running: bool,
    cmds: JobCommands,
    log: Callable[[str], None],
) -> tuple[ProbePlan, NodeExpect] | Check:
    """The probe job, ready to submit, and what its report should show; or why it cannot run."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return fail(
            "node.job",
            f"there is no user {user!r} on the hub node",
            "create the test account, or set [doctor] user to one.",
        )
    home = Path(pw.pw_dir)
    if not home.is_dir():
        return fail(
            "node.job",
            f"{user}'s home {home} does not exist on the hub node",
            "create it, or choose another test account.",
        )
    if os.geteuid() not in (0, pw.pw_uid):
        return fail(
            "node.job",
            f"only root may submit a job as {user}",
            "run hubstock doctor as root, as the hub runs.",
        )
    root = Root(site.root)
    assert manifest.server is not None
    prefix = manifest.server.prefix
    builds = {b.prefix for b in manifest.builds.values()}
    builds |= {str(root.build(k.env, k.build)) for k in manifest.kernels}
    access = probe_access(root, gen, manifest, builds, user)
    builds -= {c["path"] for c in access["closed"]}
    sp, vp = site.settings.spawner, site.settings.virtual_packages
    opts_job = probe_options(sp, queue)
    probe_dir = home / f".hubstock-doctor-{secrets.token_hex(4)}"
    url = hub_api_url(site)
    timeout = opts.timeout or site.settings.doctor.timeout
    args = {
        "dirs": [str(root.path)],
        "trees": [str(gen.path), prefix, *sorted(builds - {prefix})],
        "files": [str(gen.manifest_path)],
        "server_prefix": prefix,
        "hub_api": url,
        "cuda": opts_job.gpus > 0,
        "timeout": min(timeout, 120),
        **probe_args(envs, site.settings.modules.init, site.module_use()),
        **access,
    }
    python = f"{prefix}/bin/python"
    files = {
        "probe.sh": probe_shell(probe_dir, python, str(root.path)),
        "node_probe.py": Path(__file__).with_name("node_probe.py").read_text(),
        "args.json": json.dumps(args, indent=1),
    }
    env = {k: os.environ[k] for k in ("LANG", "LC_ALL") if k in os.environ}
    env.update(sp.environment)
    env.update(
        PATH=f"{prefix}/bin:{BASE_PATH}",
        JUPYTER_PATH=gen.jupyter_paths(restricted_kernels(manifest, user)),
        JUPYTER_CONFIG_PATH=str(gen.config_path),
        HUBSTOCK_GENERATION=gen.name,
        USER=user,
        HOME=str(home),
        SHELL=pw.pw_shell,
    )
    command = f"/bin/sh {shlex.quote(str(probe_dir / 'probe.sh'))}"
    script = render_probe_script(cmds, sp, opts_job, user, str(home), ",".join(env), command)
    plan = ProbePlan(
        cmds=cmds,
        user=user,
        uid=pw.pw_uid,
        home=home,
        dir=probe_dir,
        files=files,
        script=script,
        submit_env=env,
        query_env={**os.environ, **sp.environment},
        cwd=site.dir,
        queue=queue,
        timeout=timeout,
        log=log,
    )
    expect = NodeExpect(
        root=str(root.path),
        server_prefix=prefix,
        glibc=vp.glibc,
        linux=vp.linux,
        cuda=vp.cuda,
        gpu=opts_job.gpus > 0,
        hub_url=url,
        hub_running=hub_running,
        user=user,
        envs=envs,
        groups=tuple(access["groups"]),
    )
    return plan, expect
