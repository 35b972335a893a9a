"""``hubstock export GEN`` and ``hubstock import ARCHIVE``: a published generation carried to
another root (a second cluster, one behind a firewall), as one archive.

The archive (an uncompressed tar: a changed byte stays in its member) holds, under
``hubstock-export/``:

- ``generation/``: every file of the generation (its manifest, kernels, extension defaults);
- ``records/<env>/<build>.json``: the :class:`~hubstock.store.records.BuildRecord` of every
  build the generation names: the lock it was made from, and its files;
- ``export.json``: an :class:`~hubstock.store.records.ExportManifest` with the sha256 of every
  member above, and ``export.json.sha256``, its own.

``import`` first checks every member against those sums and refuses the whole archive, naming
the member, when one differs, is missing or is extra (nothing is written before). Then it makes
each build from its kept lock on this site (the same build ids, or a sentence saying why not:
another interpreter, an env the site lacks) and publishes the generation's kernels and defaults
as a new generation of this root, its paths moved from the exporting root to this one,
smoke-tested like any publish. Importing the same archive again does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ... import __version__
from ...errors import PublishError, UsageError
from ...progress import Progress
from ...site import Site
from ...store.fs import current_user, now_iso
from ...store.generations import Generation, current_name, generation, resolve_current
from ...store.records import BuildRecord, ExportManifest, GenerationManifest, RecordError
from ...store.root import Root
from .extensions import Extensions
from .kernels import RenderedKernel

TOP = "hubstock-export"
MANIFEST = f"{TOP}/export.json"
MANIFEST_SUM = f"{TOP}/export.json.sha256"


@dataclass(frozen=True)
class ExportResult:
    generation: str
    archive: Path
    builds: tuple[str, ...]
    files: int


@dataclass(frozen=True)
class ImportResult:
    generation: str
    #: whether a new generation was published (False: this root has it already, unchanged)
    published: bool
    #: ``env/build`` of the builds made here (the others were here already)
    built: tuple[str, ...]
    kernels: tuple[str, ...]


# --- export -----------------------------------------------------------------------------------


def export(site: Site, gen: str, out: Path | None, progress: Progress) -> ExportResult:
    """Write generation ``gen`` (``current``: the published one) of the site's root as one archive."""
    from ..build.reproduce import record_of

    root = Root(site.root)
    name = current_name(root) if gen == "current" else gen
    if not name or not root.generation(name).is_dir():
        raise UsageError(
            f"there is no generation {gen!r} on the root {root.path}; `hubstock status` lists them."
        )
    g = generation(root, name)
    manifest = g.manifest()
    members: dict[str, bytes] = {}
    for path in sorted(p for p in g.path.rglob("*") if p.is_file() and not p.is_symlink()):
        members[f"{TOP}/generation/{path.relative_to(g.path).as_posix()}"] = path.read_bytes()
    keys = sorted(manifest.build_keys())
    with root.locked(on_wait=progress.warn):  # a build without a record yet gets one
        for key in keys:
            env, bid = key.split("/", 1)
            members[f"{TOP}/records/{env}/{bid}.json"] = record_of(root, env, bid).to_json().encode()
    record = ExportManifest(
        generation=name,
        created=now_iso(),
        by=current_user(),
        hubstock=__version__,
        source_root=str(root.path),
        files={m: hashlib.sha256(data).hexdigest() for m, data in members.items()},
    )
    text = record.to_json().encode()
    head = {MANIFEST: text, MANIFEST_SUM: (hashlib.sha256(text).hexdigest() + "\n").encode()}
    dest = out or Path(f"hubstock-generation-{name}.tar")
    progress.step(f"writing generation {name} ({len(keys)} build(s), {len(members)} file(s)) to {dest}")
    _write_tar(dest, {**head, **members})
    return ExportResult(name, dest, tuple(keys), len(members))


def _write_tar(dest: Path, members: dict[str, bytes]) -> None:
    """The archive, whole or not at all (written beside, then renamed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- import -----------------------------------------------------------------------------------


def read_archive(archive: Path) -> tuple[ExportManifest, dict[str, bytes]]:
    """The archive's manifest and members, every one checked against it: a :class:`PublishError`
    naming the archive and the member that differs, is missing or is not a plain file."""
    where = str(archive)
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for info in tar:
                name = info.name
                parts = PurePosixPath(name).parts
                if not info.isfile() or name.startswith("/") or ".." in parts or parts[:1] != (TOP,):
                    raise PublishError(
                        f"{where}: its member {name!r} is not a plain file of a hubstock export; nothing was imported."
                    )
                f = tar.extractfile(info)
                members[name] = f.read() if f else b""
    except (OSError, tarfile.TarError) as e:
        raise PublishError(
            f"{where} cannot be read as a hubstock export ({e}); nothing was imported."
        ) from None
    text, said = members.pop(MANIFEST, None), members.pop(MANIFEST_SUM, None)
    if text is None or said is None:
        raise PublishError(f"{where} is not a hubstock export (no {MANIFEST}); nothing was imported.")
    if hashlib.sha256(text).hexdigest() != said.decode(errors="replace").strip():
        raise PublishError(
            f"{where}: {MANIFEST} does not match its sha256 (the archive was changed); nothing was imported."
        )
    try:
        record = ExportManifest.from_text(text, f"{where}: {MANIFEST}")
    except RecordError as e:
        raise PublishError(f"{e} Nothing was imported.") from None
    for name in sorted(members.keys() | record.files.keys()):
        if name not in members:
            raise PublishError(f"{where}: its member {name} is missing; nothing was imported.")
        if name not in record.files:
            raise PublishError(f"{where}: its member {name} is not in {MANIFEST}; nothing was imported.")
        if hashlib.sha256(members[name]).hexdigest() != record.files[name]:
            raise PublishError(
                f"{where}: its member {name} does not match its sha256 in {MANIFEST} (the archive was "
                "changed); nothing was imported."
            )
    return record, members


def import_archive(site: Site, archive: Path, progress: Progress) -> ImportResult:
    """Build and publish on this site's root the generation in ``archive`` (see the module)."""
    from ..build.build import ensure_build, host_platform, plan_lock
    from ..kinds import load_env
    from .publish import build_ref, generation_digest, write_generation
    from .smoke import SmokeWorker

    record, members = read_archive(archive)
    root = Root(site.root)
    with tempfile.TemporaryDirectory(prefix="hubstock-import-") as tmp:
        gen_dir = Path(tmp, "generation")
        for name, data in members.items():
            rel = name[len(f"{TOP}/") :]
            if rel.startswith("generation/"):
                dest = Path(tmp, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
        old = Generation(record.generation, gen_dir)
        try:
            manifest = old.manifest()
        except RecordError as e:
            raise PublishError(f"{archive}: {e} Nothing was imported.") from None
        # the builds, each from its kept lock, with the same id as where it was made
        built = []
        for key in sorted(manifest.build_keys()):
            env_name, bid = key.split("/", 1)
            kept = _record(members, archive, env_name, bid)
            if kept.platform != host_platform():
                raise PublishError(
                    f"{archive}: build {key} is for {kept.platform}, and this machine is {host_platform()}."
                )
            env = load_env(site, env_name)
            plan = plan_lock(site, env, kept.platform, kept.lock.encode("utf-8", errors="surrogateescape"))
            if plan.build_id != bid:
                raise PublishError(
                    f"the lock of build {key} in {archive} builds {plan.build_id} on this site, not {bid} (a venv's "
                    f"interpreter or env {env_name!r}'s groups differ here); nothing was published."
                )
            if ensure_build(site, env, progress, plan=plan).built:
                built.append(key)
        kernels = _kernels(site, old, manifest, record.source_root)
        ext = _extensions(old)
        server = build_ref(site, manifest.server.env, manifest.server.build) if manifest.server else None
        builds = {b.env: build_ref(site, b.env, b.build) for b in manifest.builds.values()}
        digest = generation_digest(kernels, ext, server, manifest.default_kernel)
        names = tuple(k.name for k in kernels)
        with SmokeWorker.start() as smoke, root.locked(on_wait=progress.warn):
            cur = resolve_current(root)
            if cur is not None and cur.manifest().digest == digest:
                progress.step(f"generation {cur.name} has it all already: nothing to publish")
                return ImportResult(cur.name, False, tuple(built), names)
            gen = write_generation(
                site,
                root,
                progress,
                smoke,
                kernels,
                builds,
                server,
                ext,
                manifest.default_kernel,
                digest,
                cur.name if cur else None,
                imported=f"{record.source_root}:{record.generation}",
            )
    progress.step(f"published generation {gen} from {archive} ({len(kernels)} kernel(s))")
    return ImportResult(gen, True, tuple(built), names)


def _record(members: dict[str, bytes], archive: Path, env: str, bid: str) -> BuildRecord:
    name = f"{TOP}/records/{env}/{bid}.json"
    if name not in members:
        raise PublishError(f"{archive}: it has no record of build {env}/{bid}; nothing was imported.")
    try:
        return BuildRecord.from_text(members[name], f"{archive}: {name}")
    except RecordError as e:
        raise PublishError(f"{e} Nothing was imported.") from None


def _kernels(
    site: Site, old: Generation, manifest: GenerationManifest, source_root: str
) -> list[RenderedKernel]:
    """The generation's kernels as published there, on this root's builds: every path of the
    exporting root in a kernel.json names the same place under this one."""
    from .publish import build_ref

    here = str(Root(site.root).path)
    out = []
    for entry in manifest.kernels:
        src = old.entry_dir(entry)
        text = (src / "kernel.json").read_text(encoding="utf-8")
        spec = json.loads(text.replace(source_root.rstrip("/") + "/", here.rstrip("/") + "/"))
        resources = {
            p.relative_to(src).as_posix(): p.read_bytes()
            for p in sorted(src.rglob("*"))
            if p.is_file() and p.name != "kernel.json"
        }
        out.append(RenderedKernel(entry.name, spec, build_ref(site, entry.env, entry.build), resources))
    return out


def _extensions(old: Generation) -> Extensions:
    from ...store.catalog import read_extensions

    ext = read_extensions(old)
    return Extensions(
        ext.get("page_config.json", {}),
        ext.get("overrides.json", {}),
        ext.get("jupyter_server_config.json", {}),
    )
