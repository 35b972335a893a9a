"""``hubstock publish`` and ``hubstock rollback``: generations of kernels and defaults.

A generation is a directory that holds everything a user's server reads:

    $ROOT/generations/<gen>/share/jupyter/kernels/<kernel>/kernel.json   (+ logos)
    $ROOT/generations/<gen>/share/jupyter/lab/settings/overrides.json
    $ROOT/generations/<gen>/etc/jupyter/labconfig/page_config.json
    $ROOT/generations/<gen>/etc/jupyter/jupyter_server_config.py
    $ROOT/generations/<gen>/manifest.json                                (written last)

It is staged under a hidden name, every kernel in it is smoke-tested, it is made
read-only and renamed into place, and only then does ``$ROOT/current`` switch to
it, with one atomic rename. Readers that resolve ``current`` once see one whole
generation, old or new. Generations are numbered; old ones stay for rollback
until ``hubstock gc`` removes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DiskFullError, PublishError, is_disk_full
from ...progress import Progress
from ...site import Site
from ...store.access import close_to, group_ids
from ...store.builds import current_build, damage, is_complete, pinned_builds, read_provenance
from ...store.fs import current_user, fsync_dir, make_read_only, now_iso, remove_tree
from ...store.generations import (
    STAGING_PREFIX,
    generation,
    next_generation,
    resolve_current,
    staging,
    switch_current,
    unfinished,
)
from ...store.hubinfo import installed_version, major_minor, read_hub_versions
from ...store.perms import ADMIN_DIR, make_dir
from ...store.records import GenerationManifest, KernelEntry, ManifestBuild
from ...store.root import Root
from ..build.policy import check_server_packages
from .extensions import Extensions, load_extensions, render_server_config, write_extensions
from .kernels import (
    BuildRef,
    KernelTemplate,
    LmodRef,
    RenderedKernel,
    kernel_groups,
    kernel_modules,
    load_kernel_templates,
    raise_first_failure,
    render_template,
    smoke_jobs,
    write_kernel,
)
from .smoke import SmokeWorker


@dataclass(frozen=True)
class PublishResult:
    generation: str
    changed: bool
    kernels: tuple[str, ...] = ()
    removed_staging: tuple[str, ...] = ()


def build_ref(site: Site, env: str, bid: str | None = None) -> BuildRef:
    """The current complete build of ``env``, as ``hubstock build`` left it (``envs/<env>/current``),
    or its build ``bid``."""
    root = Root(site.root)
    bid = bid or current_build(root, env)
    prefix = root.build(env, bid) if bid else None
    prov = read_provenance(prefix) if prefix else None
    if bid is None or prefix is None or prov is None:
        raise PublishError(
            f"env {env!r} has no complete build on {site.root}; run `nox -s build-envs` "
            f"(or `hubstock build {env}`) first."
        )
    if damage(root, env, bid) is not None:
        raise PublishError(
            f"build {env}/{bid} is damaged (`hubstock verify {env}` lists its files); run "
            f"`hubstock build {env}` to replace it, then publish."
        )
    if env == site.settings.server.env:
        check_server_packages(site, env, (p.name for p in prov.packages))
    return BuildRef(
        env=env,
        build_id=bid,
        prefix=prefix,
        lock_hash=prov.lock_platform_hash or "",
        kind=prov.kind,
        modules=tuple(m.full_name for m in prov.modules),  # as locked, in Lmod's load order
        groups=tuple(prov.groups),
    )


def _available(site: Site, templates: list[KernelTemplate], progress: Progress) -> list[KernelTemplate]:
    """The templates to publish: a kernel of an optional env (``optional`` in its env.toml) is left
    out, with one line saying why, where its env has no build or its modules do not load here."""
    from ..lock.envconf import read_env_conf

    out = []
    for t in templates:
        conf = read_env_conf(site, t.env)
        if conf is None or not conf.optional:
            out.append(t)
            continue
        try:
            ref = build_ref(site, t.env)
            lmod_ref(site, [t], {t.env: ref})
        except PublishError as e:
            why = str(e).removesuffix(" Nothing was published.")
            progress.warn(f"kernel {t.name!r} left out (env {t.env!r} is optional): {why}")
            continue
        out.append(t)
    if not out:
        raise PublishError("no kernel of the site can be published here (see above); build their envs first.")
    return out


def lmod_ref(
    site: Site, templates: list[KernelTemplate], builds: dict[str, BuildRef], server: BuildRef | None = None
) -> LmodRef | None:
    """Where Lmod is, when a kernel loads modules; each set of modules is loaded here first, so a
    module that does not load is one sentence with Lmod's message, before any smoke test."""
    sets = {tuple(kernel_modules(t.spec, builds[t.env])): t.name for t in templates}
    sets.pop((), None)
    if not sets:
        return None
    from ... import lmod
    from ...errors import HubstockError

    init = str(lmod.find_init(site.settings.modules.init))
    use = tuple(site.module_use())
    for modules, kernel in sets.items():
        try:
            lmod.load(list(modules), init=Path(init), use=use)
        except HubstockError as e:
            raise PublishError(f"kernel {kernel!r} cannot start: {e} Nothing was published.") from None
    python = server.prefix / "bin" / "python" if server else None
    return LmodRef(init=init, use=use, python=str(python) if python and python.exists() else None)


def publish(site: Site, progress: Progress, smoke: SmokeWorker | None = None) -> PublishResult:
    """Render, smoke-test and publish the site's kernels and defaults as a new generation.

    The smoke tests run in ``smoke``, a worker the caller started early (the command does so before
    it loads the site), or in one started here; either way it is closed before this returns.
    """
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(smoke or SmokeWorker.start())
        return _publish(site, progress, worker)


def _refuse_a_server_the_hub_cannot_run(root: Root, server: BuildRef) -> None:
    """The doctor's ``version.jupyterhub`` before publishing: the server build's JupyterHub
    against the one the hub said it runs (:mod:`hubstock.store.hubinfo`). Before a hub has
    started on this root there is nothing to compare with, and the doctor checks on the hub node."""
    hub = read_hub_versions(root)
    runs = hub.versions.get("jupyterhub") if hub else None
    if hub is None or runs is None:
        return
    build, want = f"{server.env}/{server.build_id}", major_minor(runs)
    have = installed_version(server.prefix, "jupyterhub")
    if have is None:
        raise PublishError(
            f"the server build {build} has no jupyterhub, but the hub on {hub.host} runs jupyterhub "
            f"{runs}: no server could start. Add jupyterhub {want}.* to envs/{server.env}/, "
            "then lock, build and publish."
        )
    if major_minor(have) != want:
        raise PublishError(
            f"the server build {build} has jupyterhub {have}, but the hub on {hub.host} runs "
            f"{runs} (it said so on {hub.written}): pin jupyterhub {want}.* in "
            f"envs/{server.env}/, then lock, build and publish; or upgrade JupyterHub on the hub "
            "and restart it first."
        )


def _publish(site: Site, progress: Progress, smoke: SmokeWorker) -> PublishResult:
    root = Root(site.root)
    templates = load_kernel_templates(site)
    if not templates:
        raise PublishError("the site has no kernels: add kernels/<name>/kernel.json (see the README).")
    server_env = site.settings.server.env
    if "env" in site.settings.server.model_fields_set and server_env not in site.env_names():
        # a generation without a server environment: every spawn would fail (doctor's FAIL)
        raise PublishError(
            f"hubstock.toml: [server] env = {server_env!r} is not an environment in envs/ (the site has: "
            f"{', '.join(site.env_names()) or 'none'}); the hub's servers would have no JupyterLab to run. "
            f"Add envs/{server_env}/, or name the server environment in [server] env."
        )
    ext = load_extensions(site.extensions_dir)
    names = [t.name for t in templates]
    default_kernel = site.settings.publish.default_kernel or names[0]
    if default_kernel not in names:
        raise PublishError(
            f"hubstock.toml: publish.default_kernel is {default_kernel!r}, which is not a kernel in "
            f"kernels/ (the site has: {', '.join(names)})."
        )
    templates = _available(site, templates, progress)
    if default_kernel not in {t.name for t in templates}:  # left out here: the first kernel published
        if site.settings.publish.default_kernel:
            progress.warn(
                f"the default kernel {default_kernel!r} was left out: {templates[0].name!r} is the default"
            )
        default_kernel = templates[0].name
    envs = sorted({t.env for t in templates})
    builds = {env: build_ref(site, env) for env in envs}
    if not site.settings.publish.default_kernel:  # the first kernel that is everybody's
        default_kernel = next(
            (t.name for t in templates if not kernel_groups(t.spec, builds[t.env])), default_kernel
        )
    server = None
    if server_env in site.env_names():
        server = builds.get(server_env) or build_ref(site, server_env)
    if server is not None:
        _refuse_a_server_the_hub_cannot_run(root, server)
    lmod = lmod_ref(site, templates, builds, server)

    with root.locked(on_wait=progress.warn):
        stale = _remove_stale_staging(root)
        if stale:
            progress.step(f"removed {len(stale)} staging folder(s) of interrupted publishes")
        resolved = resolve_current(root)
        cur = resolved.name if resolved else None
        prev = resolved.manifest() if resolved else None
        kernels = [render_template(t, builds[t.env], lmod) for t in templates]
        kernels += _pinned_kernels(root, cur, prev, kernels, site.settings.publish.keep_previous_builds)
        kernels += _reproduced_kernels(site, root, templates, kernels, lmod)
        _check_groups(kernels, default_kernel)
        all_names = [k.name for k in kernels]
        digest = generation_digest(kernels, ext, server, default_kernel)
        if resolved and prev and prev.digest == digest:
            progress.step(f"nothing changed since generation {cur}: not publishing")
            return PublishResult(resolved.name, False, tuple(all_names), tuple(stale))

        gen = write_generation(
            site, root, progress, smoke, kernels, builds, server, ext, default_kernel, digest, cur
        )
    progress.step(f"published generation {gen} ({len(kernels)} kernel(s))")
    return PublishResult(gen, True, tuple(all_names), tuple(stale))


def write_generation(
    site: Site,
    root: Root,
    progress: Progress,
    smoke: SmokeWorker,
    kernels: list[RenderedKernel],
    builds: dict[str, BuildRef],
    server: BuildRef | None,
    ext: Extensions,
    default_kernel: str,
    digest: str,
    cur: str | None,
    **audit: Any,
) -> str:
    """Stage ``kernels`` and the defaults as the next generation, smoke-test them, write its
    manifest, rename it into place and make it current; its name. The root's lock is held."""
    all_names = [k.name for k in kernels]
    gen = next_generation(root)
    final = generation(root, gen)
    stage = staging(root, gen, uuid.uuid4().hex[:8])
    make_dir(stage.path, ADMIN_DIR)  # nobody else may drop a kernel in while it is smoke-tested
    try:
        stage.kernels_dir.mkdir(parents=True)
        for k in kernels:
            write_kernel(stage, k)
        server_config = render_server_config(all_names, default_kernel, str(final.lab_settings_dir))
        write_extensions(stage.path, ext, server_config)
        progress.step(f"smoke-testing {len(kernels)} kernel(s): {', '.join(all_names)}")
        outcomes = smoke.run(
            smoke_jobs(kernels, stage), stage.kernels_dir, site.settings.publish.smoke_timeout
        )
        raise_first_failure(kernels, outcomes)
        stage.write_manifest(_manifest(gen, digest, kernels, builds, server, default_kernel))
        make_read_only(stage.path)
        for k in kernels:  # the staging folder is still the admin's alone: never open to others
            if k.groups:
                close_to(stage.restricted_dir(k.name), k.groups, _where(k))
        os.rename(stage.path, final.path)
        fsync_dir(root.generations)
    except BaseException as e:
        remove_tree(stage.path, root.trash)
        if is_disk_full(e):
            needs = sum(len(json.dumps(k.spec)) + sum(map(len, k.resources.values())) for k in kernels)
            raise DiskFullError.at(root.generations, f"writing generation {gen}", needs) from None
        raise
    switch_current(root, gen)
    restricted = {k.name: k.groups for k in kernels if k.groups}
    root.audit(
        "publish",
        generation=gen,
        previous=cur,
        kernels=all_names,
        builds={e: b.build_id for e, b in builds.items()},
        **({"restricted": restricted} if restricted else {}),
        **audit,
    )
    return gen


def _where(k: RenderedKernel) -> str:
    """Who named a kernel's groups, for messages."""
    base = k.spec["metadata"]["hubstock"].get("pinned_of") or k.name
    return f"kernels/{base}/kernel.json (or envs/{k.build.env}/env.toml)"


def _check_groups(kernels: list[RenderedKernel], default_kernel: str) -> None:
    """Every group a kernel is for exists here; the default kernel is everybody's."""
    for k in kernels:
        if not k.groups:
            continue
        if k.name == default_kernel:
            raise PublishError(
                f"the default kernel {k.name!r} is for the groups {', '.join(k.groups)} only, and every user's "
                "notebooks open in it; set [publish] default_kernel in hubstock.toml to a kernel for "
                "everybody. Nothing was published."
            )
        group_ids(k.groups, _where(k))


def _remove_stale_staging(root: Root) -> list[str]:
    """Staging folders left by interrupted publishes. Call with the root's lock held: a publish
    holds it from its staging folder's creation to its rename, so every one found is stale."""
    stale = [n for n in unfinished(root) if n.startswith(STAGING_PREFIX)]
    for name in stale:
        remove_tree(root.generations / name, root.trash)
    return stale


def _pinned_kernels(
    root: Root, cur: str | None, prev: GenerationManifest | None, new: list[RenderedKernel], keep: int
) -> list[RenderedKernel]:
    """Kernels of earlier builds, kept under pinned names for a transition period.

    For every stock kernel whose build changed, its previous kernelspec (exactly as
    published before) stays available as ``<name>-<build[:8]>``, up to ``keep``
    earlier builds per kernel, as long as those builds still exist.
    """
    if not prev or not cur or keep == 0:
        return []
    now = {k.name: k.build.build_id for k in new}
    candidates: dict[str, list[KernelEntry]] = {}
    for entry in prev.kernels:
        base = entry.pinned_of or entry.name
        if base not in now or entry.build == now[base]:
            continue
        candidates.setdefault(base, []).append(entry)
    out = []
    for base, entries in candidates.items():
        seen: set[str] = set()
        for entry in entries:  # the previous generation lists the newest build first
            if entry.build in seen or len(seen) >= keep:
                continue
            prefix = root.build(entry.env, entry.build)
            if not is_complete(prefix, entry.build):
                continue
            seen.add(entry.build)
            src = generation(root, cur).entry_dir(entry)
            spec = json.loads((src / "kernel.json").read_text())
            name = f"{base}-{entry.build[:8]}"
            if not entry.pinned_of:
                spec["display_name"] = f"{spec['display_name']} (previous build {entry.build[:8]})"
            spec["metadata"]["hubstock"]["pinned_of"] = base
            resources = {
                str(p.relative_to(src)): p.read_bytes()
                for p in src.rglob("*")
                if p.is_file() and p.name != "kernel.json"
            }
            prov = read_provenance(prefix)
            kind = prov.kind if prov else "conda"
            ref = BuildRef(entry.env, entry.build, prefix, entry.lock_hash, kind=kind)
            out.append(RenderedKernel(name=name, spec=spec, build=ref, resources=resources))
    return out


def _reproduced_kernels(
    site: Site,
    root: Root,
    templates: list[KernelTemplate],
    kernels: list[RenderedKernel],
    lmod: LmodRef | None,
) -> list[RenderedKernel]:
    """A kernel of each earlier build ``hubstock reproduce --publish`` brought back, for as long as
    it stays pinned: each of its env's kernels, as ``<name>-<build[:8]>`` on that build (the site's
    template of today, since the generation that had it may be gone)."""
    out = []
    taken = {k.name for k in kernels}
    for env, bid in pinned_builds(root):
        if not is_complete(root.build(env, bid), bid) or damage(root, env, bid) is not None:
            continue
        for t in templates:
            name = f"{t.name}-{bid[:8]}"
            if t.env != env or name in taken:
                continue
            k = render_template(t, build_ref(site, env, bid), lmod)
            spec = dict(k.spec)
            spec["display_name"] = f"{spec['display_name']} (build {bid[:8]}, reproduced)"
            spec["metadata"] = {
                **spec["metadata"],
                "hubstock": {**spec["metadata"]["hubstock"], "pinned_of": t.name},
            }
            out.append(RenderedKernel(name=name, spec=spec, build=k.build, resources=k.resources))
            taken.add(name)
    return out


def generation_digest(
    kernels: list[RenderedKernel], ext: Extensions, server: BuildRef | None, default_kernel: str
) -> str:
    h = hashlib.sha256()
    blob = {
        "kernels": {k.name: k.spec for k in kernels},
        "resources": {
            k.name: {r: hashlib.sha256(d).hexdigest() for r, d in sorted(k.resources.items())}
            for k in kernels
        },
        "extensions": [ext.page_config, ext.overrides, ext.server_config],
        "server": server.build_id if server else None,
        "default_kernel": default_kernel,
    }
    h.update(json.dumps(blob, sort_keys=True).encode())
    return h.hexdigest()


def _manifest(
    gen: str,
    digest: str,
    kernels: list[RenderedKernel],
    builds: dict[str, BuildRef],
    server: BuildRef | None,
    default_kernel: str,
) -> GenerationManifest:
    restricted = any(k.groups for k in kernels)
    return GenerationManifest(
        **({"schema": GenerationManifest.RESTRICTED_SCHEMA} if restricted else {}),
        generation=gen,
        digest=digest,
        created=now_iso(),
        by=current_user(),
        default_kernel=default_kernel,
        server=_manifest_build(server) if server else None,
        builds={env: _manifest_build(b) for env, b in builds.items()},
        kernels=[
            KernelEntry(
                name=k.name,
                display_name=k.display_name,
                language=k.spec.get("language"),
                env=k.build.env,
                build=k.build.build_id,
                lock_hash=k.build.lock_hash,
                pinned_of=k.spec["metadata"]["hubstock"].get("pinned_of"),
                groups=k.groups,
            )
            for k in kernels
        ],
    )


def _manifest_build(b: BuildRef) -> ManifestBuild:
    prov = read_provenance(b.prefix)
    return ManifestBuild(
        env=b.env,
        build=b.build_id,
        prefix=str(b.prefix),
        lock_hash=b.lock_hash,
        created=prov.created if prov else None,
    )
