"""Sealing the package cache while the installer works: what each package's seal protects
against stays the same, and a seal that cannot be finished is never written.

- :class:`~hubstock.admin.build.seals.Sealer` runs each package's steps in order in one worker
  thread, raises the worker's error in the caller's thread and never leaves the thread behind;
- a file hashed while the installer was still extracting (:meth:`Extracted.watch`) counts only
  while it is the very file that was hashed: one changed afterwards is read again and found;
- a real build whose extracted package is changed before its seal fails with the same
  :class:`IntegrityError` as before, with no seal written; a seal whose writing fails leaves
  none, and the next build checks that package again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from hubstock.admin.build import build as building
from hubstock.admin.build import cache, extraction
from hubstock.admin.build.seals import Sealer, pkg_watermarks, still_sealed
from hubstock.admin.kinds import load_env
from hubstock.admin.lock.envspec import load_env_spec
from hubstock.errors import IntegrityError
from hubstock.progress import Progress
from hubstock.store.root import CACHE_SEAL, Root

DIST = "demo-c-0.1-0"
VICTIM = "site-packages/demo_c/__init__.py"
ENVS = {"demo": "dependencies:\n  - python\n  - demo-c 0.1\n"}


def _no_sealer_thread() -> bool:
    return not any(t.name == "hubstock-sealer" for t in threading.enumerate())


# --- the worker ------------------------------------------------------------------------------


class Fake:
    """A package whose steps are recorded (and may fail or take time)."""

    def __init__(self, log: list[str], key: str, fail: str = "", slow: float = 0.0) -> None:
        self.log, self.key, self.fail, self.slow = log, key, fail, slow

    def _step(self, step: str) -> None:
        self.log.append(f"{self.key}:{step}")
        time.sleep(self.slow)
        if step == self.fail:
            raise IntegrityError(f"{self.key} failed at {step}")

    def prepare(self) -> None:
        self._step("prepare")

    def watch(self) -> None:
        if f"{self.key}:watch" not in self.log:
            self._step("watch")

    def check(self) -> None:
        self._step("check")

    def seal(self) -> None:
        self._step("seal")


def test_each_package_is_checked_then_sealed_as_the_installer_says_and_the_rest_at_the_end():
    log: list[str] = []
    sealer = Sealer({"a": Fake(log, "a"), "b": Fake(log, "b")})
    sealer.extracting("a")
    sealer.extracted("a")
    sealer.linked("a")
    sealer.linked("unknown")  # a package the build does not seal: ignored
    sealer.finish()  # b: never reported (a terminal's progress bars): checked and sealed now
    assert _no_sealer_thread()
    for key in "ab":
        steps = [e.split(":")[1] for e in log if e.startswith(f"{key}:")]
        assert [s for s in steps if s in ("check", "seal")] == ["check", "seal"], log  # prepare: when idle
    done = list(log)
    sealer.finish()  # again: nothing more
    assert log == done


def test_a_failure_in_the_worker_is_raised_by_finish_and_stops_the_other_seals():
    log: list[str] = []
    sealer = Sealer({"a": Fake(log, "a", fail="check"), "b": Fake(log, "b")})
    sealer.extracted("a")
    sealer.linked("a")
    with pytest.raises(IntegrityError, match="a failed at check"):
        sealer.finish()
    assert "a:seal" not in log and "b:seal" not in log
    assert _no_sealer_thread()


def test_an_error_in_the_build_stops_the_worker_and_keeps_its_own_error_attached():
    log: list[str] = []
    packages = {"a": Fake(log, "a", fail="check"), "b": Fake(log, "b", slow=0.05)}
    with pytest.raises(RuntimeError, match="install failed") as raised, Sealer(packages) as sealer:  # noqa: PT012
        sealer.extracted("a")
        time.sleep(0.2)  # the worker fails meanwhile
        raise RuntimeError("install failed")
    assert isinstance(raised.value.__cause__, IntegrityError)
    assert "a:seal" not in log and "b:seal" not in log
    assert _no_sealer_thread()


def test_abort_waits_only_for_the_step_under_way():
    log: list[str] = []
    sealer = Sealer({"a": Fake(log, "a", slow=0.2), "b": Fake(log, "b", slow=0.2)})
    sealer.extracted("a")
    sealer.linked("a")
    sealer.extracted("b")
    time.sleep(0.05)
    before = list(log)  # a step is logged as it starts: the last one is under way
    assert sealer.abort() is None
    assert len(log) <= len(before) + 1, (before, log)  # at most one more began as abort was called
    assert "b:seal" not in log
    assert _no_sealer_thread()


# --- files hashed while extracting -----------------------------------------------------------


@pytest.fixture
def extracting(channel: Path, tmp_path: Path):
    """A root whose cache is being filled with demo-c 0.1, as the installer does it: extracted
    into a temporary folder beside its place, then renamed there."""
    from rattler.package_streaming import extract

    root = Root(tmp_path / "root")
    root.pkgs.mkdir(parents=True)
    archive = channel / "noarch" / f"{DIST}.conda"
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    tmp = root.pkgs / f".{DIST}Xy12Zq"
    extract(archive, tmp)
    return root, archive, sha, tmp


def _hashed_by_check(monkeypatch, package: extraction.Extracted) -> list[str]:
    """The files :meth:`check` reads (through :func:`cache.hash_many`)."""
    read: list[str] = []
    real = cache.hash_many

    def counting(paths):
        paths = list(paths)
        read.extend(paths)
        return real(paths)

    monkeypatch.setattr(cache, "hash_many", counting)
    package.check()
    monkeypatch.setattr(cache, "hash_many", real)
    return read


def _sealed_after_install(root, dist: str, sha: str) -> bool:
    """The quick check as the next build makes it, once the install that sealed ``dist`` has moved
    its watermark (as every install does for the packages it checked)."""
    marks = pkg_watermarks(root)
    marks.advance([dist])
    return still_sealed(root, dist, sha, pkg_watermarks(root))


def test_files_hashed_while_extracting_are_not_read_again(extracting, monkeypatch):
    root, archive, sha, tmp = extracting
    package = extraction.Extracted(root, DIST, archive, sha)
    package.watch()
    os.rename(tmp, root.pkg_entry(DIST))
    assert not any(p.endswith(VICTIM) for p in _hashed_by_check(monkeypatch, package))
    package.seal()
    assert _sealed_after_install(root, DIST, sha)


@pytest.mark.parametrize("how", ["edited-in-place", "replaced", "half-written-when-watched"])
def test_a_file_changed_after_it_was_hashed_is_read_again_and_found(extracting, monkeypatch, how):
    root, archive, sha, tmp = extracting
    package = extraction.Extracted(root, DIST, archive, sha)
    good = (tmp / VICTIM).read_bytes()
    if how == "half-written-when-watched":
        (tmp / VICTIM).write_bytes(good[: len(good) // 2])
        package.watch()
        (tmp / VICTIM).write_bytes(good[:-1] + b"!")  # finished, but not as the archive says
    else:
        package.watch()
        if how == "edited-in-place":
            time.sleep(0.02)  # a later modification time, as any later write has
            with open(tmp / VICTIM, "r+b") as f:
                f.write(b"#" * len(good))  # same size, same inode
        else:
            (tmp / VICTIM).unlink()
            (tmp / VICTIM).write_bytes(b"#" * len(good))
    os.rename(tmp, root.pkg_entry(DIST))
    assert any(p.endswith(VICTIM) for p in _hashed_by_check(monkeypatch, package))
    with pytest.raises(IntegrityError, match="did not match its verified archive"):
        package.seal()
    assert not root.pkg_entry(DIST).exists() and not root.pkg_seal(DIST).exists()


def test_no_folder_to_watch_is_only_slower(extracting, monkeypatch):
    root, archive, sha, tmp = extracting
    package = extraction.Extracted(root, DIST, archive, sha)
    shutil.copytree(tmp, root.pkgs / f".{DIST}Other1")  # two candidates: none is watched
    package.watch()
    shutil.rmtree(root.pkgs / f".{DIST}Other1")
    os.rename(tmp, root.pkg_entry(DIST))
    assert any(p.endswith(VICTIM) for p in _hashed_by_check(monkeypatch, package))
    package.seal()
    assert _sealed_after_install(root, DIST, sha)


# --- real builds -----------------------------------------------------------------------------


def _build(site):
    return building.ensure_build(site, load_env(site, "demo"), Progress(enabled=False))


def test_a_package_changed_before_its_seal_fails_the_build_and_is_not_sealed(
    make_site, hubstock, monkeypatch
):
    site = make_site(ENVS)
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    real = extraction.Extracted.check

    def tampered_first(self):
        if self.dist == DIST:
            with open(root.pkg_entry(DIST) / VICTIM, "r+b") as f:  # the installer's file, changed
                f.write(b"#")
        real(self)

    monkeypatch.setattr(extraction.Extracted, "check", tampered_first)
    with pytest.raises(IntegrityError, match=f"package {DIST} in the cache"):
        _build(site)
    assert not root.pkg_seal(DIST).exists() and not root.pkg_entry(DIST).exists()
    assert _no_sealer_thread()

    monkeypatch.setattr(extraction.Extracted, "check", real)
    result = _build(site)  # the next build extracts it again and seals it
    assert result.built and still_sealed(root, DIST, _lock_sha(site, DIST), pkg_watermarks(root))
    assert hubstock(site, "verify").returncode == 0


def test_a_seal_that_cannot_be_written_leaves_none_and_is_checked_again(make_site, hubstock, monkeypatch):
    site = make_site(ENVS)
    root = Root(site.root)
    hubstock(site, "lock", check=True)
    real = extraction.write_seal

    def disk_full(entry, record, name):
        if entry.name == DIST:
            raise OSError(errno.ENOSPC, "No space left on device", str(entry / name))
        real(entry, record, name)

    monkeypatch.setattr(extraction, "write_seal", disk_full)
    with pytest.raises(OSError) as raised:
        _build(site)
    assert raised.value.errno == errno.ENOSPC  # as when sealing came after the install
    assert not root.pkg_seal(DIST).exists()
    assert _no_sealer_thread()

    monkeypatch.setattr(extraction, "write_seal", real)
    # a second link holds the unsealed file's inode, so a file extracted again cannot get its number
    held = root.path.parent / "held-victim"
    os.link(root.pkg_entry(DIST) / VICTIM, held)
    result = _build(site)
    assert result.built and still_sealed(root, DIST, _lock_sha(site, DIST), pkg_watermarks(root))
    assert not os.path.samefile(root.pkg_entry(DIST) / VICTIM, held)  # unsealed: extracted again
    held.unlink()
    assert (root.pkg_entry(DIST) / CACHE_SEAL).is_file()
    assert hubstock(site, "verify").returncode == 0


def _lock_sha(site, dist: str) -> str:
    from hubstock.admin.lock.lockfile import packages_for, require_fresh_lock

    spec = load_env_spec(site, "demo")
    lock = require_fresh_lock(site, spec)
    (p,) = [p for p in packages_for(lock, building.host_platform()) if cache.dist_of(p.url) == dist]
    return p.hash.sha256
