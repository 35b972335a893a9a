"""The shared root as the hub node sees it: there, owned by the admin, closed to users, its lock
free, its current generation whole; and the hub's jupyterhub and batchspawner against the
published server build's."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
from pathlib import Path

from ...errors import RootError
from ...store.builds import damage, is_complete
from ...store.generations import Generation, resolve_current
from ...store.hubinfo import major_minor
from ...store.records import GenerationManifest, RecordError
from ...store.root import Root
from ...store.rootmark import check_root as check_marker
from ...store.scan import scan_root
from .model import Check, fail, ok, warn


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _some(paths: list[str], count: int) -> str:
    more = f" and {count - len(paths)} more" if count > len(paths) else ""
    return ", ".join(paths) + more


def check_root(root: Root) -> list[Check]:
    """``root``: it exists and is marked for this place; ``root.owner``: everything in it is its owner's (or uid 0's);
    ``root.writable``: nothing in it may be changed by users."""
    try:
        marker = check_marker(root.path)
    except RootError as e:
        return [
            fail(
                "root",
                str(e),
                "mount the shared root at this path, or set root in hubstock.toml (or HUBSTOCK_ROOT) to it.",
            )
        ]
    scan = scan_root(root.path)
    owner = _user(scan.owner)
    checks = [ok("root", f"{root.path} (root {marker.id}), owned by {owner}, {scan.scanned} paths scanned")]
    if scan.foreign_count:
        shown = [f"{p} ({_user(uid)})" for p, uid in scan.foreign]
        checks.append(
            fail(
                "root.owner",
                f"{scan.foreign_count} path(s) in the root are not its owner's ({owner}): "
                f"{_some(shown, scan.foreign_count)}",
                f"give them back to the admin (`chown -hR {owner} {scan.foreign[0][0]}`) and find out who made them.",
            )
        )
    else:
        checks.append(
            ok("root.owner", f"everything in it is {owner}'s" + ("" if scan.owner == 0 else " (or root's)"))
        )
    if scan.writable_count:
        shown = [f"{p} (mode {mode:o})" for p, mode in scan.writable]
        checks.append(
            fail(
                "root.writable",
                f"{scan.writable_count} path(s) in the root can be changed by users: "
                f"{_some(shown, scan.writable_count)}",
                f"take group and other write permission away (`chmod -R go-w {scan.writable[0][0]}`).",
            )
        )
    else:
        checks.append(ok("root.writable", "nothing in it can be changed by users"))
    return checks


def check_lock(root: Root) -> Check:
    """``root.lock``: nobody holds the root's lock (tried without waiting, and released at once)."""
    try:
        fd = os.open(root.lock_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ok("root.lock", "free (nothing has written the root with a lock yet)")
    except OSError as e:
        return warn(
            "root.lock",
            f"{root.lock_file} cannot be opened to test it ({e.strerror})",
            "run hubstock doctor as root or as the root's owner.",
        )
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        holder = ""
        with contextlib.suppress(OSError):
            holder = root.holder_file.read_text().strip()
        return warn(
            "root.lock",
            f"held by {holder or 'another process'}: a build, publish, rollback or gc is running",
            f"let it finish; if no hubstock command is running, find the holder with `fuser {root.lock_file}`.",
        )
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return ok("root.lock", "free")
    finally:
        os.close(fd)


def check_generation(root: Root) -> tuple[Check, Generation | None, GenerationManifest | None]:
    """``generation``: the current generation's manifest reads, its server build and every kernel's
    build are complete, the server has ``jupyterhub-singleuser``, the kernels are there."""
    name = "generation"
    gen = resolve_current(root)
    if gen is None:
        return (
            fail(
                name,
                f"nothing is published on {root.path}",
                "build and publish the environments (`nox -s build-envs`, or `hubstock build` and `hubstock publish`).",
            ),
            None,
            None,
        )
    redo = "publish again (`hubstock build` and `hubstock publish`) or go back to a good one (`hubstock rollback`)."
    try:
        manifest = gen.manifest()
    except RecordError as e:
        return fail(name, f"generation {gen.name}: {e}", redo), gen, None
    problems = []
    server = manifest.server
    if server is None:
        problems.append("it has no server environment")
    elif not is_complete(Path(server.prefix), server.build):
        problems.append(f"its server build {server.env}/{server.build} is missing or incomplete")
    elif not (Path(server.prefix) / "bin" / "jupyterhub-singleuser").is_file():
        problems.append(f"its server build {server.env}/{server.build} has no bin/jupyterhub-singleuser")
    if not gen.kernels_dir.is_dir():
        problems.append(f"it has no kernels folder ({gen.kernels_dir})")
    for k in manifest.kernels:
        if not is_complete(root.build(k.env, k.build), k.build):
            problems.append(f"kernel {k.name}'s build {k.env}/{k.build} is missing or incomplete")
        elif not (gen.entry_dir(k) / "kernel.json").is_file():
            problems.append(f"kernel {k.name} has no kernel.json")
    used = {(k.env, k.build) for k in manifest.kernels} | ({(server.env, server.build)} if server else set())
    for env, bid in sorted(used):
        if found := damage(root, env, bid):
            problems.append(f"`hubstock verify` found build {env}/{bid} damaged ({found.count} file(s))")
            redo = "repair it (`hubstock verify --repair`, or `hubstock build`) and publish again."
    if problems:
        return fail(name, f"generation {gen.name}: {'; '.join(problems)}", redo), gen, manifest
    assert server is not None
    kernels = ", ".join(k.name for k in manifest.kernels) or "none"
    return (
        ok(name, f"generation {gen.name}: server build {server.env}/{server.build}, kernels {kernels}"),
        gen,
        manifest,
    )


def compare_versions(dist: str, hub: str | None, server: str | None, server_env: str) -> Check:
    """``version.<dist>``: the hub's and the server build's major.minor agree."""
    name = f"version.{dist}"
    if hub is None:
        return fail(
            name,
            f"{dist} is not installed on the hub",
            "install it beside hubstock (`pip install 'hubstock[hub]'`).",
        )
    if server is None:
        return fail(
            name,
            f"the published server build has no {dist} (the hub has {hub})",
            f"add {dist} {major_minor(hub)}.* to envs/{server_env}/environment.yml, then lock, build and publish.",
        )
    if major_minor(hub) != major_minor(server):
        return fail(
            name,
            f"the hub runs {dist} {hub} but the published server build has {server}",
            f"pin {dist} {major_minor(hub)}.* in envs/{server_env}/environment.yml, then lock, build and "
            f"publish (or install {dist} {major_minor(server)} on the hub).",
        )
    return ok(name, f"{hub} on the hub, {server} in the server build")
