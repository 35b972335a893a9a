"""``hubstock reproduce``: build a build again from the lock kept for it, and compare, file by file.

Every build leaves a :class:`~hubstock.store.records.BuildRecord` beside it on the root when it
completes: the lock it was made from and what each of its files was. gc removes builds, never
their records, so a build that is gone can still be made again. (A build made before records
were kept gets one from itself, while it is there.)

The new build is made by the same child as a repair (:mod:`.staged`): in a mount namespace of
its own, the build's own path shows a scratch folder, so the rebuild has the original's paths
and all (a build's scripts and byte-code name its prefix); nobody else sees anything at that
path meanwhile. Then every file of the new build is read and hashed and compared with the
record: the same files with the same content is "identical"; otherwise each file that differs
is named, with what can be told of why. ``--restore`` puts an identical rebuild of a build that
is gone back at its place, complete and verifiable; ``--into DIR`` keeps the rebuild there.

The root's lock is held throughout: the rebuild uses the root's caches, as a build does.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import BuildError, UsageError
from ...progress import Progress
from ...site import Site
from ...store.buildlock import read_lock_copy
from ...store.builds import (
    build_ids,
    env_names,
    is_complete,
    pin,
    read_build_files,
    read_build_record,
    read_provenance,
    record_path,
    recorded_builds,
    unpin,
    write_build_record,
)
from ...store.fs import now_iso, remove_tree
from ...store.generations import current_name, generation
from ...store.perms import ADMIN_DIR, make_dir
from ...store.records import BuildRecord, RecordError
from ...store.root import Root
from ..kinds import load_env
from .build import NO_NAMESPACE, run_staged, staged_error
from .verify import file_map

_BUILD_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Difference:
    """A file in which the rebuild differs from the record: ``what`` is changed, missing (in the
    rebuild) or added (only in the rebuild); ``why`` what can be told of the reason."""

    path: str
    what: str
    why: str = ""


@dataclass
class Reproduction:
    env: str
    build_id: str
    #: the build was no longer on the root (gc removed it): rebuilt from its record alone
    gone: bool
    files: int = 0
    differences: list[Difference] = field(default_factory=list)
    restored: bool = False
    into: str | None = None
    #: pinned: publish gives it kernels of its own (``--publish``); the generation that did
    pinned: bool = False
    generation: str | None = None

    @property
    def identical(self) -> bool:
        return not self.differences

    def to_json(self) -> dict:
        return {
            "env": self.env,
            "build": self.build_id,
            "gone": self.gone,
            "files": self.files,
            "identical": self.identical,
            "differences": [d.__dict__ for d in self.differences],
            "restored": self.restored,
            "into": self.into,
            "pinned": self.pinned,
            "generation": self.generation,
        }


def targets(root: Root, what: str) -> list[tuple[str, str]]:
    """``(env, build id)`` of what ``reproduce`` was asked for: ``ENV/BUILD``, a build id, or a
    generation (every build it names; ``current``: the published one)."""
    if what == "current":
        what = current_name(root) or what
    if "/" in what:
        env, _, bid = what.partition("/")
        if env in env_names(root) and (
            bid in build_ids(root, env)
            or (_BUILD_ID.fullmatch(bid) and record_path(root, env, bid).is_file())
        ):
            return [(env, bid)]
    elif root.generation(what).is_dir():
        keys = sorted(generation(root, what).manifest().build_keys())
        return [(k.split("/", 1)[0], k.split("/", 1)[1]) for k in keys]
    elif _BUILD_ID.fullmatch(what):
        found = {bid: env for env in env_names(root) for bid in build_ids(root, env)}
        found.update(recorded_builds(root))
        if what in found:
            return [(found[what], what)]
    raise UsageError(
        f"{what!r} is no build and no generation on the root {root.path}; give ENV/BUILD, a build id or a "
        "generation (`hubstock status` and `hubstock history` list them)."
    )


def record_of(root: Root, env: str, bid: str) -> BuildRecord:
    """The build's record; one made from the build itself (and kept) if it has none yet."""
    try:
        record = read_build_record(root, env, bid)
    except RecordError as e:
        raise BuildError(f"{e} The build {env}/{bid} cannot be reproduced without it.") from None
    if record is not None:
        return record
    prefix = root.build(env, bid)
    prov = read_provenance(prefix) if is_complete(prefix, bid) else None
    lock = read_lock_copy(root, env, bid) if prov is not None else None
    if prov is None or lock is None:
        raise BuildError(
            f"the build {env}/{bid} is gone, and was made before hubstock kept a record of each build "
            "(its lock and its files), so it cannot be reproduced; builds made from now on can."
        )
    from ..kinds import backend

    record = BuildRecord(
        build_id=bid,
        env=env,
        kind=prov.kind,
        platform=prov.platform,
        lock_name=backend(prov.kind).lock_name,
        lock=lock.decode("utf-8", errors="surrogateescape"),
        files=file_map(prefix, recorded=read_build_files(prefix)),
        created=now_iso(),
    )
    write_build_record(root, record)
    return record


def reproduce(
    site: Site,
    what: str,
    progress: Progress,
    into: Path | None = None,
    restore: bool = False,
    publish: bool = False,
) -> list[Reproduction]:
    """Reproduce the builds ``what`` names (:func:`targets`), one after the other. ``publish``: an
    identical one (restored if it was gone) gets kernels of its own in a new generation."""
    root = Root(site.root)
    if into is not None and (restore or publish):
        raise UsageError(
            "--into goes apart from --restore and --publish: those put the build back in its place."
        )
    with root.locked(on_wait=progress.warn):
        done = []
        for env, bid in targets(root, what):
            gone = not is_complete(root.build(env, bid), bid)
            done.append(_one(site, root, env, bid, progress, into, restore or (publish and gone)))
        if publish:
            for r in done:
                if r.identical:
                    pin(root, r.env, r.build_id)
                    r.pinned = True
    if publish:
        _publish_now(site, progress, done)
    return done


def unpublish(site: Site, what: str, progress: Progress) -> list[Reproduction]:
    """Withdraw the kernels ``--publish`` gave the builds ``what`` names, in a new generation."""
    root = Root(site.root)
    with root.locked(on_wait=progress.warn):
        found = [(env, bid) for env, bid in targets(root, what) if unpin(root, env, bid)]
    if not found:
        raise UsageError(f"no build of {what!r} has kernels of its own from `hubstock reproduce --publish`.")
    done = [Reproduction(env, bid, gone=False) for env, bid in found]
    _publish_now(site, progress, done)
    return done


def _publish_now(site: Site, progress: Progress, done: list[Reproduction]) -> None:
    from ..publish.publish import publish

    result = publish(site, progress)
    for r in done:
        r.generation = result.generation


def _one(
    site: Site, root: Root, env_name: str, bid: str, progress: Progress, into: Path | None, restore: bool
) -> Reproduction:
    record = record_of(root, env_name, bid)
    prefix = root.build(env_name, bid)
    gone = not is_complete(prefix, bid)
    if restore and not gone:
        raise UsageError(f"the build {env_name}/{bid} is on the root: there is nothing to restore.")
    load_env(site, env_name)  # the env must still be in the site: its kind and settings build it
    done = Reproduction(env_name, bid, gone=gone)
    progress.step(f"[{env_name}] rebuilding {bid} from its kept lock{' (the build is gone)' if gone else ''}")
    with _scratch(root, env_name, bid, into) as scratch, _bind_target(root, prefix, gone):
        _rebuild(site, root, env_name, bid, record, scratch, progress)
        progress.step(f"[{env_name}] comparing {len(record.files)} file(s) with the record")
        rebuilt = file_map(scratch)
        done.files = len(rebuilt)
        done.differences = compare(record.files, rebuilt, scratch, str(prefix))
        if restore and done.identical:
            os.rmdir(prefix)  # the empty place the rebuild was seen at
            os.rename(scratch, prefix)
            done.restored = True
            root.audit("reproduce", env=env_name, build=bid, identical=True, restored=True)
        else:
            root.audit("reproduce", env=env_name, build=bid, identical=done.identical)
        if into is not None:
            done.into = str(scratch)
    return done


@contextlib.contextmanager
def _scratch(root: Root, env: str, bid: str, into: Path | None) -> Iterator[Path]:
    """Where the rebuild is made: ``into/<env>-<build>`` (kept), or a dot folder beside the build
    (on the caches' filesystem: hard links, as in a build; removed after)."""
    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
        scratch = into / f"{env}-{bid}"
        if os.path.lexists(scratch):
            raise BuildError(f"{scratch} exists; remove it or give another --into.")
        make_dir(scratch, ADMIN_DIR)
        yield scratch
        return
    scratch = root.env(env) / f".reproducing-{bid}"
    remove_tree(scratch, root.trash)  # what a killed reproduce left
    make_dir(scratch, ADMIN_DIR)
    try:
        yield scratch
    finally:
        if os.path.lexists(scratch):
            remove_tree(scratch, root.trash)


@contextlib.contextmanager
def _bind_target(root: Root, prefix: Path, gone: bool) -> Iterator[None]:
    """The build's place, which the rebuild is seen at: an empty folder while a gone build is made
    again (under the root's lock; nothing counts it: it has no marker)."""
    if not gone:
        yield
        return
    if os.path.lexists(prefix):  # an interrupted build's leftover
        remove_tree(prefix, root.trash)
    prefix.mkdir(mode=0o700)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if prefix.is_dir() and not any(prefix.iterdir()):
                prefix.rmdir()


def _rebuild(
    site: Site, root: Root, env: str, bid: str, record: BuildRecord, scratch: Path, progress: Progress
) -> None:
    with tempfile.NamedTemporaryFile(prefix="hubstock-kept-lock-", suffix=f"-{record.lock_name}") as f:
        f.write(record.lock.encode("utf-8", errors="surrogateescape"))
        f.flush()
        proc = run_staged(
            site, env, bid, scratch, progress, what=f"rebuilding {env}/{bid}", lock=Path(f.name)
        )
    if proc.returncode == NO_NAMESPACE:
        raise BuildError(
            f"{proc.stdout.strip()}: a build is reproduced at its own path in a mount namespace of its own; "
            "run `hubstock reproduce` as root, or where unprivileged user namespaces are allowed."
        )
    if proc.returncode != 0 or not is_complete(scratch, bid):
        raise BuildError(f"the build {env}/{bid} could not be made again: {staged_error(proc)}.")


def compare(
    recorded: dict[str, str], rebuilt: dict[str, str], scratch: Path, prefix: str
) -> list[Difference]:
    """Every file in which ``rebuilt`` (made in ``scratch``, seen at ``prefix`` while it was made)
    differs from ``recorded``."""
    out = []
    for rel in sorted(recorded.keys() | rebuilt.keys()):
        old, new = recorded.get(rel), rebuilt.get(rel)
        if old == new:
            continue
        if new is None:
            out.append(Difference(rel, "missing", "the rebuild has no such file"))
        elif old is None:
            out.append(Difference(rel, "added", "only the rebuild has it"))
        else:
            out.append(Difference(rel, "changed", why_changed(rel, old, new, scratch / rel, prefix)))
    return out


def why_changed(rel: str, old: str, new: str, path: Path, prefix: str) -> str:
    """What can be told of why a file differs, from the rebuild's copy of it."""
    if old.startswith("link:") or new.startswith("link:"):
        return f"the link points elsewhere ({old.removeprefix('link:')} -> {new.removeprefix('link:')})"
    if "/__pycache__/" in f"/{rel}" and rel.endswith(".pyc"):
        return "byte-code: compiled again from a source or with a path that differs"
    try:
        data = path.read_bytes()
    except OSError:
        return "its content differs"
    if prefix.encode() in data:
        return "its content differs where it names the build's path"
    if b"/.staging-" in data or b"/tmp/" in data:
        return "a temporary path is baked into it"
    if re.search(rb"20\d\d-\d\d-\d\d[T ]\d\d:\d\d", data):
        return "its content differs; it holds a date and time"
    return "its content differs"


def describe(r: Reproduction) -> str:
    """One line for a reproduction, then a line for each of its first differences."""
    where = " (the build was gone)" if r.gone else ""
    if r.identical:
        line = f"{r.env}/{r.build_id}: identical, {r.files} file(s){where}"
        if r.restored:
            line += "; restored at its place"
        if r.pinned:
            line += f"; its kernels are in generation {r.generation}"
        return line + (f"; the rebuild is in {r.into}" if r.into else "")
    lines = [f"{r.env}/{r.build_id}: {len(r.differences)} file(s) differ{where}:"]
    lines += [f"  {d.what:8} {d.path}: {d.why}" for d in r.differences[:20]]
    if len(r.differences) > 20:
        lines.append(f"  ... and {len(r.differences) - 20} more (--json lists them all)")
    return "\n".join(lines)
