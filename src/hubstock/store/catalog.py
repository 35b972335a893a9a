"""What users may know about the root: published generations, their kernels' packages, defaults.

The read side that ``hubstock diff`` and the hub's "Stock environments" page share.
It reads only the root (manifests, build provenance, the extension defaults inside
each generation), never the site repository, so it still answers after the site
has moved on.

:class:`Catalog` caches what it read: a published generation and a complete build
never change, so their contents are kept, keyed by the manifest's or provenance's
identity on disk (inode and mtime: a generation removed and made again is read again).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .builds import read_provenance
from .diff import GenerationContents, GenerationDiff, diff_generations
from .generations import Generation, generation, generations
from .records import BuildProvenance, GenerationManifest, LockedPackage, RecordError
from .root import PROVENANCE, Root


def extension_paths(gen: Generation) -> dict[str, Path]:
    """Where a generation keeps each extension-default file (see ``admin/extensions.py``)."""
    return {
        "page_config.json": gen.config_path / "labconfig" / "page_config.json",
        "overrides.json": gen.lab_settings_dir / "overrides.json",
        "jupyter_server_config.json": gen.config_path / "jupyter_server_config.json",
    }


def read_extensions(gen: Generation) -> dict[str, Any]:
    """The JSON content of each extension-default file ({} when absent or unreadable)."""
    out: dict[str, Any] = {}
    for name, path in extension_paths(gen).items():
        try:
            out[name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out[name] = {}
    return out


def _build_keys(manifest: GenerationManifest) -> list[tuple[str, str]]:
    keys = [(k.env, k.build) for k in manifest.kernels]
    if manifest.server:
        keys.append((manifest.server.env, manifest.server.build))
    return list(dict.fromkeys(keys))


def _provenance(root: Root, env: str, build: str) -> BuildProvenance | None:
    try:
        return read_provenance(root.build(env, build))
    except RecordError:
        return None


def previous_generation(name: str, names: list[str]) -> str | None:
    """The generation before ``name`` in publishing order (the numbered list ``names``)."""
    earlier = [g for g in names if int(g) < int(name)]
    return earlier[-1] if earlier else None


#: the conda packages (and Lmod module families) that are each kernel language
_LANGUAGE_PACKAGES = {"python": ["python"], "r": ["r-base", "r"], "julia": ["julia"]}


def language_version(language: str | None, provenance: BuildProvenance | None) -> str | None:
    """The version of the kernel's language in its build, by the build's kind: a conda env's
    package (``python`` for Python, ``r-base`` for R...); a venv's interpreter (its full version,
    for a Python kernel); a module env's module of that language (``R/4.2`` -> ``4.2``)."""
    if not language or provenance is None:
        return None
    lang = language.lower()
    names = _LANGUAGE_PACKAGES.get(lang, [lang])
    if provenance.kind == "venv":
        i = provenance.interpreter
        return i.version if i is not None and lang == "python" else None
    manager = "module" if provenance.kind == "module" else "conda"
    by_name: dict[str, str] = {}
    for p in provenance.packages:
        if p.manager == manager:
            by_name.setdefault(p.name.lower(), p.version)
    for n in names:
        if n in by_name:
            return by_name[n]
    return None


def package_source(p: LockedPackage) -> tuple[str, str]:
    """(short label, full location) of where a package came from: its conda channel, PyPI (or the
    index it came from), or for an Lmod module its modulefile."""
    if p.manager == "module":
        return "module", p.url
    u = urlparse(p.url)
    if p.manager == "pip":
        host = u.hostname or ""
        if host in ("files.pythonhosted.org", "pypi.org", "pypi.python.org"):
            return "PyPI", "https://pypi.org/project/" + p.name
        return f"pip ({host or u.scheme})", p.url.rsplit("/", 1)[0]
    channel = p.url.rsplit("/", 2)[0] if p.url.count("/") >= 3 else p.url
    cu = urlparse(channel)
    if cu.hostname in ("conda.anaconda.org", "repo.anaconda.com", "prefix.dev", "repo.prefix.dev"):
        label = cu.path.strip("/").split("/")[0] or cu.hostname or channel
    else:
        label = cu.path.rstrip("/").rsplit("/", 1)[-1] or cu.hostname or channel
    return label, channel


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Catalog:
    """Reads generations and diffs through a cache (they are immutable once published).

    Not thread-safe: one per process, used from one event loop.
    """

    def __init__(self, root: Root, max_entries: int = 512) -> None:
        self.root = root
        self.max_entries = max_entries
        self._contents: OrderedDict[tuple[str, Any], GenerationContents] = OrderedDict()
        self._provenances: OrderedDict[tuple[str, str, Any], BuildProvenance | None] = OrderedDict()
        self._diffs: OrderedDict[tuple[Any, Any], GenerationDiff] = OrderedDict()

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> Any:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)
        return value

    def _key(self, gen: Generation) -> tuple[str, Any]:
        return gen.name, _identity(gen.manifest_path)

    def provenance(self, env: str, build: str) -> BuildProvenance | None:
        key = (env, build, _identity(self.root.build(env, build) / PROVENANCE))
        if key in self._provenances:
            self._provenances.move_to_end(key)
            return self._provenances[key]
        return self._remember(self._provenances, key, _provenance(self.root, env, build))

    def contents(self, gen: Generation) -> GenerationContents:
        """What ``gen`` holds (cached; a :class:`RecordError` when its manifest is unreadable)."""
        key = self._key(gen)
        if key[1] is not None and key in self._contents:
            self._contents.move_to_end(key)
            return self._contents[key]
        manifest = gen.manifest()
        contents = GenerationContents(
            name=gen.name,
            manifest=manifest,
            provenances={f"{e}/{b}": self.provenance(e, b) for e, b in _build_keys(manifest)},
            extensions=read_extensions(gen),
        )
        return self._remember(self._contents, key, contents)

    def diff(self, before: Generation | None, after: Generation) -> GenerationDiff:
        """The diff from ``before`` to ``after`` (cached per pair)."""
        key = (self._key(before) if before else None, self._key(after))
        if key in self._diffs:
            self._diffs.move_to_end(key)
            return self._diffs[key]
        a = self.contents(before) if before else None
        result = diff_generations(a, self.contents(after))
        return self._remember(self._diffs, key, result)

    def generation_names(self) -> list[str]:
        """Complete generations, oldest first."""
        return generations(self.root)

    def generation(self, name: str) -> Generation:
        return generation(self.root, name)

    def readable(self, gen: Generation) -> GenerationContents | None:
        with contextlib.suppress(RecordError):
            return self.contents(gen)
        return None
