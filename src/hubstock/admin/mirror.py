"""``hubstock mirror DIR [GEN...]``: every package the given generations' builds are made of, in a
folder that needs no network: a conda channel and a PEP 503 simple index.

    DIR/conda/<subdir>/<file>       the conda archives; repodata.json per subdir (py-rattler's index)
    DIR/simple/<project>/<file>     the wheels; index.html per project, and DIR/simple/index.html
    DIR/hubstock-mirror.json        a MirrorManifest: each file's sha256 and the URL its lock names

A package comes from the root's verified cache (a conda archive the builds downloaded, or the
channel's own file), or else from its locked URL; each file is checked against the lock's sha256
before it is written (atomically). Running it again adds what is missing and nothing else.

Another site (or a cluster without network) lists the folder under ``mirrors`` in its
hubstock.toml: a build then takes each package of its locks from there, found by its sha256,
before its URL (:func:`mirrored`). The locks, and so the build ids, stay the same. Real clients
read it as well: py-rattler solves and installs from ``file://DIR/conda``, and
``uv pip install --index-url file://DIR/simple`` installs the pip part.
"""

from __future__ import annotations

import functools
import html
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.utils import canonicalize_name

from ..errors import BuildError, UsageError
from ..progress import Progress
from ..site import Site
from ..store.builds import read_provenance
from ..store.fs import atomic_write, now_iso
from ..store.generations import current_name, generation
from ..store.records import LockedPackage, MirrorManifest, RecordError
from ..store.root import Root
from .build.cache import sha256_file

MANIFEST = "hubstock-mirror.json"
#: the subdirs py-rattler's index wants, whatever the packages are
_ALWAYS = ("noarch",)


@dataclass(frozen=True)
class MirrorResult:
    dest: Path
    generations: tuple[str, ...]
    conda: int
    pip: int
    added: int


def file_name(url: str) -> str:
    return unquote(urlparse(url).path.rsplit("/", 1)[-1])


def place_of(p: LockedPackage) -> str:
    """Where a locked package goes in a mirror (relative to it)."""
    fn = file_name(p.url)
    if p.manager == "conda":
        subdir = urlparse(p.url).path.rstrip("/").rsplit("/", 2)[-2]
        return f"conda/{subdir}/{fn}"
    return f"simple/{canonicalize_name(p.name)}/{fn}"


def packages_of(root: Root, gens: list[str]) -> tuple[list[str], dict[str, LockedPackage]]:
    """The generations' names and ``place -> package`` of every conda and pip package their
    builds were made of (from each build's provenance)."""
    names, out = [], {}
    for g in gens or ["current"]:
        name = current_name(root) if g == "current" else g
        if not name or not root.generation(name).is_dir():
            raise UsageError(
                f"there is no generation {g!r} on the root {root.path}; `hubstock status` lists them."
            )
        names.append(name)
        for key in sorted(generation(root, name).manifest().build_keys()):
            env, bid = key.split("/", 1)
            prov = read_provenance(root.build(env, bid))
            if prov is None:
                raise BuildError(
                    f"build {key} of generation {name} is no longer on the root; bring it back with "
                    f"`hubstock reproduce {key} --restore`, then mirror again."
                )
            for p in prov.packages:
                if p.manager in ("conda", "pip") and p.sha256:
                    out[place_of(p)] = p
    return names, out


def mirror(site: Site, dest: Path, gens: list[str], progress: Progress) -> MirrorResult:
    """Write the packages of ``gens`` (default: the current one) into ``dest`` (see the module)."""
    root = Root(site.root)
    names, wanted = packages_of(root, gens)
    dest.mkdir(parents=True, exist_ok=True)
    old = _read_manifest(dest)
    files = dict(old.files) if old else {}
    urls = dict(old.urls) if old else {}
    added = 0
    progress.step(f"mirroring {len(wanted)} package file(s) of generation(s) {', '.join(names)} into {dest}")
    for place, p in sorted(wanted.items()):
        target = dest / place
        if files.get(place) == p.sha256 and target.is_file():
            continue
        _fetch(root, p, target)
        files[place], urls[place] = p.sha256, p.url
        added += 1
    conda = sorted({pl.split("/")[1] for pl in files if pl.startswith("conda/")} | set(_ALWAYS))
    for subdir in conda:
        (dest / "conda" / subdir).mkdir(parents=True, exist_ok=True)
    progress.step(f"indexing the channel {dest / 'conda'} ({', '.join(conda)})")
    index_channel(dest / "conda")
    _write_simple_index(dest / "simple", {pl: h for pl, h in files.items() if pl.startswith("simple/")})
    gens_all = sorted(set(old.generations if old else []) | set(names))
    record = MirrorManifest(generations=gens_all, updated=now_iso(), files=files, urls=urls)
    atomic_write(dest / MANIFEST, record.to_json(), mode=0o644)  # last: the mirror is whole
    n_conda = sum(1 for p in wanted.values() if p.manager == "conda")
    return MirrorResult(dest, tuple(names), n_conda, len(wanted) - n_conda, added)


def _fetch(root: Root, p: LockedPackage, target: Path) -> None:
    """``p``'s file at ``target``, checked against its sha256: from the root's verified cache,
    the channel's own file, or its URL."""
    u = urlparse(p.url)
    candidates = [Path(unquote(u.path))] if u.scheme == "file" else [root.downloads / file_name(p.url)]
    source = next((c for c in candidates if c.is_file() and sha256_file(c) == p.sha256), None)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                with open(source, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            else:
                import urllib.request

                try:
                    with urllib.request.urlopen(p.url, timeout=60) as resp:
                        shutil.copyfileobj(resp, out, 1 << 20)
                except OSError as e:
                    raise BuildError(
                        f"package {p.name} {p.version} could not be fetched from {p.url} ({e}); nothing of it "
                        "was written: check the network or the index, and mirror again."
                    ) from None
        got = sha256_file(Path(tmp))
        if got != p.sha256:
            raise BuildError(
                f"package {p.name} {p.version} from {p.url} has sha256 {got[:16]}..., its lock says "
                f"{p.sha256[:16]}...; it was not mirrored."
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_INDEX = """
import asyncio, os, sys
from rattler.index import index_fs
asyncio.run(index_fs(sys.argv[1], write_zst=False, write_shards=False, force=True))
sys.stdout.flush()
os._exit(0)  # index_fs may crash the interpreter at its exit: skip the teardown
"""


def index_channel(channel: Path) -> None:
    """``repodata.json`` of every subdir of ``channel``, with py-rattler's indexer (in a child
    process: it can crash the interpreter that ran it at exit)."""
    proc = subprocess.run(
        [sys.executable, "-c", _INDEX, str(channel)], capture_output=True, text=True, check=False
    )
    shutil.rmtree(channel / ".tmp", ignore_errors=True)  # the indexer's scratch folder
    missing = [
        d.name
        for d in channel.iterdir()
        if d.is_dir() and not d.name.startswith(".") and not (d / "repodata.json").is_file()
    ]
    if proc.returncode != 0 or missing:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise BuildError(
            f"indexing the channel {channel} failed ({said[-1] if said else f'exit {proc.returncode}'}); "
            "run `hubstock mirror` again."
        )


def _write_simple_index(simple: Path, files: dict[str, str]) -> None:
    """PEP 503 pages: one per project (each file with its sha256), and the root's list."""
    projects: dict[str, list[tuple[str, str]]] = {}
    for place, sha in files.items():
        _, project, fn = place.split("/", 2)
        projects.setdefault(project, []).append((fn, sha))
    simple.mkdir(parents=True, exist_ok=True)
    for project, entries in projects.items():
        links = "".join(
            f'<a href="{html.escape(fn)}#sha256={sha}">{html.escape(fn)}</a><br>\n'
            for fn, sha in sorted(entries)
        )
        page = f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n"
        atomic_write(simple / project / "index.html", page, mode=0o644)
    links = "".join(f'<a href="{p}/">{p}</a><br>\n' for p in sorted(projects))
    atomic_write(simple / "index.html", f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n", mode=0o644)


def _read_manifest(dest: Path) -> MirrorManifest | None:
    try:
        return MirrorManifest.read_optional(dest / MANIFEST)
    except RecordError as e:
        raise BuildError(f"{e} (remove {dest / MANIFEST} to write the mirror anew)") from None


@functools.lru_cache(maxsize=16)
def _index_of(manifest: Path, mtime_ns: int) -> dict[str, str]:
    """``sha256 -> place`` of a mirror (read again when its manifest changes)."""
    try:
        record = MirrorManifest.read_optional(manifest)
    except RecordError:
        return {}
    return {sha: place for place, sha in record.files.items()} if record else {}


def mirrored(site: Site, url: str, sha256: str) -> Path | None:
    """The file of the package locked as ``url`` with ``sha256`` in one of the site's ``mirrors``
    (checked against that sha256), or None."""
    if not sha256:
        return None
    for m in site.mirror_dirs():
        manifest = m / MANIFEST
        try:
            st = manifest.stat()
        except OSError:
            continue
        place = _index_of(manifest, st.st_mtime_ns).get(sha256)
        if place and place.endswith("/" + file_name(url)):
            path = m / place
            if path.is_file() and sha256_file(path) == sha256:
                return path
    return None
