"""``hubstock mine``: a user's own environments, on a login node, as that user.

hubstock mine create NAME [--from KERNEL] [PKG...] [-r FILE] [--replace] [--no-wait]
hubstock mine list [--json]
hubstock mine show NAME [--json]
hubstock mine lock NAME          (prints the lock: reproduce the environment elsewhere)
hubstock mine verify NAME
hubstock mine remove NAME
hubstock mine build-job NAME     (what the build job runs)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import time
from pathlib import Path
from typing import Any

from ..errors import HubstockError, PersonalError
from ..progress import Progress
from ..site import Site
from ..store.access import user_groups
from ..store.builds import is_complete
from ..store.fs import now_iso
from ..store.generations import resolve_current
from ..store.records import GenerationManifest, PersonalSpec
from ..store.root import Root
from .layout import Mine, MineEnv, mine_of
from .request import check_name, check_requirements, read_requirements_file, resolve_base


def _me() -> tuple[str, str]:
    if os.geteuid() == 0:
        raise PersonalError(
            "hubstock mine makes your own environments, as you and as your batch jobs; run it as your own "
            "account, not as root."
        )
    pw = pwd.getpwuid(os.getuid())
    return pw.pw_name, pw.pw_dir


def cmd_mine(site: Site, args: argparse.Namespace, progress: Progress) -> int:
    if not site.settings.personal.enabled:
        raise PersonalError(
            "personal environments are not enabled on this site ([personal] enabled = false)."
        )
    user, home = _me()
    mine = mine_of(site.settings.personal, user)
    action = args.mine_command
    if action == "build-job":
        from .build import build_in_job

        env = mine.env(check_name(args.name))
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
        st = env.state()
        if job and (st is None or not st.job_id):  # started before `create` wrote the job's id
            from .build import set_state

            set_state(env, "running", job_id=job, step="started")
        t0 = time.monotonic()
        build_in_job(site, mine, env.name, say=lambda line: _say(f"[{time.monotonic() - t0:6.2f}s] {line}"))
        return 0
    if action == "create":
        return _create(site, args, progress, mine, user, home)
    if action == "list":
        return _list(site, args, mine)
    env = _existing(mine, args.name)
    if action == "show":
        return _show(site, args, env)
    if action == "lock":
        try:
            print(env.lock_path.read_text(), end="")
        except FileNotFoundError:
            raise PersonalError(
                f"{env.name!r} has no lock yet: its first build has not finished; see `hubstock mine show {env.name}`."
            ) from None
        return 0
    if action == "verify":
        return _verify(env)
    if action == "remove":
        return _remove(site, args, env, progress)
    raise AssertionError(action)


def _say(line: str) -> None:
    """A line of the job's log, after the seconds since the job's build began (a log on a full disk
    loses it; the build goes on to say why it failed)."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def _existing(mine: Mine, name: str) -> MineEnv:
    env = mine.env(check_name(name))
    if not env.spec_path.is_file():
        have = ", ".join(e.name for e in mine.envs()) or "none"
        raise PersonalError(
            f"you have no environment {name!r} (yours: {have}); `hubstock mine create {name} PKG...` makes it."
        )
    return env


def _published(site: Site) -> tuple[Any, GenerationManifest]:
    gen = resolve_current(Root(site.root))
    if gen is None:
        raise PersonalError(
            "no stock is published on this site yet, so there is nothing to build on; tell the site's administrators."
        )
    return gen, gen.manifest()


def _ensure_dir(path: Path) -> None:
    """Make the user's folder (0700 for every part made)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)
        os.chmod(d, 0o700)


def _job_alive(site: Site, env: MineEnv) -> bool:
    """Whether the environment's build job is still in the scheduler (a lost one is recorded as failed)."""
    from .job import job_state, lost

    st = env.state()
    if st is None or st.state not in ("submitted", "running") or not st.job_id:
        return False
    if job_state(site, st.job_id) in ("pending", "running", "ending", "unknown"):
        return True
    lost(env, st.job_id)
    return False


def _create(
    site: Site, args: argparse.Namespace, progress: Progress, mine: Mine, user: str, home: str
) -> int:
    from .build import set_state
    from .job import render_build_job, submit, wait, write_job_script

    name = check_name(args.name)
    reqs = list(args.packages)
    for f in args.requirements:
        reqs += read_requirements_file(Path(f))
    reqs = check_requirements(reqs, site.settings)
    gen, manifest = _published(site)
    base = resolve_base(gen, manifest, args.base, user_groups(user))
    env = mine.env(name)
    if env.spec_path.exists():
        if _job_alive(site, env):
            busy = env.state()
            raise PersonalError(
                f"{name!r} is being built (job {busy.job_id if busy else '?'}); wait for it, or "
                f"`hubstock mine remove {name}`."
            )
        if not args.replace:
            raise PersonalError(
                f"you already have an environment {name!r}; give --replace to build it again, or choose another name."
            )
    else:
        count = sum(1 for _ in mine.envs())
        limit = site.settings.personal.max_envs
        if count >= limit:
            raise PersonalError(
                f"you have {count} environments, the most this site allows ([personal] max_envs = {limit}); "
                "remove one first (`hubstock mine remove NAME`)."
            )
    _ensure_dir(mine.path)
    fresh = not env.path.exists()
    env.path.mkdir(mode=0o700, exist_ok=True)
    try:
        from ..store.fs import atomic_write

        spec = PersonalSpec(name=name, user=user, base=base, requirements=reqs, created=now_iso())
        atomic_write(env.spec_path, spec.to_json(), mode=0o600)
        write_job_script(site, env)
        set_state(env, "submitted", step="", message="", job_id=None)
        job = render_build_job(site, env, user, home)
        job_id = submit(site, job)
    except BaseException as e:
        from .build import remove_tree

        if fresh:
            remove_tree(env.path)
        else:  # its previous build and kernel stay; what was asked last did not start
            with contextlib.suppress(OSError, HubstockError):
                set_state(
                    env,
                    "failed",
                    step="",
                    message=str(e) if isinstance(e, HubstockError) else "not submitted",
                )
        raise
    st = env.state()
    if st is not None and st.job_id is None:
        set_state(env, "submitted", job_id=job_id)
    progress.step(
        f"[{name}] build job {job_id} submitted to queue {job.queue!r} on {base.display_name} ({base.env}/{base.build})"
    )
    if args.no_wait:
        _out(
            args,
            {"name": name, "job": job_id, "state": "submitted"},
            f"job {job_id} builds {name!r}; `hubstock mine show {name}` follows it.",
        )
        return 0
    timeout = job_options_timeout(site)
    final = wait(site, env, job_id, lambda line: progress.step(f"[{name}] {line}"), timeout)
    st = env.state()
    if final != "ready" or st is None:
        raise PersonalError(f"{name!r} was not built: {st.message if st else 'no state was written'}")
    _tidy_job_output(job.script, job_id, Path(home))
    _out(
        args,
        {"name": name, "job": job_id, "state": "ready", "build": st.build, "kernel": env.kernel_name},
        f"{name}: ready; kernel {env.kernel_name!r} ({base.display_name} + mine: {name}) is in your next server.",
    )
    return 0


def job_options_timeout(site: Site) -> float:
    from .job import job_options

    return float(job_options(site).walltime) + 600.0


def _tidy_job_output(script: str, job: str, home: Path) -> None:
    """The scheduler's own output file of a build job that succeeded (its output is in build.log)."""
    from ..batchjob import job_logs

    for path in job_logs(script, job, home):
        with contextlib.suppress(OSError):
            if path.stat().st_uid == os.getuid():
                path.unlink()


def _out(args: argparse.Namespace, doc: dict, text: str) -> None:
    if getattr(args, "json", False):
        from ..cli import _print_json

        _print_json(doc)
    else:
        print(text)


def describe(site: Site, env: MineEnv, manifest: GenerationManifest | None) -> dict[str, Any]:
    """One environment as `mine list` and the stock page show it."""
    _job_alive(site, env)  # a build job that ended without a word is recorded as failed first
    spec, st = env.spec(), env.state()
    assert spec is not None
    base = spec.base
    doc: dict[str, Any] = {
        "name": env.name,
        "kernel": env.kernel_name,
        "display_name": f"{base.display_name} + mine: {env.name}",
        "base": f"{base.kernel} ({base.env}/{base.build})",
        "requirements": spec.requirements,
        "state": st.state if st else "unknown",
        "job": st.job_id if st else None,
        "build": st.build if st else None,
        "message": st.message if st else "",
        "step": st.step if st else "",
        "notes": [],
    }
    kbuild = env.kernel_build()
    doc["kernel_build"] = kbuild
    if kbuild:
        prov = env.provenance(kbuild)
        doc["size"] = prov.size if prov else None
        doc["packages"] = [f"{p.name} {p.version}" for p in prov.packages] if prov else []
    if not is_complete(Path(base.prefix), base.build):
        doc["notes"].append(
            f"base removed: the stock build it layers on was garbage-collected, so its kernel is no longer "
            f"offered; rebuild: `hubstock mine create {env.name} --replace {' '.join(spec.requirements)}`"
        )
    elif manifest is not None:
        now = manifest.builds.get(base.env)
        if now is None or now.build != base.build:
            doc["notes"].append(
                f"base changed: the stock {base.env!r} was republished; rebuild on it with `hubstock mine create "
                f"{env.name} --replace {' '.join(spec.requirements)}` (this build works until gc removes its base)"
            )
    return doc


def _list(site: Site, args: argparse.Namespace, mine: Mine) -> int:
    manifest = None
    with contextlib.suppress(HubstockError, OSError):
        manifest = _published(site)[1]
    docs = [describe(site, env, manifest) for env in mine.envs()]
    if args.json:
        from ..cli import _print_json

        _print_json({"dir": str(mine.path), "envs": docs})
        return 0
    if not docs:
        print(f"no environments of yours (in {mine.path}); `hubstock mine create NAME PKG...` makes one.")
    for d in docs:
        size = f", {d['size'] / 1048576:.1f} MB" if d.get("size") else ""
        print(f"{d['name']}: {d['state']}{size}: {', '.join(d['requirements'])} on {d['base']}")
        if d["message"]:
            print(f"  {d['message']}")
        for note in d["notes"]:
            print(f"  {note}")
    return 0


def _show(site: Site, args: argparse.Namespace, env: MineEnv) -> int:
    manifest = None
    with contextlib.suppress(HubstockError, OSError):
        manifest = _published(site)[1]
    doc = describe(site, env, manifest)
    log = ""
    with contextlib.suppress(OSError):
        log = "\n".join(env.log_path.read_text(errors="replace").splitlines()[-15:])
    doc["lock"] = str(env.lock_path) if env.lock_path.exists() else None
    doc["log"] = log
    if args.json:
        from ..cli import _print_json

        _print_json(doc)
        return 0
    for key in (
        "name",
        "display_name",
        "kernel",
        "base",
        "state",
        "step",
        "job",
        "kernel_build",
        "size",
        "lock",
        "message",
    ):
        if doc.get(key):
            print(f"{key}: {doc[key]}")
    print(f"requirements: {', '.join(doc['requirements'])}")
    if doc.get("packages"):
        print(f"installed beside the stock: {', '.join(doc['packages'])}")
    for note in doc["notes"]:
        print(f"note: {note}")
    if log:
        print(f"--- the end of {env.log_path}:\n{log}")
    return 0


def _verify(env: MineEnv) -> int:
    from .build import verify_build

    st = env.state()
    bid = st.build if st else None
    if not bid or not env.is_complete(bid):
        raise PersonalError(
            f"{env.name!r} has no complete build to verify; see `hubstock mine show {env.name}`."
        )
    problems = verify_build(env, bid)
    if problems:
        print(f"{env.name}: build {bid} differs from what it recorded ({len(problems)} file(s)):")
        for p in problems[:20]:
            print(f"  {p}")
        print(f"  rebuild it: `hubstock mine create {env.name} --replace ...`")
        return 1
    print(f"{env.name}: build {bid} verified")
    return 0


def _remove(site: Site, args: argparse.Namespace, env: MineEnv, progress: Progress) -> int:
    from .build import remove_tree
    from .job import cancel

    st = env.state()
    if st is not None and st.job_id and _job_alive(site, env):
        progress.step(f"[{env.name}] cancelling its build job {st.job_id}")
        cancel(site, st.job_id)
    remove_tree(env.path)
    _out(
        args, {"name": env.name, "removed": True}, f"{env.name}: removed (its kernel leaves your next server)"
    )
    return 0
