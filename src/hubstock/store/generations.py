"""Published generations: which is current (resolved once), what each holds, and its manifest.

    $ROOT/generations/<gen>/share/jupyter/kernels/<kernel>/   stock kernels (JUPYTER_PATH)
    $ROOT/generations/<gen>/restricted/<kernel>/kernels/<kernel>/
                                                             a kernel for some groups only: the
                                                             folder restricted/<kernel>/ is theirs
                                                             alone (store.access), and is on the
                                                             JUPYTER_PATH of their sessions only
    $ROOT/generations/<gen>/share/jupyter/lab/settings/       overrides.json
    $ROOT/generations/<gen>/etc/jupyter/                      page_config, server config (JUPYTER_CONFIG_PATH)
    $ROOT/generations/<gen>/manifest.json                     written last
    $ROOT/current -> generations/<gen>

A reader resolves ``current`` once (:func:`resolve_current`) and reads everything
from that one directory, so a publish or rollback in between never gives it a mix.

``$ROOT/generations/.gc-intent.json`` names the generations a running ``hubstock gc`` is about
to remove (:func:`announce_removal`): a spawn hook that pinned one of them (its session record
already written) pins the current generation instead, and gc, which reads the session records
once more after announcing, keeps any generation a record names. So a generation a hook pinned is
never removed, and never out of its place for a moment either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .fs import atomic_symlink, atomic_write, current_user, now_iso, read_link
from .records import GcIntent, GenerationManifest, KernelEntry, RecordError
from .root import MANIFEST, Root

GEN_RE = re.compile(r"^\d{4,}$")
STAGING_PREFIX = ".staging-"
GC_INTENT = ".gc-intent.json"


@dataclass(frozen=True)
class Generation:
    """One generation directory (published or being staged): where its parts are."""

    name: str
    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def jupyter_path(self) -> Path:
        """What ``JUPYTER_PATH`` points at."""
        return self.path / "share" / "jupyter"

    @property
    def kernels_dir(self) -> Path:
        return self.jupyter_path / "kernels"

    def kernel_dir(self, name: str, restricted: bool = False) -> Path:
        """Where kernel ``name`` is (``restricted``: a kernel for some groups only)."""
        if restricted:
            return self.restricted_dir(name) / "kernels" / name
        return self.kernels_dir / name

    def restricted_dir(self, name: str) -> Path:
        """The folder closed to all but the groups of kernel ``name``: a ``JUPYTER_PATH`` entry."""
        return self.path / "restricted" / name

    def entry_dir(self, entry: KernelEntry) -> Path:
        """Where the kernel of a manifest entry is."""
        return self.kernel_dir(entry.name, restricted=bool(entry.groups))

    def jupyter_paths(self, restricted: Iterable[str]) -> str:
        """``JUPYTER_PATH`` for a session given the restricted kernels ``restricted``."""
        return os.pathsep.join([str(self.jupyter_path), *(str(self.restricted_dir(n)) for n in restricted)])

    @property
    def lab_settings_dir(self) -> Path:
        return self.jupyter_path / "lab" / "settings"

    @property
    def config_path(self) -> Path:
        """What ``JUPYTER_CONFIG_PATH`` points at."""
        return self.path / "etc" / "jupyter"

    def manifest(self) -> GenerationManifest:
        """Its manifest (a :class:`~hubstock.store.records.RecordError` if missing or unreadable)."""
        return GenerationManifest.read(self.manifest_path)

    def write_manifest(self, manifest: GenerationManifest) -> None:
        atomic_write(self.manifest_path, manifest.to_json())


def generation(root: Root, gen: str) -> Generation:
    return Generation(gen, root.generation(gen))


def staging(root: Root, gen: str, token: str) -> Generation:
    """A hidden directory where generation ``gen`` is prepared before its rename into place."""
    return Generation(gen, root.generations / f"{STAGING_PREFIX}{gen}-{token}")


def generations(root: Root) -> list[str]:
    """Complete generations (with a manifest), oldest first."""
    if not root.generations.is_dir():
        return []
    gens = [p.name for p in root.generations.iterdir() if GEN_RE.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(gens, key=int)


def unfinished(root: Root) -> list[str]:
    """Directory names under ``generations/`` that are not complete generations:
    staging folders of interrupted publishes, and numbered folders without a manifest."""
    if not root.generations.is_dir():
        return []
    done = set(generations(root))
    return sorted(
        p.name
        for p in root.generations.iterdir()
        if p.name.startswith(STAGING_PREFIX) or (GEN_RE.match(p.name) and p.name not in done)
    )


def next_generation(root: Root) -> str:
    """The name the next publish takes (one more than any numbered folder)."""
    nums = (
        [int(p.name) for p in root.generations.iterdir() if GEN_RE.match(p.name)]
        if root.generations.is_dir()
        else []
    )
    return f"{max(nums, default=0) + 1:04d}"


def normalise(gen: str) -> str:
    """``"3"`` -> ``"0003"``; other names unchanged."""
    return f"{int(gen):04d}" if gen.isdigit() else gen


def current_name(root: Root) -> str | None:
    """The name of the current generation, or None when nothing is published."""
    try:
        target = read_link(root.current)
    except OSError:
        return None
    return os.path.basename(target) if target else None


def resolve_current(root: Root) -> Generation | None:
    """The current generation, resolved once (None when nothing is published).

    The returned directory is the real one, not ``current``: a later switch of the
    link does not change what the caller reads.
    """
    target = read_link(root.current)  # once, surviving a network filesystem's stale answers
    if target is None:
        return None
    path = Path(os.path.realpath(root.path / target))
    return Generation(path.name, path)


def switch_current(root: Root, gen: str) -> None:
    """Make ``gen`` current with one atomic rename."""
    atomic_symlink(f"generations/{gen}", root.current)


def announce_removal(root: Root, gens: list[str]) -> None:
    """Say (durably) that ``gens`` are about to be removed; call with the root's lock held."""
    intent = GcIntent(generations=sorted(gens), since=now_iso(), by=current_user())
    atomic_write(root.generations / GC_INTENT, intent.to_json())


def withdraw_removal(root: Root) -> None:
    """The removal announced is over (done or given up)."""
    (root.generations / GC_INTENT).unlink(missing_ok=True)


def doomed(root: Root) -> set[str]:
    """The generations a running gc announced it removes (none when no gc runs). An intent that
    cannot be read dooms every generation but the current one: a hook then pins the current."""
    try:
        intent = GcIntent.read_optional(root.generations / GC_INTENT)
    except RecordError:
        cur = current_name(root)
        return {g for g in generations(root) if g != cur}
    return set(intent.generations) if intent else set()
