"""The "Stock environments" page: what the stock kernels hold, what changed, how to get them elsewhere.

A JupyterHub managed service (``apply_site`` sets it up from ``[hub.stock_page]``),
behind the proxy at ``/services/<name>/`` and in the hub's Services menu. Any user
logged in to the hub may read it (JupyterHub OAuth; everyone else is sent to log in).
It is read-only and reads only the shared root, through :mod:`hubstock.store`: never
the site repository. Run as::

    HUBSTOCK_ROOT=/software/hubstock python -m hubstock.hub.stock_page

Started as root (as the hub starts its services), it binds its port, then drops to
``$HUBSTOCK_STOCK_PAGE_USER`` (``nobody`` by default) before it reads anything of the root.

Under ``$JUPYTERHUB_SERVICE_PREFIX``:

    ""                                   the page: current generation, kernels, packages, history
    api/current                          the current generation, its kernels and their packages (JSON)
    api/generations                      every generation, newest first
    api/generations/<gen>                one generation, as api/current
    api/diff                             the current generation against the one before
    api/diff/<gen_a>/<gen_b>             any two (the same data as ``hubstock diff --json``)
    lock/<gen>/<kernel>/conda-lock.yml   the lock a kernel's build was made from (<gen>: or 'current')
    oauth_callback                       JupyterHub's OAuth

Each request resolves ``current`` once, so a publish while someone reads never gives a
mix. Generations and builds never change once published, so what is read from them,
and every diff, is cached in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import jinja2

from ..store.buildlock import lock_copy_path, read_lock_copy
from ..store.catalog import Catalog, language_version, package_source, previous_generation
from ..store.diff import GenerationContents, GenerationDiff, diff_generations
from ..store.generations import GEN_RE, Generation, resolve_current
from ..store.records import GenerationManifest, KernelEntry, RecordError
from ..store.root import Root

log = logging.getLogger("hubstock.stock_page")
TEMPLATES = Path(__file__).with_name("templates")
PAGE_TEMPLATE = "stock_page.html"
NOTHING_PUBLISHED = (
    "Nothing is published yet: the administrators have not made the stock kernels available. Come back later."
)


class NotFound(Exception):
    """A generation, kernel or lock that is not there (the message is for the user)."""


# ---------------------------------------------------------------------------------------------------------
# the data, and the page, without the web server


@dataclass(frozen=True)
class Snapshot:
    """What one request sees: ``current`` resolved once, and the generations then on the root."""

    current: Generation | None
    names: list[str]  # oldest first


class StockViews:
    """Documents and HTML for the page and its API, from the root (cached; one event loop)."""

    def __init__(self, root: Root, prefix: str = "/services/stock/", hub_prefix: str = "/hub/") -> None:
        self.root = root
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.hub_prefix = hub_prefix
        self.catalog = Catalog(root)
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

    def _contents(self, gen: Generation) -> GenerationContents:
        try:
            return self.catalog.contents(gen)
        except RecordError:
            raise NotFound(f"generation {gen.name} cannot be read; ask the administrators") from None

    def kernel_doc(self, contents: GenerationContents, k: KernelEntry) -> dict[str, Any]:
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
        lock = lock_copy_path(self.root, k.env, k.build)
        has_lock = lock is not None and os.access(lock, os.R_OK)  # offer only what can be served
        return {
            "name": k.name,
            "display_name": k.display_name,
            "env": k.env,
            "build": k.build,
            "language": k.language,
            "language_version": language_version(k.language, pkgs or []),
            "pinned_of": k.pinned_of,
            "packages_known": pkgs is not None,
            "packages": packages,
            "lock_url": self.lock_url(contents.name, k.name) if has_lock else None,
            "install": [
                f"conda-lock install -n {k.name} conda-lock.yml",
                f"micromamba create -n {k.name} -f conda-lock.yml",
            ],
        }

    def generation_doc(self, contents: GenerationContents, current: bool) -> dict[str, Any]:
        m = contents.manifest
        return {
            "generation": contents.name,
            "current": current,
            "created": m.created,
            "by": m.by,
            "default_kernel": m.default_kernel,
            "server": {"env": m.server.env, "build": m.server.build} if m.server else None,
            "kernels": [self.kernel_doc(contents, k) for k in _stock_first(m.kernels)],
        }

    def current_doc(self, snap: Snapshot | None = None) -> dict[str, Any]:
        snap = snap or self.snapshot()
        if snap.current is None:
            return {"published": False, "generation": None, "kernels": [], "message": NOTHING_PUBLISHED}
        return {"published": True, **self.generation_doc(self._contents(snap.current), current=True)}

    def one_generation_doc(self, name: str) -> dict[str, Any]:
        snap = self.snapshot()
        gen = self._generation(snap, name)
        cur = snap.current.name if snap.current else None
        return self.generation_doc(self._contents(gen), current=gen.name == cur)

    def generations_doc(self) -> dict[str, Any]:
        snap = self.snapshot()
        cur = snap.current.name if snap.current else None
        out = []
        for name in reversed(snap.names):
            c = self.catalog.readable(self.catalog.generation(name))
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

    def diff(self, gen_a: str | None = None, gen_b: str | None = None) -> GenerationDiff:
        """``gen_a`` -> ``gen_b``; by default the one before the current -> the current."""
        snap = self.snapshot()
        after = self._generation(snap, gen_b or "current")
        before_name = gen_a if gen_a else previous_generation(after.name, snap.names)
        before = self._generation(snap, before_name) if before_name else None
        try:
            return self.catalog.diff(before, after)
        except RecordError:
            raise NotFound("one of these generations cannot be read; ask the administrators") from None

    def lock(self, gen_name: str, kernel: str) -> bytes:
        """The conda-lock.yml of ``kernel`` in generation ``gen_name`` ('current' allowed).

        Both names are looked up in the root (the generation among the published ones,
        the kernel in its manifest); the file is the one the manifest's build keeps,
        served only if it is a regular file inside that build under the root.
        """
        snap = self.snapshot()
        contents = self._contents(self._generation(snap, gen_name))
        entry = next((k for k in contents.manifest.kernels if k.name == kernel), None)
        if entry is None:
            raise NotFound(f"generation {contents.name} has no kernel {kernel!r}")
        data = read_lock_copy(self.root, entry.env, entry.build)
        if data is None:
            raise NotFound(f"no lock is kept for build {entry.env}/{entry.build} of kernel {kernel!r}")
        return data

    def lock_url(self, gen: str, kernel: str) -> str:
        return f"{self.prefix}lock/{quote(gen, safe='')}/{quote(kernel, safe='')}/conda-lock.yml"

    # -- the page --------------------------------------------------------------------------------------

    def history(self, snap: Snapshot) -> list[dict[str, Any]]:
        """Every generation, newest first, each with the diff from the one before it."""
        out = []
        cur = snap.current.name if snap.current else None
        for i in range(len(snap.names) - 1, -1, -1):
            name = snap.names[i]
            gen = self.catalog.generation(name)
            before = self.catalog.generation(snap.names[i - 1]) if i else None
            try:
                d = self.catalog.diff(before, gen)
            except RecordError:
                out.append({"generation": name, "current": name == cur, "diff": None})
                continue
            out.append({"generation": name, "current": name == cur, "diff": d})
        return out

    def render_page(self, user: str, nonce: str = "", query: str = "") -> str:
        snap = self.snapshot()
        current = None
        error = None
        if snap.current is not None:
            try:
                current = self.generation_doc(self._contents(snap.current), current=True)
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
            history=self.history(snap),
        )


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


# ---------------------------------------------------------------------------------------------------------
# the web service


def make_app(views: StockViews, prefix: str, cookie_secret: bytes | None = None) -> Any:
    """The tornado application (JupyterHub OAuth on every route but the callback)."""
    from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
    from tornado import web

    class Base(HubOAuthenticated, web.RequestHandler):
        def initialize(self) -> None:
            self.views = views

        def set_default_headers(self) -> None:
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Referrer-Policy", "same-origin")
            self.set_header("Cache-Control", "no-store")  # each user's own view, never cached

        @property
        def user_name(self) -> str:
            return str((self.current_user or {}).get("name", ""))

    class Page(Base):
        @web.authenticated
        def get(self) -> None:
            nonce = secrets.token_urlsafe(16)
            self.set_header(
                "Content-Security-Policy",
                f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                "img-src 'self' data:; form-action 'none'; frame-ancestors 'self'; base-uri 'none'",
            )
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(self.views.render_page(self.user_name, nonce, self.get_argument("q", "")[:100]))

    class Api(Base):
        """JSON; 403 without a valid token or login cookie (never a redirect)."""

        def prepare(self) -> None:
            if self.current_user is None:
                raise web.HTTPError(403, "log in to the hub, or send a token of a hub user")

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            self.set_header("Content-Type", "application/json")
            exc = kwargs.get("exc_info", (None, None, None))[1]
            message = getattr(exc, "log_message", None) or self._reason
            self.finish(json.dumps({"status": status_code, "message": message}))

        def send(self, doc: Any) -> None:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(doc))

        def found(self, fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except NotFound as e:
                raise web.HTTPError(404, str(e)) from None

    class Current(Api):
        def get(self) -> None:
            self.send(self.views.current_doc())

    class Generations(Api):
        def get(self) -> None:
            self.send(self.views.generations_doc())

    class OneGeneration(Api):
        def get(self, gen: str) -> None:
            self.send(self.found(self.views.one_generation_doc, gen))

    class Diff(Api):
        def get(self, gen_a: str | None = None, gen_b: str | None = None) -> None:
            self.send(self.found(self.views.diff, gen_a, gen_b).model_dump(mode="json"))

    class Lock(Base):
        @web.authenticated
        def get(self, gen: str, kernel: str) -> None:
            try:
                data = self.views.lock(gen, kernel)
            except NotFound as e:
                raise web.HTTPError(404, str(e)) from None
            self.set_header("Content-Type", "application/x-yaml; charset=utf-8")
            self.set_header("Content-Disposition", 'attachment; filename="conda-lock.yml"')
            self.finish(data)

    p = prefix if prefix.endswith("/") else prefix + "/"
    name = r"([^/]+)"
    return web.Application(
        [
            (p, Page),
            (p + "oauth_callback", HubOAuthCallbackHandler),
            (p + "api/current", Current),
            (p + "api/generations", Generations),
            (p + f"api/generations/{name}", OneGeneration),
            (p + "api/diff", Diff),
            (p + f"api/diff/{name}/{name}", Diff),
            (p + f"lock/{name}/{name}/conda-lock.yml", Lock),
        ],
        cookie_secret=cookie_secret or secrets.token_bytes(32),
    )


def _warm_up(views: StockViews) -> None:
    """Run the page's code once on made-up data (reading nothing), so that what it imports lazily
    is imported while the process may still read every file of the hub's Python environment."""
    import tornado.simple_httpclient  # noqa: F401 - HubAuth asks the hub about tokens with it
    from jupyterhub.services.auth import HubOAuth

    HubOAuth.instance()
    kernel = KernelEntry(name="k", display_name="k", language="python", env="e", build="b")
    manifest = GenerationManifest(
        generation="0001",
        digest="",
        created="2000-01-01T00:00:00+00:00",
        by="-",
        default_kernel="k",
        kernels=[kernel],
    )
    diff = diff_generations(None, GenerationContents(name="0001", manifest=manifest))
    json.dumps(diff.model_dump(mode="json"))
    views.page.render(
        user="",
        nonce="",
        query="",
        prefix=views.prefix,
        hub_prefix=views.hub_prefix,
        current=None,
        error=None,
        nothing_published=NOTHING_PUBLISHED,
        history=[{"generation": "0001", "current": True, "diff": diff}],
    )


def drop_privileges(user: str) -> None:
    """Become ``user`` (and its group, with no others) when running as root; refuse root itself."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(
            f"hubstock stock page: user {user!r} does not exist; set [hub.stock_page] user in "
            "hubstock.toml to an unprivileged user."
        ) from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise SystemExit(f"hubstock stock page: refusing to run as {user!r}, which is root.")
    os.chdir("/")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.geteuid() == 0 or os.getegid() == 0:  # pragma: no cover - setuid cannot silently fail
        raise SystemExit("hubstock stock page: could not drop root privileges.")


def main() -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    logging.basicConfig(level=logging.WARNING, format="[stock page %(asctime)s] %(message)s")
    for name in ("hubstock", "tornado.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    root_dir = os.environ.get("HUBSTOCK_ROOT")
    if not root_dir:
        raise SystemExit("hubstock stock page: HUBSTOCK_ROOT is not set (apply_site sets it for the hub).")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/stock/"
    base = os.environ.get("JUPYTERHUB_BASE_URL") or "/"
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL") or "http://127.0.0.1:10101")
    parent = os.getppid()
    views = StockViews(Root(Path(root_dir)), prefix, base.rstrip("/") + "/hub/")
    app = make_app(views, prefix)
    sockets = bind_sockets(url.port or 80, url.hostname or "127.0.0.1")
    _warm_up(views)
    drop_privileges(os.environ.get("HUBSTOCK_STOCK_PAGE_USER") or "nobody")
    log.info("serving %s on %s as uid %d, reading %s", prefix, url.netloc, os.getuid(), root_dir)

    async def serve() -> None:
        HTTPServer(app, xheaders=True).add_sockets(sockets)
        while os.getppid() == parent:  # the hub stops it; should the hub die instead, it goes too
            await asyncio.sleep(5)
        log.info("the hub (pid %d) is gone: stopping", parent)

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
