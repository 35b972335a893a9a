"""The build job: its script (the site's batch template, as the spawner renders a server's, with
the build as its command) and its submission as the user, through the site's scheduler.

``hubstock mine create`` runs as the user on a login node: the scheduler's own commands are run
directly (no ``exec_prefix``: nothing of it runs as root), and the job runs ``hubstock mine
build-job NAME`` with ``[personal] tools`` (the Python of a hubstock install the compute nodes
see) as that user.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import PersonalError
from ..limits import Options, Seconds
from ..site import Site
from .layout import MineEnv

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: what the build job takes from the session that submits it, to reach the index as the user does:
#: the locale, the proxies and the certificate authorities (a site that intercepts TLS has its own)
PASSED_ON = (
    "LANG",
    "LC_ALL",
    *(v for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy") for v in (name, name.upper())),
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "UV_NATIVE_TLS",
)
POLL = 0.5
QUERY_EVERY = 2.0
#: seconds a job that ended may take for its last state to show through the shared filesystem
GRACE = 5.0


@dataclass(frozen=True)
class BuildJob:
    script: str
    env: dict[str, str]
    queue: str


def job_options(site: Site) -> Options:
    """The build job's request: the site's defaults on ``[personal] queue``, for at most
    ``[personal] walltime_minutes``, no GPU."""
    sp, personal = site.settings.spawner, site.settings.personal
    q = sp.queue(personal.queue or sp.default_queue)
    opts = sp.defaults_for(q)
    return opts.model_copy(
        update={"walltime": min(opts.walltime, Seconds(personal.walltime_minutes * 60)), "gpus": 0}
    )


def job_shell(site: Site, env: MineEnv, tools: str) -> str:
    """The job's command file: the build, its output in the environment's build.log."""
    q = {
        k: shlex.quote(str(v))
        for k, v in {
            "py": tools,
            "site": site.dir,
            "root": site.root,
            "log": env.log_path,
            "name": env.name,
        }.items()
    }
    return (
        "#!/bin/sh\n"
        f"# hubstock: the build job of your environment {env.name}\n"
        "umask 077\n"
        f"exec {q['py']} -m hubstock --site {q['site']} --root {q['root']} mine build-job {q['name']} "
        f"> {q['log']} 2>&1\n"
    )


def render_build_job(site: Site, env: MineEnv, user: str, home: str) -> BuildJob:
    """The batch script and the submission's environment (pure: nothing is written). The site's
    template as the hub renders it, but the build runs in the batch step itself: no ``srun`` (a
    job step of its own would only add its launch to the user's wait)."""
    import dataclasses

    from ..batchjob import job_commands, render_probe_script

    cmds = dataclasses.replace(job_commands(site), srun="")
    sp = site.settings.spawner
    opts = job_options(site)
    jenv = {k: os.environ[k] for k in PASSED_ON if k in os.environ}
    jenv.update(sp.environment)
    jenv.update(PATH=BASE_PATH, USER=user, HOME=home)
    command = f"/bin/sh {shlex.quote(str(env.job_script))}"
    script = render_probe_script(cmds, sp, opts, user, home, ",".join(jenv), command)
    return BuildJob(script=script, env=jenv, queue=opts.queue)


def _shell(
    cmd: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    try:
        p = subprocess.run(
            cmd, shell=True, input=stdin, env=env, capture_output=True, text=True, timeout=timeout,
            start_new_session=True, cwd=env.get("HOME") or "/",
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return 124, "", f"`{cmd}` did not finish within {timeout:.0f} s"
    return p.returncode, p.stdout, p.stderr


def _cmd(template: str, job: str = "") -> str:
    from ..hub.batch import format_template

    return str(format_template(template, job_id=job, username=os.environ.get("USER", "")))


def submit(site: Site, job: BuildJob) -> str:
    """Submit the build job as this user; its id."""
    from ..batchjob import job_commands, parse_job_id

    cmds = job_commands(site)
    cmd = _cmd(cmds.submit)
    code, out, err = _shell(cmd, {**os.environ, **job.env}, stdin=job.script)
    if code != 0:
        said = (err or out).strip()[-300:] or f"exit code {code}"
        raise PersonalError(
            f"the scheduler refused the build job (`{cmd}`: {said}); tell the site's administrators."
        )
    try:
        return parse_job_id(cmds.scheduler, out)
    except ValueError as e:
        raise PersonalError(f"{e}; tell the site's administrators ([spawner] submit_cmd).") from None


def job_state(site: Site, job: str) -> str:
    """'pending', 'running', 'ending', 'gone' or 'unknown', as the scheduler says now."""
    from ..batchjob import job_commands
    from ..batchjob import job_state as parse_state

    cmds = job_commands(site)
    env = {**os.environ, **site.settings.spawner.environment}
    code, out, err = _shell(_cmd(cmds.query, job), env, timeout=30)
    return parse_state(cmds, code, out, err)


def cancel(site: Site, job: str) -> None:
    from ..batchjob import job_commands

    env = {**os.environ, **site.settings.spawner.environment}
    _shell(_cmd(job_commands(site).cancel, job), env, timeout=30)


def wait(site: Site, env: MineEnv, job: str, say: Callable[[str], None], timeout: float) -> str:
    """Follow the job until its state record says it is done; its final state ('ready' or
    'failed'). A job that ends (cancelled, killed) without saying so is recorded as failed."""

    shown = ""
    start = time.monotonic()
    next_query = start
    gone_at: float | None = None
    while True:
        st = env.state()
        if st is not None and same_job(st.job_id, job):
            if st.state in ("ready", "failed"):
                return st.state
            line = st.step or st.state
            if line != shown:
                say(line)
                shown = line
        now = time.monotonic()
        if now >= next_query:
            state = job_state(site, job)
            if state == "gone":
                gone_at = gone_at or now
            elif state == "pending" and shown == "":
                say(f"job {job} is waiting in the queue")
                shown = "pending"
            next_query = now + QUERY_EVERY
        if gone_at is not None and time.monotonic() - gone_at > GRACE:
            lost(env, job)
            return "failed"
        if time.monotonic() - start > timeout:
            raise PersonalError(
                f"job {job} has not finished after {timeout:.0f} s; it goes on: see `hubstock mine show {env.name}`."
            )
        time.sleep(POLL)


def lost(env: MineEnv, job: str) -> None:
    """Record that job ``job`` ended without finishing (cancelled, killed, out of time); remove
    what it half-made (its kernel, if any, is the previous one and stays)."""
    from .build import remove_tree, set_state

    st = env.state()
    if st is None or not same_job(st.job_id, job) or st.state in ("ready", "failed"):
        return
    for name in os.listdir(env.builds) if env.builds.is_dir() else []:
        if not env.is_complete(name):
            remove_tree(env.build(name))
    set_state(
        env,
        "failed",
        step="",
        message=f"the build job {job} ended before it finished (cancelled, killed or out of time); nothing "
        f"new was published. Create the environment again.",
    )


def same_job(a: str | None, b: str | None) -> bool:
    """Whether two spellings name one job: PBS gives '12.server' to qsub and '12.server.domain'
    to the job, say."""
    return bool(a and b) and a.split(".")[0] == b.split(".")[0]  # type: ignore[union-attr]


def tools_python(site: Site) -> str:
    """The Python that runs hubstock in the job: ``[personal] tools``, else this one."""
    tools = site.settings.personal.tools or sys.executable
    if not (os.path.isfile(tools) and os.access(tools, os.X_OK)):
        raise PersonalError(
            f"[personal] tools {tools} is not an executable Python; tell the site's administrators."
        )
    return tools


def job_script_text(site: Site, env: MineEnv) -> str:
    return job_shell(site, env, tools_python(site))


def write_job_script(site: Site, env: MineEnv) -> Path:
    from ..store.fs import atomic_write

    atomic_write(env.job_script, job_script_text(site, env), mode=0o700)
    return env.job_script
