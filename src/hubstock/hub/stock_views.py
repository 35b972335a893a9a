"""What the "Stock environments" page shows, read from the root (pure of HTTP; see :mod:`.stock_page`).

:class:`StockViews` turns the root's generations into the page and its JSON documents.
Each request resolves ``current`` once, so a publish while someone reads never gives a
mix; generations and builds never change once published, so what is read from them,
and every diff, is cached in memory. A kernel for some groups only is shown to their members
alone (the user's groups as the system resolves them now); to others, when the site set
``[publish] restricted_note``, as one line that it exists and whom to ask.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from ..store.access import may_use, user_groups
from ..store.buildlock import LOCK_NAMES, lock_copy_path, read_lock_copy
from ..store.catalog import Catalog, language_version, package_source, previous_generation
from ..store.diff import GenerationContents, GenerationDiff, diff_generations
from ..store.generations import GEN_RE, Generation, resolve_current
from ..store.records import BuildProvenance, KernelEntry, RecordError
from ..store.root import Root

log = logging.getLogger("hubstock.stock_page")
TEMPLATES = Path(__file__).with_name("templates")
PAGE_TEMPLATE = "stock_page.html"
NOTHING_PUBLISHED = (
    "Nothing is published yet: the administrators have not made the stock kernels available. Come back later."
)


#: the Content-Type of each lock users download, by its name
LOCK_TYPES = {
    "conda-lock.yml": "application/x-yaml; charset=utf-8",
    "pylock.toml": "application/toml",
    "modules.lock.json": "application/json",
}
#: what each kind of env is, in a few words, for the page
KIND_LABELS = {
    "conda": "a conda environment",
    "venv": "a Python virtual environment (venv) on the site's Python",
    "module": "the site's own software, loaded from its module tree (Lmod)",
}


class NotFound(Exception):
    """A generation, kernel or lock that is not there (the message is for the user)."""


@dataclass(frozen=True)
class LockFile:
    """A build's lock, as users download it: its file name, its Content-Type and its bytes."""

    name: str
    content_type: str
    data: bytes


# ---------------------------------------------------------------------------------------------------------
# the data, and the page, without the web server


@dataclass(frozen=True)
class Snapshot:
    """What one request sees: ``current`` resolved once, and the generations then on the root."""

    current: Generation | None
    names: list[str]  # oldest first


class StockViews:
    """Documents and HTML for the page and its API, from the root (cached; one event loop)."""

    def __init__(
        self,
        root: Root,
        prefix: str = "/services/stock/",
        hub_prefix: str = "/hub/",
        restricted_note: str | None = None,
    ) -> None:
        self.root = root
        #: what a user outside a restricted kernel's groups reads of it (None: nothing at all)
        self.restricted_note = restricted_note
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.hub_prefix = hub_prefix
        self.catalog = Catalog(root)
        #: user -> (the second it was looked up, their groups): a page asks once per generation
        self._groups: dict[str, tuple[int, set[str]]] = {}
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            auto_reload=False,  # compiled once, before the service drops privileges
            trim_blocks=True,
            lstrip_blocks=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["when"] = _when
        self.page = self.env.get_template(PAGE_TEMPLATE)
        self.mine_page = self.env.get_template("mine.html")

    def snapshot(self) -> Snapshot:
        return Snapshot(current=resolve_current(self.root), names=self.catalog.generation_names())

    # -- documents -------------------------------------------------------------------------------------

    def _generation(self, snap: Snapshot, name: str) -> Generation:
        if name == "current":
            if snap.current is None:
                raise NotFound(NOTHING_PUBLISHED)
            return snap.current
        if not GEN_RE.match(name) or name not in snap.names:
            raise NotFound(f"there is no generation {name!r}")
        return self.catalog.generation(name)

    def _contents(self, gen: Generation, user: str | None = None) -> GenerationContents:
        """What ``gen`` holds, as ``user`` may see it (None: everything, for the hub's own use)."""
        try:
            contents = self.catalog.contents(gen)
        except RecordError:
            raise NotFound(f"generation {gen.name} cannot be read; ask the administrators") from None
        return contents if user is None else self._as_seen_by(contents, user)

    def _as_seen_by(self, contents: GenerationContents, user: str) -> GenerationContents:
        kernels = contents.manifest.kernels
        if not any(k.groups for k in kernels):
            return contents
        member_of = self._groups_of(user)
        shown = [k for k in kernels if may_use(k.groups, member_of)]
        if len(shown) == len(kernels):
            return contents
        return dataclasses.replace(contents, manifest=contents.manifest.model_copy(update={"kernels": shown}))

    def _groups_of(self, user: str) -> set[str]:
        """``user``'s groups as the system resolves them, looked up at most once a second: one
        page or document reads them for every generation it shows."""
        now = int(time.monotonic())
        hit = self._groups.get(user)
        if hit is not None and hit[0] == now:
            return hit[1]
        if len(self._groups) > 1000:
            self._groups.clear()
        groups = user_groups(user)
        self._groups[user] = (now, groups)
        return groups

    def hidden_kernels(self, contents: GenerationContents, user: str) -> list[dict[str, Any]]:
        """The restricted kernels ``user`` is not shown, as the note's lines (none without a note)."""
        if not self.restricted_note:
            return []
        shown = {k.name for k in self._as_seen_by(contents, user).manifest.kernels}
        return [
            {"name": k.name, "display_name": k.display_name, "groups": k.groups, "note": self.restricted_note}
            for k in contents.manifest.kernels
            if k.name not in shown and not k.pinned_of
        ]

    def kernel_doc(self, contents: GenerationContents, k: KernelEntry) -> dict[str, Any]:
        prov = contents.provenance(k.env, k.build)
        pkgs = contents.packages(k.env, k.build)
        packages = []
        for p in sorted(pkgs or [], key=lambda p: (p.name.lower(), p.manager)):
            label, where = package_source(p)
            packages.append(
                {
                    "name": p.name,
                    "version": p.version,
                    "build": p.build,
                    "manager": p.manager,
                    "source": label,
                    "channel": where,
                }
            )
        kind = prov.kind if prov else None
        lock_name = LOCK_NAMES.get(kind) if kind else None
        lock = lock_copy_path(self.root, k.env, k.build)
        # offer only what can be served, under the name its kind's lock has
        has_lock = lock is not None and lock_name is not None and os.access(lock, os.R_OK)
        interp = prov.interpreter if prov else None
        modules = [m.model_dump(mode="json") for m in prov.modules] if prov else []
        return {
            "name": k.name,
            "display_name": k.display_name,
            "env": k.env,
            "build": k.build,
            "kind": kind,  # "conda", "venv", "module"; None when the build's provenance is unknown
            "kind_label": KIND_LABELS.get(kind or "", "unknown"),
            "platform": prov.platform if prov else None,
            "language": k.language,
            "language_version": language_version(k.language, prov),
            "interpreter": interp.model_dump(mode="json") if interp else None,
            "modules": modules,  # {"name", "full_name", "path", "sha256"}, in Lmod's load order
            "module_load": "module load " + " ".join(m["full_name"] for m in modules) if modules else None,
            "pinned_of": k.pinned_of,
            "groups": k.groups,  # for these Unix groups only (none: everybody's)
            "packages_known": pkgs is not None,
            "packages": packages,
            "lock_name": lock_name,
            "lock_url": self.lock_url(contents.name, k.name, lock_name) if has_lock and lock_name else None,
            "installable": kind in ("conda", "venv"),
            "install": install_commands(k.name, prov),
        }

    def generation_doc(self, contents: GenerationContents, current: bool, user: str) -> dict[str, Any]:
        hidden = self.hidden_kernels(contents, user)
        contents = self._as_seen_by(contents, user)
        m = contents.manifest
        return {
            "generation": contents.name,
            "current": current,
            "created": m.created,
            "by": m.by,
            "default_kernel": m.default_kernel,
            "server": {"env": m.server.env, "build": m.server.build} if m.server else None,
            "kernels": [self.kernel_doc(contents, k) for k in _stock_first(m.kernels)],
            "restricted": hidden,  # kernels for groups this user is not in: only with a note
        }

    def current_doc(self, snap: Snapshot | None = None, user: str = "") -> dict[str, Any]:
        snap = snap or self.snapshot()
        if snap.current is None:
            return {"published": False, "generation": None, "kernels": [], "message": NOTHING_PUBLISHED}
        return {"published": True, **self.generation_doc(self._contents(snap.current), True, user)}

    def one_generation_doc(self, name: str, user: str = "") -> dict[str, Any]:
        snap = self.snapshot()
        gen = self._generation(snap, name)
        cur = snap.current.name if snap.current else None
        return self.generation_doc(self._contents(gen), gen.name == cur, user)

    def generations_doc(self, user: str = "") -> dict[str, Any]:
        snap = self.snapshot()
        cur = snap.current.name if snap.current else None
        out = []
        for name in reversed(snap.names):
            c = self.catalog.readable(self.catalog.generation(name))
            c = self._as_seen_by(c, user) if c else None
            out.append(
                {
                    "generation": name,
                    "current": name == cur,
                    "created": c.manifest.created if c else None,
                    "by": c.manifest.by if c else None,
                    "kernels": [k.name for k in c.manifest.kernels] if c else [],
                    "readable": c is not None,
                }
            )
        return {"current": cur, "generations": out}

    def diff(self, gen_a: str | None = None, gen_b: str | None = None, user: str = "") -> GenerationDiff:
        """``gen_a`` -> ``gen_b``; by default the one before the current -> the current."""
        snap = self.snapshot()
        after = self._generation(snap, gen_b or "current")
        before_name = gen_a if gen_a else previous_generation(after.name, snap.names)
        before = self._generation(snap, before_name) if before_name else None
        try:
            return self._diff(before, after, user)
        except RecordError:
            raise NotFound("one of these generations cannot be read; ask the administrators") from None

    def _diff(self, before: Generation | None, after: Generation, user: str) -> GenerationDiff:
        """The diff as ``user`` may see it: the cached one, unless a kernel is hidden from them."""
        a = self.catalog.contents(before) if before else None
        b = self.catalog.contents(after)
        seen_a = self._as_seen_by(a, user) if a else None
        seen_b = self._as_seen_by(b, user)
        if seen_a is a and seen_b is b:
            return self.catalog.diff(before, after)
        return diff_generations(seen_a, seen_b)

    def lock_file(self, gen_name: str, kernel: str, name: str | None = None, user: str = "") -> LockFile:
        """The lock of ``kernel`` in generation ``gen_name`` ('current' allowed): its
        conda-lock.yml, pylock.toml or modules.lock.json, by the kind of its build.

        Both names are looked up in the root (the generation among the published ones,
        the kernel in its manifest); the file is the one the manifest's build keeps,
        served only if it is a regular file inside that build under the root. ``name``,
        when given (the URL's last part), must be the name of that kind's lock.
        """
        snap = self.snapshot()
        contents = self._contents(self._generation(snap, gen_name), user)
        entry = next((k for k in contents.manifest.kernels if k.name == kernel), None)
        if entry is None:
            raise NotFound(f"generation {contents.name} has no kernel {kernel!r}")
        data = read_lock_copy(self.root, entry.env, entry.build)
        if data is None:
            raise NotFound(f"no lock is kept for build {entry.env}/{entry.build} of kernel {kernel!r}")
        prov = contents.provenance(entry.env, entry.build)
        lock_name = LOCK_NAMES.get(prov.kind) if prov else None
        if lock_name is None:
            raise NotFound(
                f"the record of build {entry.env}/{entry.build} of kernel {kernel!r} cannot be read, "
                "so neither can its lock; ask the administrators"
            )
        if name is not None and name != lock_name:
            raise NotFound(f"kernel {kernel!r} has no {name}: its lock is {lock_name}")
        return LockFile(name=lock_name, content_type=LOCK_TYPES[lock_name], data=data)

    def lock(self, gen_name: str, kernel: str, user: str = "") -> bytes:
        """The bytes of :meth:`lock_file`."""
        return self.lock_file(gen_name, kernel, user=user).data

    def lock_url(self, gen: str, kernel: str, name: str = "conda-lock.yml") -> str:
        return f"{self.prefix}lock/{quote(gen, safe='')}/{quote(kernel, safe='')}/{quote(name, safe='')}"

    # -- the page --------------------------------------------------------------------------------------

    def history(self, snap: Snapshot, user: str = "") -> list[dict[str, Any]]:
        """Every generation, newest first, each with the diff from the one before it."""
        out = []
        cur = snap.current.name if snap.current else None
        for i in range(len(snap.names) - 1, -1, -1):
            name = snap.names[i]
            gen = self.catalog.generation(name)
            before = self.catalog.generation(snap.names[i - 1]) if i else None
            try:
                d = self._diff(before, gen, user)
            except RecordError:
                out.append({"generation": name, "current": name == cur, "diff": None})
                continue
            out.append({"generation": name, "current": name == cur, "diff": d})
        return out

    def mine_bases(self, user: str) -> list[KernelEntry]:
        """The stock Python kernels ``user`` may build an environment of their own on."""
        snap = self.snapshot()
        if snap.current is None:
            return []
        try:
            manifest = snap.current.manifest()
        except RecordError:
            return []
        member_of = self._groups_of(user)
        return [
            k
            for k in manifest.kernels
            if k.language == "python" and not k.pinned_of and may_use(k.groups, member_of)
        ]

    def render_mine(
        self,
        user: str,
        nonce: str,
        envs: list[dict[str, Any]],
        *,
        said: str = "",
        error: str | None = None,
        shown: dict[str, Any] | None = None,
        xsrf: str = "",
    ) -> str:
        """The "My environments" page (its data from ``hubstock mine list --json`` as the user)."""
        return self.mine_page.render(
            user=user,
            nonce=nonce,
            prefix=self.prefix,
            envs=envs,
            bases=self.mine_bases(user),
            said=said,
            error=error,
            shown=shown,
            xsrf=xsrf,
            busy=any(e.get("state") in ("submitted", "running") for e in envs),
        )

    def render_page(self, user: str, nonce: str = "", query: str = "") -> str:
        snap = self.snapshot()
        current = None
        error = None
        if snap.current is not None:
            try:
                current = self.generation_doc(self._contents(snap.current), True, user)
            except NotFound as e:
                error = str(e)
        return self.page.render(
            user=user,
            nonce=nonce,
            query=query,
            prefix=self.prefix,
            hub_prefix=self.hub_prefix,
            current=current,
            error=error,
            nothing_published=NOTHING_PUBLISHED if snap.current is None else None,
            history=self.history(snap, user),
        )


def install_commands(kernel: str, prov: BuildProvenance | None) -> list[str]:
    """The commands that make the kernel's env elsewhere from its downloaded lock (none for a
    module env: the site's own software, not installable elsewhere)."""
    kind = prov.kind if prov else None
    if kind == "conda":
        return [
            f"conda-lock install -n {kernel} conda-lock.yml",
            f"micromamba create -n {kernel} -f conda-lock.yml",
        ]
    if kind == "venv" and prov is not None and prov.interpreter is not None:
        minor = ".".join(prov.interpreter.version.split(".")[:2])
        # uv installs a PEP 751 lock (named pylock.toml or pylock.<name>.toml: the name matters)
        return [
            f"uv venv --python {minor} {kernel}",
            f"uv pip sync --python {kernel}/bin/python pylock.toml",
        ]
    return []


def _stock_first(kernels: list[KernelEntry]) -> list[KernelEntry]:
    return [k for k in kernels if not k.pinned_of] + [k for k in kernels if k.pinned_of]


def _when(iso: str | None) -> str:
    """``2026-11-28T10:00:00+00:00`` -> ``2026-11-28 10:00 UTC``."""
    if not iso:
        return "unknown"
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if t.utcoffset() == timedelta(0):
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M %z")
