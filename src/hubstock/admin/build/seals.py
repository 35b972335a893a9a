"""Seals of the package cache's entries, and the fingerprints that make checking them cheap.

A sealed entry records the archive it came from and, for every file and folder, the inode,
size and modification time it had when hubstock hashed it (:func:`fingerprints`). Before an
install, :func:`still_sealed` costs one ``lstat`` a path; only an entry that changed is hashed
again in full (:mod:`.cache`).

The modification time can be set back; the change time cannot (but by setting the clock back),
so the quick check also holds each file's change time to the entry's *watermark*: the time,
by the root filesystem's clock, until which hubstock has accounted for every change of the
entry's files (:class:`Watermarks`, one small file per cache). Linking a cached file into a
build, or deleting a build, moves its change time too; those moves happen while a build or
``gc`` holds the root's lock, and each then moves the watermarks of the entries it checked
(:meth:`Watermarks.advance`). A change time later than the watermark and earlier than the
current holder's lock (:meth:`Root.held_since`) is an edit nobody accounted for: the entry is
hashed in full."""

from __future__ import annotations

import json
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from ...store.fs import fsync_dir, make_read_only, read_regular
from ...store.perms import set_mode
from ...store.records import CacheSeal, RecordError, WheelSeal
from ...store.root import CACHE_SEAL, Root


def admin_uid(root: Root) -> int | None:
    """Whose the cache is: the owner of ``pkgs/`` (the admin who builds)."""
    try:
        return os.lstat(root.pkgs).st_uid
    except OSError:
        return None


# --- fingerprints: what was hashed is still there -------------------------------------------


def fingerprint(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class Watermarks:
    """Per cache entry, the time (ns, by the root filesystem's clock) until which every change of
    its files' change times is accounted for; kept in one file per cache, rewritten by the lock's
    holder. An entry with no watermark (sealed by a hubstock that kept none) is hashed in full
    once."""

    def __init__(self, path: Path, since: int | None) -> None:
        self.path = path
        self.since = since  # when the current holder took the root's lock (None: not held)
        data = read_regular(path)
        try:
            loaded = json.loads(data) if data else {}
        except ValueError:
            loaded = {}
        self.marks: dict[str, int] = {
            k: v for k, v in (loaded if isinstance(loaded, dict) else {}).items() if isinstance(v, int)
        }

    def accepts(self, entry: str) -> Callable[[int], bool] | None:
        """The test a file's change time must pass (None: the entry has no watermark)."""
        mark = self.marks.get(entry)
        if mark is None:
            return None
        since = self.since
        if since is None:
            return lambda ctime: ctime <= mark
        return lambda ctime: ctime <= mark or ctime >= since

    def made_now(self, entries: Iterable[str]) -> None:
        """Entries this holder made (and sealed) just now: accepted as they are for the rest of
        the install, until :meth:`advance` records them."""
        self.marks.update(dict.fromkeys(entries, 1 << 62))

    def advance(self, entries: Iterable[str]) -> None:
        """The holder checked ``entries`` and changed them only by links and unlinks of its own:
        their watermarks become now. Written without waiting for the disk (a watermark lost in
        a crash is only an entry hashed in full once more)."""
        entries = list(entries)
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            now = os.fstat(fd).st_ctime_ns  # the filesystem's own clock
            self.marks = {k: v for k, v in self.marks.items() if v < 1 << 62}  # made_now, not advanced
            self.marks.update(dict.fromkeys(entries, now))
            os.write(fd, json.dumps(self.marks, sort_keys=True).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


def fingerprints(top: Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """:func:`fingerprint` (inode, size, mtime, ctime) of every file and folder below ``top`` (not ``top``
    itself; not the top-level names in ``skip``), by path relative to ``top``."""
    out: dict[str, str] = {}
    base = os.fspath(top)
    cut = len(base) + 1
    for dirpath, dirnames, filenames in os.walk(base):
        if dirpath == base:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in (*dirnames, *filenames):
            path = f"{dirpath}/{name}"
            out[path[cut:]] = fingerprint(os.lstat(path))
    return out


def unchanged(
    top: Path,
    stat_map: dict[str, str],
    owner: int | None,
    own: frozenset[str],
    ctime_ok: Callable[[int], bool] | None = None,
) -> bool:
    """Whether everything below ``top`` is still what :func:`fingerprints` found: the same inode,
    size and modification time for each path, a change time ``ctime_ok`` accepts (see
    :class:`Watermarks`; None: the entry has none, so it is not known unchanged), nothing added
    at the top (besides ``own``: the seal), owned by ``owner`` and read-only (as sealing left it:
    a build that links a file may count on its mode). A file changed in place changes its
    ctime; one replaced, added or removed changes its folder's. Costs one ``lstat`` a path."""
    if not stat_map or ctime_ok is None:
        return False
    try:
        st = os.lstat(top)
        names = set(os.listdir(top))
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022 or (owner is not None and st.st_uid != owner):
        return False
    if names != {rel.split("/", 1)[0] for rel in stat_map} | own:
        return False
    base = os.fspath(top) + "/"
    lstat, is_link = os.lstat, stat.S_ISLNK
    for rel, was in stat_map.items():
        try:
            st = lstat(base + rel)
        except OSError:
            return False
        if f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}" != was or not ctime_ok(st.st_ctime_ns):
            return False
        if not is_link(st.st_mode) and (st.st_mode & 0o222 or (owner is not None and st.st_uid != owner)):
            return False
    return True


def read_seal(root: Root, dist: str) -> CacheSeal | None:
    data = read_regular(root.pkg_seal(dist))
    if data is None:
        return None
    try:
        return CacheSeal.from_text(data, str(root.pkg_seal(dist)))
    except RecordError:
        return None


def pkg_watermarks(root: Root) -> Watermarks:
    """The package cache's :class:`Watermarks` (with the lock holder's time, if this process holds it)."""
    return Watermarks(root.cache / "ctime-pkgs.json", root.held_since())


def still_sealed(root: Root, dist: str, archive_sha256: str, marks: Watermarks) -> bool:
    """The quick check before an install: the package is sealed for this archive and nothing in
    it changed since it was hashed (:func:`unchanged`)."""
    seal = read_seal(root, dist)
    return (
        seal is not None
        and seal.package == dist
        and seal.archive_sha256 == archive_sha256
        and unchanged(
            root.pkg_entry(dist), seal.stat, admin_uid(root), frozenset([CACHE_SEAL]), marks.accepts(dist)
        )
    )


def write_seal(entry: Path, record: CacheSeal | WheelSeal, name: str) -> None:
    """Write the seal into ``entry`` (made writable for the admin for it), then make it read-only."""
    set_mode(entry, 0o700)
    tmp = entry / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
    with open(fd, "wb") as f:
        f.write(record.to_json().encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, entry / name)
    set_mode(entry, 0o555)
    fsync_dir(entry)


def refresh_fingerprints(root: Root, dist: str) -> None:
    """After a full check passed (a seal without fingerprints, or a root that was copied): take
    the fingerprints again, so the next install checks quickly."""
    seal = read_seal(root, dist)
    if seal is None:
        return
    entry = root.pkg_entry(dist)
    make_read_only(entry)  # as sealing left it (someone may have let the admin write)
    stat_map = fingerprints(entry, frozenset([CACHE_SEAL]))
    write_seal(entry, seal.model_copy(update={"stat": stat_map}), CACHE_SEAL)


# --- sealing while the installer works ---------------------------------------------------------


class PackageSeal(Protocol):
    """What sealing one package takes, step by step (:class:`Sealer` runs them in this order)."""

    def prepare(self) -> None:
        """What needs no extracted file (its archive's declarations); may run at any time."""

    def watch(self) -> None:
        """The installer is extracting the package: what can be done already (called again and
        again until it is extracted)."""

    def check(self) -> None:
        """The installer extracted the package: check its files, reading only (it may be linking
        them)."""

    def seal(self) -> None:
        """The installer is done with the package: raise what :meth:`check` found, or make it
        read-only and write its seal."""


_CHECK, _SEAL = 1, 2
_WATCH_EVERY = 0.01  # seconds between two looks at the packages being extracted


class Sealer:
    """Seals packages in one worker thread, each as soon as the installer is done with it, while
    the installer still extracts and links the others.

    The installer's progress callbacks (from its own threads) say when a package is extracted
    (:meth:`extracted`) and linked (:meth:`linked`); the worker prepares the others meanwhile.
    After the install, :meth:`finish` says the rest (every package is then extracted and linked),
    waits for the worker and raises its error, if any: the same error sealing after the install
    raises. After a failed install, :meth:`abort` stops the worker once its current step is done.
    A package whose seal was not written stays unsealed (seals are written atomically), and the
    next build checks it again.
    """

    def __init__(self, packages: dict[str, PackageSeal]) -> None:
        self._packages = packages
        self._todo: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self._said: dict[str, int] = {}
        self._extracting: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._going = threading.Event()  # set once the installer works: nothing to do before
        self._error: BaseException | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="hubstock-sealer", daemon=True)
        self._thread.start()

    def extracting(self, key: str) -> None:
        with self._lock:
            if key in self._packages and key not in self._said:
                self._extracting.add(key)
        self._going.set()

    def extracted(self, key: str) -> None:
        self._say(key, _CHECK)

    def linked(self, key: str) -> None:
        self._say(key, _SEAL)

    def _say(self, key: str, step: int) -> None:
        with self._lock:
            if key not in self._packages:
                return
            self._extracting.discard(key)
            for s in range(self._said.get(key, 0) + 1, step + 1):
                self._todo.put((key, s))
                self._said[key] = s
        self._going.set()

    def _run(self) -> None:
        unprepared = list(self._packages.values())
        self._going.wait()  # not competing for the interpreter before the install starts
        try:
            while not self._stop.is_set():
                idle = self._todo.empty()
                if idle and unprepared:
                    unprepared.pop(0).prepare()  # while waiting for the installer
                    continue
                extracting = []
                if idle:
                    with self._lock:
                        extracting = [self._packages[k] for k in sorted(self._extracting)]
                    for package in extracting:
                        package.watch()
                try:
                    item = self._todo.get(timeout=_WATCH_EVERY if extracting else None)
                except queue.Empty:
                    continue
                if item is None or self._stop.is_set():
                    return
                key, step = item
                package = self._packages[key]
                if step == _CHECK:
                    package.check()
                else:
                    package.seal()
        except BaseException as e:  # raised again in the caller's thread, by finish()
            self._error = e

    def __enter__(self) -> Sealer:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        """On an error, :meth:`abort`: the error stays the one raised, with the worker's own (if
        it had one) attached as its cause."""
        if error is None:
            self.finish()
            return
        failed = self.abort()
        if failed is not None and failed is not error and error.__cause__ is None:
            error.__cause__ = failed

    def finish(self) -> None:
        """After the install: seal what is left, wait, and raise the worker's error."""
        if self._finished:
            return
        self._finished = True
        for key in self._packages:
            self._say(key, _SEAL)
        self._todo.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> BaseException | None:
        """After a failed install: stop the worker (it finishes the step it is in) and wait for it;
        its error, if it had one."""
        self._stop.set()
        self._going.set()
        self._todo.put(None)
        self._thread.join()
        return self._error
