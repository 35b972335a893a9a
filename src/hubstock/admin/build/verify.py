"""``hubstock verify [ENV...] [--repair]``: re-hash builds and the package cache, like ``rpm -V``.

A build is checked against what its packages declare: every conda package's files as its
``conda-meta/<package>.json`` lists them (``paths_data``: type, size, sha256, the sha256
after the install rewrote the prefix, link targets), every pip package's files as its
``RECORD`` lists them, and every other file (byte-code, files written at install time)
against the list the build recorded when it was made. Files no one declares, and anything
others may write, are reported too. The cache is checked as a build checks it before
linking (:mod:`.cache`). Every file that differs is reported, one line each.

A build that no longer verifies is recorded as damaged (``status`` says so) and the next
``hubstock build`` of its env replaces it; ``--repair`` removes damaged cache entries and
rebuilds damaged builds that are the current build of a site env at once.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import posixpath
import stat
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ...errors import HubstockError, UsageError
from ...progress import Progress
from ...site import Site
from ...store.access import access_problems, close_to
from ...store.builds import (
    OWN_FILES,
    build_ids,
    clear_damage,
    current_link,
    env_names,
    is_complete,
    read_build_files,
    read_provenance,
    record_damage,
)
from ...store.fs import link_target, now_iso
from ...store.generations import generation, generations
from ...store.records import BuildDamage, BuildFiles, LockedPackage, RecordError
from ...store.root import Root
from . import cache, wheels
from .bytecode import source_of
from .cache import Finding, check_files, hash_many
from .wheels import wheel_id

#: how many findings a damage record keeps
KEEP_FINDINGS = 50


@dataclass
class BuildCheck:
    env: str
    build_id: str
    findings: list[Finding]
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.findings


@dataclass
class VerifyReport:
    builds: list[BuildCheck] = field(default_factory=list)
    cache: dict[str, list[Finding]] = field(default_factory=dict)
    repaired_cache: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # what --repair could not fix, one sentence each
    #: published kernels for some groups only that are open to others: ``<gen>/<kernel>`` -> findings
    kernels: dict[str, list[Finding]] = field(default_factory=dict)
    repaired_kernels: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            all(b.ok or b.repaired for b in self.builds)
            and (not self.cache or set(self.cache) <= set(self.repaired_cache))
            and set(self.kernels) <= set(self.repaired_kernels)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "builds": [
                {
                    "env": b.env,
                    "build": b.build_id,
                    "ok": b.ok,
                    "repaired": b.repaired,
                    "findings": [f.to_json() for f in b.findings],
                }
                for b in self.builds
            ],
            "cache": [
                {
                    "package": dist,
                    "ok": not findings,
                    "repaired": dist in self.repaired_cache,
                    "findings": [f.to_json() for f in findings],
                }
                for dist, findings in sorted(self.cache.items())
            ],
            "kernels": [
                {
                    "kernel": key,
                    "repaired": key in self.repaired_kernels,
                    "findings": [f.to_json() for f in findings],
                }
                for key, findings in sorted(self.kernels.items())
            ],
            "left": self.left,
        }


# --- what a build's packages declare ----------------------------------------------------------


def declared_files(prefix: Path) -> dict[str, tuple[str, dict]]:
    """``relpath -> (package, entry)`` for every file a package of the build declares, with
    entries in the form :func:`~.cache.check_files` reads."""
    out: dict[str, tuple[str, dict]] = {}
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            data = json.loads(meta.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        label = f"{data.get('name')}-{data.get('version')}-{data.get('build')}"
        paths = (data.get("paths_data") or {}).get("paths")
        if isinstance(paths, list):
            for p in paths:
                if isinstance(p, dict) and isinstance(p.get("_path"), str):
                    out[p["_path"]] = (label, _conda_entry(p))
        else:
            for rel in data.get("files") or []:
                if isinstance(rel, str):
                    out[rel] = (label, {"_path": rel, "path_type": "any"})
    for record in sorted(prefix.glob("lib/python*/site-packages/*.dist-info/RECORD")):
        rel = record.relative_to(prefix).as_posix()
        if rel in out:
            continue  # a conda package's: its conda-meta declares it
        for relpath, entry in _record_entries(prefix, record):
            out.setdefault(relpath, (record.parent.name, entry))
    return out


def _conda_entry(p: dict) -> dict:
    kind = p.get("path_type", "hardlink")
    if kind == "softlink":
        entry: dict = {"_path": p["_path"], "path_type": "softlink"}
        if p.get("sha256_in_prefix"):
            entry["target_sha256"] = p["sha256_in_prefix"]
        return entry
    if kind == "directory":
        return {"_path": p["_path"], "path_type": "directory"}
    if p.get("sha256_in_prefix"):  # the install rewrote the prefix in it: its size changed too
        return {"_path": p["_path"], "path_type": "hardlink", "sha256": p["sha256_in_prefix"]}
    return {
        "_path": p["_path"],
        "path_type": "hardlink",
        "sha256": p.get("sha256"),
        "size_in_bytes": p.get("size_in_bytes"),
    }


def _record_entries(prefix: Path, record: Path) -> list[tuple[str, dict]]:
    """The hashed files of a wheel's ``RECORD`` (relative to the build)."""
    try:
        text = record.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    base = record.parent.parent.relative_to(prefix).as_posix()  # lib/pythonX.Y/site-packages
    out = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 2 or not row[1].startswith("sha256="):
            continue
        b64 = row[1].split("=", 1)[1]
        try:
            sha = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
        except ValueError:
            continue
        rel = f"{base}/{row[0]}"
        if "/." in rel or rel.startswith(".") or "//" in rel:
            rel = posixpath.normpath(rel)
        if rel.startswith(("..", "/")):
            continue
        entry: dict = {"_path": rel, "path_type": "hardlink", "sha256": sha}
        if len(row) > 2 and row[2].isdigit():
            entry["size_in_bytes"] = int(row[2])
        out.append((rel, entry))
    return out


def build_file_list(
    prefix: Path,
    build_id: str,
    known: dict[str, str] | None = None,
    compiled: set[str] | None = None,
    declared: Container[str] | None = None,
    tree: Iterable[tuple[str, os.stat_result]] | None = None,
) -> BuildFiles:
    """The sha256 of every file of the freshly made build that no package declares (files
    written at install time), of its byte-code, and the target of every such link.

    ``known`` gives the sha256 of files whose content hubstock already knows (the byte-code
    linked from the wheel cache): they are recorded as they are, whether ``tree`` holds them
    or not. With ``compiled`` (the sources the
    build byte-compiled), a pyc a package declares is left to its declaration unless its source
    is one of those; without it, every pyc is recorded. ``declared`` (default: what the build's
    ``conda-meta`` and ``RECORD`` files declare) and ``tree`` (every path below the build with
    its ``lstat``, default: walked here) save reading again what the caller already has."""
    if declared is None:
        declared = {
            rel for rel, (_label, entry) in declared_files(prefix).items() if entry.get("path_type") != "any"
        }
    known = known or {}
    regular, links, files = [], {}, dict(known)
    base = os.fspath(prefix)
    cut = len(base) + 1
    for path, st in tree if tree is not None else _walk(base):
        if stat.S_ISDIR(st.st_mode):
            continue
        rel = path[cut:]
        if rel in OWN_FILES:
            continue
        if rel in known:
            files[rel] = known[rel]
            continue
        folder = rel.rpartition("/")[0]
        pyc = folder == "__pycache__" or folder.endswith("/__pycache__")
        if rel in declared and (not pyc or (compiled is not None and source_of(rel) not in compiled)):
            continue
        if stat.S_ISLNK(st.st_mode):
            links[rel] = "link:" + link_target(path)
        else:
            regular.append(path)
    hashes = hash_many(regular)
    files.update({p[cut:]: h or "" for p, h in hashes.items()})
    return BuildFiles(build_id=build_id, files={**files, **links})


def file_map(
    prefix: Path,
    tree: Iterable[tuple[str, os.stat_result]] | None = None,
    recorded: BuildFiles | None = None,
    linked: Mapping[str, str] | None = None,
    hashes: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What every file of a build is: ``rel -> sha256``, ``link:<target>`` for a symbolic link;
    the build's own records left out. With ``recorded`` (a complete build's file list), a file
    it or a package of the build declares is taken at its word (the build checked them when it
    was made); without it, every file is read and hashed (a build to compare with another).

    A build being made passes what it already holds, so nothing is walked or parsed again:
    ``tree`` (every path below it with its ``lstat``, but for ``linked``), ``linked`` (the
    caches' checked files it hard-linked, ``prefix/rel -> sha256``) and ``hashes`` (the sha256
    its packages' records give their files, ``rel -> sha256``, in place of reading them here)."""
    declared: dict[str, str] = {}
    if recorded is not None:
        if hashes is not None:
            declared.update(hashes)
        else:
            for rel, (_label, entry) in declared_files(prefix).items():
                if entry.get("path_type") == "hardlink" and entry.get("sha256"):
                    declared[rel] = entry["sha256"]
        declared.update(recorded.files)
    base = os.fspath(prefix)
    cut = len(base) + 1
    out: dict[str, str] = {}
    regular = []
    for path, st in tree if tree is not None else _walk(base):
        rel = path[cut:]
        if stat.S_ISDIR(st.st_mode) or rel in OWN_FILES:
            continue
        if stat.S_ISLNK(st.st_mode):
            out[rel] = "link:" + link_target(path)
        elif rel in declared and not declared[rel].startswith("link:"):
            out[rel] = declared[rel]
        else:
            regular.append(path)
    for path, sha in (linked or {}).items():
        out[path[cut:]] = sha
    out.update({p[cut:]: h or "" for p, h in hash_many(regular).items()})
    return out


def _walk(base: str) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(base):
        for name in (*dirnames, *filenames):
            path = f"{dirpath}/{name}"
            yield path, os.lstat(path)


# --- checking ---------------------------------------------------------------------------------


def verify_build(root: Root, env: str, bid: str) -> list[Finding]:
    """Every file of the build that differs from what declares it; every file others may write."""
    prefix = root.build(env, bid)
    declared = declared_files(prefix)
    try:
        own = read_build_files(prefix)
    except RecordError:
        own = None
    by_package: dict[str, list[dict]] = {}
    mine = set(own.files) if own is not None else set()
    for rel, (label, entry) in declared.items():
        if entry.get("path_type") != "any" and rel not in mine:
            by_package.setdefault(label, []).append(entry)
    if own is not None:
        for rel, value in own.files.items():
            if value.startswith("link:"):
                entry = {"_path": rel, "path_type": "softlink", "target": value[5:]}
            else:
                entry = {"_path": rel, "path_type": "hardlink", "sha256": value}
            by_package.setdefault("hubstock build", []).append(entry)
    findings: list[Finding] = []
    for label, entries in by_package.items():
        findings += check_files(prefix, entries, label, None)
    for rel, (label, entry) in declared.items():
        if entry.get("path_type") == "any" and not os.path.lexists(prefix / rel):
            findings.append(Finding("missing", prefix / rel, label))
    findings += access_findings(prefix)
    known = set(declared) | set(own.files if own else ()) | set(OWN_FILES)
    for dirpath, dirnames, filenames in os.walk(prefix):
        st = os.lstat(dirpath)
        if stat.S_IMODE(st.st_mode) & 0o022:
            findings.append(Finding(".M....", Path(dirpath), "hubstock build"))
        if own is None:
            continue
        for name in (*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))):
            rel = os.path.relpath(os.path.join(dirpath, name), prefix)
            if rel not in known:
                findings.append(Finding("extra", prefix / rel, "hubstock build"))
    return sorted(findings, key=lambda f: str(f.path))


#: the flags of a folder for some groups only that is open to others, or closed to its groups
ACCESS = "....G..."


def access_findings(prefix: Path) -> list[Finding]:
    """A build for some groups only (its provenance's ``groups``) whose top folder is not theirs
    alone (:mod:`hubstock.store.access`)."""
    try:
        prov = read_provenance(prefix)
    except RecordError:
        return []
    if prov is None or not prov.groups:
        return []
    problems = access_problems(prefix, prov.groups)
    return [Finding(ACCESS, prefix, f"for {', '.join(prov.groups)} only: {p}") for p in problems]


def restricted_kernels(root: Root) -> list[tuple[str, Path, list[str]]]:
    """``(<gen>/<kernel>, its closed folder, its groups)`` of every published kernel for some groups."""
    out = []
    for name in generations(root):
        gen = generation(root, name)
        try:
            manifest = gen.manifest()
        except RecordError:
            continue
        out += [
            (f"{name}/{k.name}", gen.restricted_dir(k.name), k.groups) for k in manifest.kernels if k.groups
        ]
    return out


def close_again(report: VerifyReport, root: Root) -> None:
    """``--repair`` of access: close every restricted build and kernel folder found open again
    (nothing is rebuilt for a mode); call with the root's lock held."""
    for b in report.builds:
        opened = [f for f in b.findings if f.flags == ACCESS]
        if not opened:
            continue
        prov = read_provenance(root.build(b.env, b.build_id))
        assert prov is not None
        try:
            close_to(root.build(b.env, b.build_id), prov.groups, f"build {b.env}/{b.build_id}")
        except HubstockError as e:
            report.left.append(f"{b.env}/{b.build_id} could not be closed again: {e}")
            continue
        b.findings = [f for f in b.findings if f.flags != ACCESS] + access_findings(
            root.build(b.env, b.build_id)
        )
        b.repaired = b.repaired or not b.findings
    for key, path, groups in restricted_kernels(root):
        if key not in report.kernels:
            continue
        try:
            close_to(path, groups, f"kernel {key}")
        except HubstockError as e:
            report.left.append(f"kernel {key} could not be closed again: {e}")
            continue
        if not access_problems(path, groups):
            report.repaired_kernels.append(key)


def check_build(root: Root, env: str, bid: str) -> BuildCheck:
    return BuildCheck(env, bid, verify_build(root, env, bid))


def _record(root: Root, check: BuildCheck) -> None:
    if check.ok:
        clear_damage(root, check.env, check.build_id)
        return
    record_damage(
        root,
        BuildDamage(
            env=check.env,
            build_id=check.build_id,
            checked=now_iso(),
            problems=[f.line() for f in check.findings[:KEEP_FINDINGS]],
            count=len(check.findings),
        ),
    )


def builds_using(root: Root, dists: set[str]) -> list[tuple[str, str]]:
    """The complete builds on the root that installed any of the cached packages ``dists``
    (conda packages' ``<name>-<version>-<build>``, pip packages' :func:`~.wheels.wheel_id`)."""
    out = []
    for env in env_names(root):
        for bid in build_ids(root, env):
            prefix = root.build(env, bid)
            if not is_complete(prefix, bid):
                continue
            try:
                prov = read_provenance(prefix)
            except RecordError:
                prov = None
            used = {_cached_as(p) for p in (prov.packages if prov else [])}
            if used & dists:
                out.append((env, bid))
    return out


def _cached_as(p: LockedPackage) -> str:
    """What names the package in the root's caches."""
    return cache.dist_of(p.url) if p.manager == "conda" else wheel_id(p.name, p.version, p.sha256)


def recheck_builds(root: Root, dists: set[str]) -> list[BuildCheck]:
    """Verify (and record) the builds that link packages found damaged in the cache: a file
    changed in place in the cache changed them too. Call with the root's lock held."""
    checks = [check_build(root, env, bid) for env, bid in builds_using(root, dists)]
    for c in checks:
        _record(root, c)
    return checks


def verify(site: Site, envs: list[str], repair: bool, progress: Progress) -> VerifyReport:
    """Check the builds of ``envs`` (default: every env on the root) and the cached packages
    they use (all of the cache without ``envs``); record what is damaged; with ``repair``,
    remove the damaged cache entries (:func:`.repair.repair` rebuilds the damaged builds)."""
    root = Root(site.root)
    on_root = env_names(root)
    for name in envs:
        if name not in on_root and name not in site.env_names():
            raise UsageError(
                f"no environment named {name!r} on the site or the root {root.path} "
                f"(the root has: {', '.join(on_root) or 'none'})."
            )
    names = [e for e in (envs or on_root) if e in on_root]
    report = VerifyReport()
    progress.step(f"verifying the builds of {', '.join(names) or 'no env'}")
    for env in names:
        for bid in build_ids(root, env):
            if is_complete(root.build(env, bid), bid):
                report.builds.append(check_build(root, env, bid))
        current = current_link(root, env)
        if current is not None and not is_complete(root.build(env, current), current):
            # the env's current build is missing or was never finished: damage, never "clean"
            what = "missing" if not os.path.lexists(root.build(env, current)) else "incomplete"
            finding = Finding("missing", root.build(env, current), f"the current build of {env}, {what}")
            report.builds.append(BuildCheck(env, current, [finding]))
    if envs:
        dists: set[str] = set()
        for b in report.builds:
            try:
                prov = read_provenance(root.build(b.env, b.build_id))
            except RecordError:
                continue
            dists |= {_cached_as(p) for p in (prov.packages if prov else [])}
        entries = sorted(d for d in dists if os.path.lexists(root.pkg_entry(d)))
        whl = [k for k in wheels.entries(root) if k.rsplit("-", 1)[0] in dists]
    else:
        entries = cache.cache_entries(root)
        whl = wheels.entries(root)
    progress.step(f"verifying {len(entries) + len(whl)} cached package(s)")
    for key in whl:
        findings = wheels.check_wheel(root, key)
        if findings:
            report.cache[key] = findings
    archives = _known_archives(root)
    for dist in entries:
        sha, archive = archives.get(dist, (None, None))
        if archive is not None and cache.sha256_file(archive) != sha:
            archive = None  # not the archive the builds were made from: nothing to compare with
        findings = cache.check_entry(root, dist, sha, archive)
        if findings:
            report.cache[dist] = findings
    if not envs:
        for key, path, groups in restricted_kernels(root):
            problems = access_problems(path, groups)
            if problems:
                report.kernels[key] = [
                    Finding(ACCESS, path, f"for {', '.join(groups)} only: {p}") for p in problems
                ]
    if not report.builds and not report.cache and not root.lock_file.exists():
        return report  # nothing hubstock made: nothing to record either
    with root.locked(on_wait=progress.warn, create=False):
        if repair:
            close_again(report, root)
        for b in report.builds:
            _record(root, b)
        if repair:
            for dist in report.cache:
                if os.path.lexists(root.wheel_entry(dist)):
                    wheels.discard(root, dist)
                else:
                    cache.discard(root, dist)
                report.repaired_cache.append(dist)
    return report


def _known_archives(root: Root) -> dict[str, tuple[str, Path]]:
    """``dist -> (sha256, archive)`` for every conda package a build on the root names whose
    archive is still at hand (a ``file://`` channel, or the root's downloads)."""
    out: dict[str, tuple[str, Path]] = {}
    for env in env_names(root):
        for bid in build_ids(root, env):
            try:
                prov = read_provenance(root.build(env, bid))
            except RecordError:
                continue
            for p in prov.packages if prov else []:
                if p.manager != "conda":
                    continue
                u = urlparse(p.url)
                path = (
                    Path(unquote(u.path)) if u.scheme == "file" else root.downloads / p.url.rsplit("/", 1)[-1]
                )
                if path.is_file():
                    out[cache.dist_of(p.url)] = (p.sha256, path)
    return out
