"""Builds on the root, read side and the two records a build writes (provenance, then its marker).

A build counts only once its completion marker exists and names it; the marker is
written last. ``$ROOT/envs/<env>/current`` names the env's newest complete build:
the one source of truth for "which build" that publish, status and gc read.
"""

from __future__ import annotations

from pathlib import Path

from .fs import atomic_write, read_link
from .records import BuildDamage, BuildFiles, BuildProvenance, BuildRecord, RecordError
from .root import BUILD_FILES, MARKER, PROVENANCE, Root


def is_complete(prefix: Path, bid: str | None = None) -> bool:
    """A build counts only once its marker exists and names it."""
    try:
        text = (prefix / MARKER).read_text().strip()
    except OSError:
        return False
    return bid is None or text == bid


def current_link(root: Root, env: str) -> str | None:
    """The build id ``env``'s ``current`` names, complete or not (None without the link)."""
    try:
        return read_link(root.env_current(env))
    except OSError:
        return None


def current_build(root: Root, env: str) -> str | None:
    """The id of ``env``'s current build, if it is complete."""
    bid = current_link(root, env)
    return bid if bid is not None and is_complete(root.build(env, bid), bid) else None


def build_ids(root: Root, env: str) -> list[str]:
    """Every build directory of ``env`` (complete or not), oldest first."""
    d = root.env(env)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if not p.name.startswith(".") and not p.is_symlink() and p.is_dir()]
    return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]


def env_names(root: Root) -> list[str]:
    """Every env that has a folder on the root."""
    if not root.envs.is_dir():
        return []
    return sorted(p.name for p in root.envs.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_provenance(prefix: Path) -> BuildProvenance | None:
    """The build's provenance, or None when it has none (an interrupted build)."""
    return BuildProvenance.read_optional(prefix / PROVENANCE)


def write_provenance(prefix: Path, provenance: BuildProvenance) -> None:
    atomic_write(prefix / PROVENANCE, provenance.to_json())


def mark_complete(prefix: Path, bid: str) -> None:
    """Write the completion marker: from now on the build counts. Always the last write."""
    atomic_write(prefix / MARKER, bid + "\n")


def write_build_files(prefix: Path, files: BuildFiles) -> None:
    atomic_write(prefix / BUILD_FILES, files.to_json(), mode=0o444)


def read_build_files(prefix: Path) -> BuildFiles | None:
    """The build's list of files no package declares (None for a build made before it existed)."""
    return BuildFiles.read_optional(prefix / BUILD_FILES)


#: files of its own that a build holds besides what its packages install
OWN_FILES = (MARKER, PROVENANCE, BUILD_FILES)


def record_path(root: Root, env: str, bid: str) -> Path:
    """Where the build's :class:`BuildRecord` is kept: beside the build, in its env's folder."""
    return root.env(env) / f".record-{bid}.json"


def write_build_record(root: Root, record: BuildRecord) -> None:
    atomic_write(record_path(root, record.env, record.build_id), record.to_json(), mode=0o644)


def read_build_record(root: Root, env: str, bid: str) -> BuildRecord | None:
    """The build's record (None for a build made before records were kept)."""
    return BuildRecord.read_optional(record_path(root, env, bid))


def recorded_builds(root: Root) -> dict[str, str]:
    """``build id -> env`` of every build with a record (gone or not)."""
    out = {}
    for env in env_names(root):
        for p in root.env(env).glob(".record-*.json"):
            out[p.name[len(".record-") : -len(".json")]] = env
    return out


def pin_path(root: Root, env: str, bid: str) -> Path:
    """While it exists, publish gives the build kernels of its own (``hubstock reproduce --publish``)."""
    return root.env(env) / f".pinned-{bid}"


def pin(root: Root, env: str, bid: str) -> None:
    atomic_write(pin_path(root, env, bid), f"{env}/{bid}\n", mode=0o644)


def unpin(root: Root, env: str, bid: str) -> bool:
    """Whether the build was pinned."""
    try:
        pin_path(root, env, bid).unlink()
    except FileNotFoundError:
        return False
    return True


def pinned_builds(root: Root) -> list[tuple[str, str]]:
    """``(env, build id)`` of every pinned build, in order."""
    return sorted(
        (env, p.name[len(".pinned-") :]) for env in env_names(root) for p in root.env(env).glob(".pinned-*")
    )


def _damage_path(root: Root, env: str, bid: str) -> Path:
    return root.env(env) / f".damaged-{bid}.json"


def record_damage(root: Root, damage: BuildDamage) -> None:
    """Remember that ``hubstock verify`` found the build damaged (beside it: the build is read-only)."""
    atomic_write(_damage_path(root, damage.env, damage.build_id), damage.to_json())


def clear_damage(root: Root, env: str, bid: str) -> None:
    _damage_path(root, env, bid).unlink(missing_ok=True)


def damage(root: Root, env: str, bid: str) -> BuildDamage | None:
    """What the last verify found wrong with the build, or None when it verified (or never ran).
    A damage record that cannot be read counts as damage: verify again to know."""
    path = _damage_path(root, env, bid)
    try:
        return BuildDamage.read_optional(path)
    except RecordError as e:
        return BuildDamage(env=env, build_id=bid, checked="", problems=[str(e)], count=1)
