"""A real, local conda channel for the integration tests, built fully offline.

The tests must exercise hubstock against genuine conda packages (real
``repodata.json``, real ``.conda`` archives, real solves and installs with
py-rattler), but conda-forge is not reachable from the test machines.  This
module therefore builds a small channel from nothing but the running
interpreter, the standard library, ``rattler`` and ``rattler_build``:

``linux-64/python-X.Y.Z-host_0.conda``
    The running interpreter (``sys.base_prefix``) repackaged with
    rattler-build from a recipe written at runtime.  It is fully usable as a
    conda package (``ssl``, ``sqlite3``, ``ctypes``, ``venv`` work after an
    install into a fresh prefix; rattler-build rewrites the RUNPATH to
    ``$ORIGIN/../lib`` and records prefix placeholders), and its standard
    library is precompiled to *checked-hash* ``.pyc`` files, so read-only
    environments do not recompile on every start.  It still links against
    this OS's system libraries (libssl, libsqlite3, libffi, ...): it is a
    test fixture, never a production interpreter.

``noarch/`` synthetic packages (see :data:`CHANNEL_PACKAGES`)
    Tiny packages assembled without a recipe, with dependencies between them
    and several versions of the same name, so that solves have something to
    decide: ``demo-a`` needs ``demo-b >=2``, which needs ``demo-c``, a
    ``noarch: python`` package that needs ``python``.  ``nbgrader`` is a
    stand-in for a package that a site policy forbids, and ``demo-many``
    carries about 2000 small files for benchmarks.

Building the python package takes several seconds, so :func:`cached_channel`
builds the channel once into a per-user cache directory keyed by everything
that affects its content, and every later call (in this or another pytest
run) reuses it.  Tests that need to change a channel (for instance to make a
newer ``demo-b`` appear) must copy the cached channel first and then call
:func:`add_package` on the copy.

Everything in the channel is world-readable (directories 0755, files 0644),
and so are the files inside the archives: tests install from it as root, and
other users must be able to use what gets installed.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import rattler
import rattler_build
from rattler_build import ArchiveType, Stage0Recipe, assemble_package
from rattler_build.progress import BuildStepEvent, LogEvent

__all__ = [
    "CHANNEL_PACKAGES",
    "SyntheticPackage",
    "add_package",
    "build_channel",
    "cache_key",
    "cached_channel",
    "file_url",
    "reindex",
]

#: Bump whenever this module changes what it puts into a channel.
FORMAT_VERSION = 1

#: Optional progress sink: receives one human-readable line per event.
Progress = Callable[[str], None]

Noarch = Literal["generic", "python"]

#: Platform subdirectory of the repackaged interpreter.
NATIVE_SUBDIR = "linux-64"

_SUBDIRS = ("noarch", NATIVE_SUBDIR)
_CACHE_PREFIX = "channel-"
_TMP_PREFIX = ".tmp-channel-"
_LOCK_NAME = ".channel.lock"
# Fixed build timestamp: archives of the synthetic packages are reproducible.
_TIMESTAMP = datetime(2024, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class SyntheticPackage:
    """Definition of one small package assembled without a recipe.

    ``files`` maps paths inside the package to their content.  For
    ``noarch="python"`` packages, Python modules go under ``site-packages/``:
    the installer relocates them to ``lib/pythonX.Y/site-packages`` of the
    target prefix.
    """

    name: str
    version: str
    files: Mapping[str, str | bytes]
    depends: tuple[str, ...] = ()
    noarch: Noarch | None = "generic"
    build_string: str = "0"

    @property
    def subdir(self) -> str:
        """Channel subdirectory the archive belongs to."""
        return "noarch" if self.noarch else NATIVE_SUBDIR

    @property
    def filename(self) -> str:
        """File name of the ``.conda`` archive."""
        return f"{self.name}-{self.version}-{self.build_string}.conda"

    def fingerprint(self) -> dict[str, object]:
        """JSON-able, canonical description of the package (for cache keys)."""
        return {
            "name": self.name,
            "version": self.version,
            "depends": list(self.depends),
            "noarch": self.noarch,
            "build_string": self.build_string,
            "files": {
                path: hashlib.sha256(_as_bytes(content)).hexdigest()
                for path, content in sorted(self.files.items())
            },
        }


#: Number of files in ``demo-many``.
DEMO_MANY_FILES = 2000

#: The synthetic packages of every channel built by this module.
CHANNEL_PACKAGES: list[SyntheticPackage] = [
    SyntheticPackage("demo-b", "1.0", {"share/demo-b/VERSION": "1.0\n"}),
    SyntheticPackage("demo-b", "2.0", {"share/demo-b/VERSION": "2.0\n"}, depends=("demo-c",)),
    SyntheticPackage("demo-a", "1.0", {"share/demo-a/VERSION": "1.0\n"}, depends=("demo-b >=2",)),
    SyntheticPackage(
        "demo-c",
        "0.1",
        {"site-packages/demo_c/__init__.py": "VERSION = '0.1'\n"},
        depends=("python >=3.11",),
        noarch="python",
    ),
    SyntheticPackage(
        "demo-c",
        "0.2",
        {"site-packages/demo_c/__init__.py": "VERSION = '0.2'\n"},
        depends=("python >=3.11",),
        noarch="python",
    ),
    SyntheticPackage(
        "nbgrader",
        "0.1",
        {"site-packages/nbgrader/__init__.py": "__version__ = '0.1'\n"},
        depends=("python",),
        noarch="python",
    ),
    SyntheticPackage(
        "demo-many",
        "1.0",
        {f"share/demo-many/{i // 100:02d}/file-{i:04d}.txt": f"{i}\n" for i in range(DEMO_MANY_FILES)},
    ),
]


# --------------------------------------------------------------------------
# Scratch space

# Creating small files is slow on some disks (about 0.7 ms per file on the
# test VMs), and both the python build and demo-many stage thousands of them:
# stage in RAM when a roomy tmpfs is available (2.6 s instead of 7 s cold).
_SHM = Path("/dev/shm")
_SHM_MIN_FREE = 1 << 30
_SCRATCH_PREFIX = "hubstock-channel-"


def _scratch_parent() -> Path | None:
    """tmpfs for staging if usable, else None (the default temp dir)."""
    try:
        usable = _SHM.is_dir() and os.access(_SHM, os.W_OK | os.X_OK)
        if usable and shutil.disk_usage(_SHM).free >= _SHM_MIN_FREE:
            return _SHM
    except OSError:
        pass
    return None


_OWNER_LOCK = ".owner.lock"


def _sweep_orphans(parent: Path) -> None:
    """Remove scratch dirs of killed builders (they would sit in RAM).

    A live builder holds an ``flock`` on ``<dir>/.owner.lock``; the kernel
    drops it when the builder dies, however it dies.
    """
    for path in parent.glob(f"{_SCRATCH_PREFIX}*"):
        try:
            with open(path / _OWNER_LOCK, "rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
        except OSError:  # still in use, not ours, or being created
            continue


@contextmanager
def _tmpdir_env(path: Path) -> Iterator[None]:
    """Point ``$TMPDIR`` at ``path`` for the duration.

    ``assemble_package`` copies every file through a directory under
    ``$TMPDIR`` (2.4 s instead of 0.3 s for demo-many on a slow disk), and
    Python's own ``tempfile`` has already cached its directory, so only the
    Rust code is affected.  Tests run in one thread: mutating the process
    environment briefly is safe here.
    """
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = old


@contextmanager
def _scratch_dir(purpose: str) -> Iterator[Path]:
    """A temporary directory, on tmpfs when possible, removed afterwards.

    rattler-build's own temporary files (``$TMPDIR``) go there too.
    """
    parent = _scratch_parent()
    if parent is not None:
        _sweep_orphans(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{purpose}-", dir=parent))
    try:
        with open(path / f"{_OWNER_LOCK}.new", "wb") as lock:
            # Lock, then rename into place: a sweeper never finds the lock file
            # unlocked while this process lives.  Removed while still locked.
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.rename(path / f"{_OWNER_LOCK}.new", path / _OWNER_LOCK)
            try:
                work = path / "work"
                work.mkdir()
                (path / "tmp").mkdir()
                with _tmpdir_env(path / "tmp"):
                    yield work
            finally:
                shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# The python package: recipe written at runtime

# The ``context:`` block (version, pyver, src) is prepended by _python_recipe().
# Paths are derived from ``pyver``; the script runs under bash.
_PYTHON_RECIPE_BODY = r"""
package:
  name: python
  version: ${{ version }}

build:
  number: 0
  string: host_0
  script:
    env:
      SRC: ${{ src }}
      PY: python${{ pyver }}
    content: |
      set -euxo pipefail
      shopt -s nullglob
      if [ ! -x "$SRC/bin/$PY" ] || [ ! -d "$SRC/lib/$PY" ]; then
          echo "not a CPython prefix with bin/$PY and lib/$PY: $SRC" >&2
          exit 1
      fi
      mkdir -p "$PREFIX/bin" "$PREFIX/lib/$PY/site-packages" "$PREFIX/include"
      cp -a "$SRC/bin/$PY" "$PREFIX/bin/"
      ln -s "$PY" "$PREFIX/bin/python3"
      ln -s "$PY" "$PREFIX/bin/python"
      if [ -e "$SRC/bin/$PY-config" ]; then
          cp -a "$SRC/bin/$PY-config" "$PREFIX/bin/"
          ln -s "$PY-config" "$PREFIX/bin/python3-config"
      fi
      for lib in "$SRC"/lib/libpython*.so*; do cp -a "$lib" "$PREFIX/lib/"; done
      if [ -d "$SRC/lib/pkgconfig" ]; then cp -a "$SRC/lib/pkgconfig" "$PREFIX/lib/"; fi
      if [ -d "$SRC/include/$PY" ]; then cp -a "$SRC/include/$PY" "$PREFIX/include/"; fi
      # stdlib without site-packages, tests, GUI, idle and caches (the bundled
      # pip wheel stays: `python -m venv` works)
      tar -C "$SRC/lib/$PY" -cf - \
          --exclude=./site-packages --exclude=./test --exclude=./idlelib \
          --exclude=./tkinter --exclude=./turtledemo --exclude=./turtle.py \
          --exclude='./lib-dynload/_tkinter*' --exclude='*/tests' \
          --exclude=__pycache__ \
          --exclude="./config-*/*.a" . \
        | tar -C "$PREFIX/lib/$PY" -xf -
      if [ -e "$SRC/lib/$PY/site-packages/README.txt" ]; then
          cp "$SRC/lib/$PY/site-packages/README.txt" "$PREFIX/lib/$PY/site-packages/"
      fi
      # Text files: old prefix -> $PREFIX, so that rattler-build records a
      # placeholder and the installer rewrites it to the target prefix.
      src_re=$(printf '%s' "$SRC" | sed 's/[].[\*^$/|]/\\&/g')
      grep -rlIZ -F "$SRC" "$PREFIX" | xargs -0 -r sed -i "s|$src_re|$PREFIX|g"
      # No patchelf: rattler-build's relinker turns the absolute RUNPATH into
      # $ORIGIN/../lib by itself.  Debug info only makes the archive big.
      if command -v strip >/dev/null; then
          strip --strip-debug "$PREFIX/bin/$PY" "$PREFIX"/lib/libpython*.so.* \
              "$PREFIX/lib/$PY"/lib-dynload/*.so
      fi
      # Precompile the stdlib.  Checked-hash pycs stay valid whatever the file
      # mtimes (rattler-build normalises them; extraction changes them).  -B: the
      # modules compileall itself imports must not get timestamp pycs.
      "$PREFIX/bin/$PY" -B -E -s -m compileall -f -q -j0 \
          --invalidation-mode checked-hash "$PREFIX/lib/$PY"
      chmod -R u+rwX,go+rX,go-w "$PREFIX"

about:
  license: Python-2.0
  summary: CPython repackaged from the host interpreter (test fixture only)
"""


def _python_version() -> str:
    """Conda version of the running interpreter, e.g. ``3.11.7``."""
    return platform.python_version()


def _python_recipe() -> str:
    """Recipe text for repackaging the running interpreter."""
    context = {
        "version": _python_version(),
        "pyver": f"{sys.version_info.major}.{sys.version_info.minor}",
        "src": str(Path(sys.base_prefix).resolve()),
    }
    lines = ["context:"]
    # JSON strings are valid YAML scalars, whatever the path contains.
    lines += [f"  {key}: {json.dumps(value)}" for key, value in context.items()]
    return "\n".join(lines) + "\n" + _PYTHON_RECIPE_BODY


class _ProgressAdapter:
    """Forwards rattler-build events to a :data:`Progress` callable, if any.

    Keeps the last lines either way: rattler-build's own error for a failed
    build script is just "Script failed to execute".
    """

    def __init__(self, progress: Progress | None, keep: int = 60) -> None:
        self._progress = progress
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)

    def _emit(self, line: str) -> None:
        self.tail.append(line)
        if self._progress is not None:
            self._progress(line)

    def on_download_start(self, event: object) -> None:
        """Ignored: nothing is downloaded."""

    def on_download_progress(self, event: object) -> None:
        """Ignored: nothing is downloaded."""

    def on_download_complete(self, event: object) -> None:
        """Ignored: nothing is downloaded."""

    def on_build_step(self, event: BuildStepEvent) -> None:
        """Report the start of a build step."""
        self._emit(f"[{event.step_name}] {event.message}")

    def on_log(self, event: LogEvent) -> None:
        """Report a log line (includes the build script's output)."""
        self._emit(event.message)


def _build_python(out_dir: Path, work_dir: Path, progress: Progress | None) -> Path:
    """Repackage the running interpreter; return the ``.conda`` archive."""
    recipe = Stage0Recipe.from_yaml(_python_recipe(), recipe_dir=work_dir / "recipe")
    variants = recipe.render()
    if len(variants) != 1:
        raise RuntimeError(f"python recipe rendered {len(variants)} variants")
    log = _ProgressAdapter(progress)
    try:
        result = variants[0].run_build(
            output_dir=work_dir / "output",
            # No requirements: nothing is solved, but never default to conda-forge.
            channels=[],
            progress_callback=log,
            # Default zstd level takes 4 s more for a 15% smaller archive.
            package_format="conda:3",
            no_include_recipe=True,
        )
    except rattler_build.RattlerBuildError as exc:
        tail = "\n".join(log.tail)
        raise RuntimeError(f"building the python package failed: {exc}\n{tail}") from exc
    archives = [Path(p) for p in result.packages]
    if len(archives) != 1:
        raise RuntimeError(f"python build produced {archives}")
    dest = out_dir / NATIVE_SUBDIR / archives[0].name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(archives[0], dest)
    return dest


# --------------------------------------------------------------------------
# Synthetic packages


def _as_bytes(content: str | bytes) -> bytes:
    return content.encode() if isinstance(content, str) else content


def _assemble(channel: Path, package: SyntheticPackage) -> Path:
    """Assemble ``package`` into ``channel/<subdir>``; return the archive."""
    out_dir = channel / package.subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    with _scratch_dir("pkg") as root:
        for rel, content in package.files.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"package file outside the package: {rel!r}")
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_as_bytes(content))
        _make_world_readable(root)
        output = assemble_package(
            name=package.name,
            version=package.version,
            target_platform=package.subdir,
            build_string=package.build_string,
            output_dir=out_dir,
            files_dir=root,
            depends=list(package.depends),
            noarch=package.noarch,
            license="MIT",
            summary=f"hubstock test package {package.name}",
            timestamp=_TIMESTAMP,
            archive_type=ArchiveType.Conda,
            # Tiny files: fast compression is plenty.
            compression_level=1,
        )
    archive = Path(output.path)
    archive.chmod(0o644)
    return archive


# --------------------------------------------------------------------------
# Indexing and permissions

_INDEX_SCRIPT = """
import asyncio, os, sys
from rattler.index import index_fs
asyncio.run(index_fs(sys.argv[1], write_zst=False, write_shards=False, force=True))
sys.stdout.flush()
sys.stderr.flush()
# index_fs sometimes crashes the interpreter at exit: skip the teardown.
os._exit(0)
"""


def reindex(channel: Path) -> None:
    """(Re)write ``repodata.json`` of every subdir of ``channel``.

    Runs ``rattler.index.index_fs`` in a subprocess, since it can crash the
    interpreter at exit.  Makes the channel world-readable afterwards.
    """
    channel = Path(channel)
    for subdir in _SUBDIRS:
        (channel / subdir).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", _INDEX_SCRIPT, str(channel)],
        capture_output=True,
        text=True,
        check=False,
    )
    missing = [s for s in _SUBDIRS if not (channel / s / "repodata.json").is_file()]
    if proc.returncode != 0 or missing:
        raise RuntimeError(
            f"indexing {channel} failed (exit {proc.returncode}, "
            f"missing repodata for {missing}):\n{proc.stdout}{proc.stderr}"
        )
    # index_fs leaves its scratch directory behind.
    shutil.rmtree(channel / ".tmp", ignore_errors=True)
    _make_world_readable(channel)


def _make_world_readable(root: Path) -> None:
    """Directories 0755 and regular files 0644 (executables 0755) below root."""
    root.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o100
            os.chmod(path, 0o755 if executable else 0o644)


def file_url(channel: Path) -> str:
    """``file:///...`` URL of ``channel``."""
    return Path(channel).resolve().as_uri()


# --------------------------------------------------------------------------
# Public builders


def build_channel(dest: Path, *, progress: Progress | None = None) -> Path:
    """Build the whole channel into ``dest`` and index it; return ``dest``.

    ``dest`` may exist but must be empty.  ``progress``, if given, receives one
    line per build event (including the output of the python build script,
    which is hidden otherwise).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"channel destination is not empty: {dest}")
    say = progress or (lambda _line: None)
    with _scratch_dir("python") as work:
        start = time.monotonic()
        archive = _build_python(dest, work, progress)
        say(f"built {archive.name} in {time.monotonic() - start:.1f}s")
    start = time.monotonic()
    for package in CHANNEL_PACKAGES:
        _assemble(dest, package)
    say(f"assembled {len(CHANNEL_PACKAGES)} packages in {time.monotonic() - start:.1f}s")
    reindex(dest)
    return dest


def add_package(
    channel: Path,
    name: str,
    version: str,
    *,
    depends: Sequence[str] = (),
    noarch: Noarch | None = "generic",
    files: Mapping[str, str | bytes],
    build_string: str = "0",
) -> Path:
    """Assemble one more synthetic package into ``channel`` and re-index it.

    Returns the archive path.  ``noarch=None`` makes a ``linux-64`` package.
    Refuses to modify a channel of the shared cache: copy it first (e.g.
    ``shutil.copytree(cached_channel(), tmp_path / "channel")``).
    """
    channel = Path(channel)
    if _is_cache_entry(channel):
        raise ValueError(f"refusing to modify the shared cached channel {channel}; copy it first")
    if not (channel / "noarch" / "repodata.json").is_file():
        raise FileNotFoundError(f"not an indexed channel: {channel}")
    package = SyntheticPackage(
        name=name,
        version=version,
        files=dict(files),
        depends=tuple(depends),
        noarch=noarch,
        build_string=build_string,
    )
    if (channel / package.subdir / package.filename).exists():
        raise FileExistsError(f"{package.filename} already in {channel}")
    archive = _assemble(channel, package)
    reindex(channel)
    return archive


# --------------------------------------------------------------------------
# Cache


def _default_cache_root() -> Path:
    if explicit := os.environ.get("HUBSTOCK_TEST_CACHE"):
        return Path(explicit)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "hubstock-tests"
    return Path.home() / ".cache" / "hubstock-tests"


def cache_key() -> str:
    """Hash of everything that determines the content of the channel."""
    material = {
        "format": FORMAT_VERSION,
        "python": sys.version,
        "recipe": _python_recipe(),
        "packages": [p.fingerprint() for p in CHANNEL_PACKAGES],
        "rattler_build": rattler_build.rattler_build_version(),
        "rattler": rattler.__version__,
    }
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _is_cache_entry(channel: Path) -> bool:
    resolved = channel.resolve()
    return resolved.name.startswith(_CACHE_PREFIX) and (resolved.parent / _LOCK_NAME).exists()


@contextmanager
def _locked(cache_root: Path) -> Iterator[None]:
    with open(cache_root / _LOCK_NAME, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_channel(cache_root: Path | None = None, *, progress: Progress | None = None) -> Path:
    """Return a ready channel, building it once into a shared cache.

    The entry is ``<cache_root>/channel-<key>`` where the key hashes
    ``sys.version``, the python recipe, the package definitions, the
    rattler-build (and rattler) version and :data:`FORMAT_VERSION`.  Default
    ``cache_root``: ``$HUBSTOCK_TEST_CACHE``, else
    ``$XDG_CACHE_HOME/hubstock-tests``, else ``~/.cache/hubstock-tests``.

    The channel is built into a temporary sibling directory and renamed into
    place, so an interrupted build never leaves an entry that counts; builders
    serialise on an ``flock`` in ``cache_root``, so concurrent pytest runs
    build it once and never see a half-built channel.  The returned channel is
    shared: treat it as read-only.
    """
    root = Path(cache_root) if cache_root is not None else _default_cache_root()
    entry = root / f"{_CACHE_PREFIX}{cache_key()}"
    if entry.is_dir():  # renamed into place only when complete
        return entry
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if entry.is_dir():  # another process built it while we waited
            return entry
        # Leftovers of interrupted builds: nobody else builds while we hold the lock.
        for stale in root.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
        try:
            build_channel(tmp, progress=progress)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry
