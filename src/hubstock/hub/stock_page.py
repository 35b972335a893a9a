"""The "Stock environments" page: what the stock kernels hold, what changed, how to get them elsewhere.

A JupyterHub managed service (``apply_site`` sets it up from ``[hub.stock_page]``),
behind the proxy at ``/services/<name>/`` and in the hub's Services menu. Any user
logged in to the hub may read it (JupyterHub OAuth; everyone else is sent to log in).
It reads only the shared root, through :mod:`hubstock.store`: never the site repository;
the one thing it changes is a logged-in user's own environments ("My environments"), which
its helper (:mod:`.mine_helper`, forked while the page was root) does as that user. Run as::

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
    lock/<gen>/<kernel>/conda-lock.yml   the lock a kernel's build was made from (<gen>: or 'current'),
    lock/<gen>/<kernel>/pylock.toml      by its kind: a conda env's, a venv's (PEP 751), a module
    lock/<gen>/<kernel>/modules.lock.json  env's (the modules it loads; for reference)
    mine                                 My environments: the user's own, and a form (POST, XSRF) to
                                         create or remove one
    api/mine                             the user's own environments (JSON)
    api/users/<user>/mine                POST {name, packages, base}: create one; 403 for another user
    oauth_callback                       JupyterHub's OAuth

Each request resolves ``current`` once, so a publish while someone reads never gives a
mix. Generations and builds never change once published, so what is read from them,
and every diff, is cached in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import re
import secrets
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

from ..store.buildlock import LOCK_NAMES
from ..store.diff import GenerationContents, diff_generations
from ..store.generations import generation, generations
from ..store.records import GenerationManifest, KernelEntry, RecordError
from ..store.root import Root
from .mine_helper import MineHelper, from_site
from .stock_views import NOTHING_PUBLISHED, NotFound, StockViews

log = logging.getLogger("hubstock.stock_page")


# ---------------------------------------------------------------------------------------------------------
# the web service


def make_app(
    views: StockViews, prefix: str, cookie_secret: bytes | None = None, mine: MineHelper | None = None
) -> Any:
    """The tornado application (JupyterHub OAuth on every route but the callback); ``mine``: the
    helper that runs ``hubstock mine`` as the logged-in user ("My environments"), if any."""
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
            self.send(self.views.current_doc(user=self.user_name))

    class Generations(Api):
        def get(self) -> None:
            self.send(self.views.generations_doc(self.user_name))

    class OneGeneration(Api):
        def get(self, gen: str) -> None:
            self.send(self.found(self.views.one_generation_doc, gen, self.user_name))

    class Diff(Api):
        def get(self, gen_a: str | None = None, gen_b: str | None = None) -> None:
            self.send(self.found(self.views.diff, gen_a, gen_b, self.user_name).model_dump(mode="json"))

    class Lock(Base):
        @web.authenticated
        def get(self, gen: str, kernel: str, name: str) -> None:
            try:
                lock = self.views.lock_file(gen, kernel, name, self.user_name)
            except NotFound as e:
                raise web.HTTPError(404, str(e)) from None
            self.set_header("Content-Type", lock.content_type)
            self.set_header("Content-Disposition", f'attachment; filename="{lock.name}"')
            self.finish(lock.data)

    class Mine(Base):
        """My environments: the user's own (``hubstock mine``, run as them by the helper)."""

        async def ask(self, args: list[str]) -> dict[str, Any]:
            if mine is None:
                raise web.HTTPError(404, "personal environments are not offered on this hub")
            return await asyncio.to_thread(mine.ask, self.user_name, args)

        @web.authenticated
        async def get(self) -> None:
            res = await self.ask(["list"])
            envs = json.loads(res["stdout"])["envs"] if res["code"] == 0 else []
            shown = None
            show = self.get_argument("show", "")[:40]
            if show and any(e["name"] == show for e in envs):
                one = await self.ask(["show", show])
                shown = json.loads(one["stdout"]) if one["code"] == 0 else None
            nonce = secrets.token_urlsafe(16)
            self.set_header(
                "Content-Security-Policy",
                f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; form-action 'self'; "
                "frame-ancestors 'self'; base-uri 'none'",
            )
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(
                views.render_mine(
                    self.user_name,
                    nonce,
                    envs,
                    said=self.get_argument("said", "")[:600],
                    error=None if res["code"] == 0 else said_of(res),
                    shown=shown,
                    xsrf=self.xsrf_form_html(),
                )
            )

        @web.authenticated
        async def post(self) -> None:
            action = self.get_body_argument("action", "")
            name = self.get_body_argument("name", "")[:100]
            if action == "create":
                said = await create(
                    self, name, self.get_body_argument("base", ""), self.get_body_argument("packages", "")
                )
            elif action == "remove":
                said = said_of(await self.ask(["remove", "--", name]))
            else:
                raise web.HTTPError(400, "unknown action")
            self.redirect(f"{p}mine?{urlencode({'said': said[:600], 'show': name})}")

    class MineApi(Api):
        """``GET api/mine``: the user's environments; ``POST api/users/<name>/mine`` (JSON ``name``,
        ``packages``, ``base``): create one, for oneself only (403 for anyone else)."""

        def check_xsrf_cookie(self) -> None:
            if not self.request.headers.get("Authorization"):  # a browser's cookie: the form's rule
                super().check_xsrf_cookie()

        async def get(self, owner: str | None = None) -> None:
            if owner is not None and owner != self.user_name:
                raise web.HTTPError(403, f"{self.user_name} may not see the environments of {owner[:40]!r}")
            if mine is None:
                raise web.HTTPError(404, "personal environments are not offered on this hub")
            res = await asyncio.to_thread(mine.ask, self.user_name, ["list"])
            if res["code"] != 0:
                raise web.HTTPError(500, said_of(res))
            self.send(json.loads(res["stdout"]))

        async def post(self, owner: str) -> None:
            if owner != self.user_name:
                raise web.HTTPError(403, f"{self.user_name} may not create environments for {owner[:40]!r}")
            if mine is None:
                raise web.HTTPError(404, "personal environments are not offered on this hub")
            try:
                body = json.loads(self.request.body or b"{}")
                packages = body.get("packages", [])
                packages = " ".join(packages) if isinstance(packages, list) else str(packages)
                name, base = str(body.get("name", "")), str(body.get("base", ""))
            except (ValueError, AttributeError, TypeError):
                raise web.HTTPError(400, "send JSON: {'name': ..., 'packages': [...], 'base': ...}") from None
            res = await mine_create(self.user_name, name, base, packages)
            if res["code"] != 0:
                raise web.HTTPError(400, said_of(res))
            self.send(json.loads(res["stdout"]))

    async def mine_create(user: str, name: str, base: str, packages: str) -> dict[str, Any]:
        assert mine is not None
        pkgs = packages.replace(",", " ").split()
        if len(packages) > 2000 or any(x.startswith("-") for x in pkgs):
            return {
                "code": 2,
                "stdout": "",
                "stderr": "hubstock: give package names (at most 2,000 characters), no options.",
            }
        args = ["create", "--no-wait", *([f"--from={base}"] if base else []), "--", name, *pkgs]
        return await asyncio.to_thread(mine.ask, user, args)

    async def create(handler: Mine, name: str, base: str, packages: str) -> str:
        if mine is None:
            raise web.HTTPError(404, "personal environments are not offered on this hub")
        res = await mine_create(handler.user_name, name, base, packages)
        if res["code"] != 0:
            return said_of(res)
        job = json.loads(res["stdout"]).get("job")
        return f"{name}: build job {job} submitted; this page follows it."

    p = prefix if prefix.endswith("/") else prefix + "/"
    name = r"([^/]+)"
    lock_name = "(" + "|".join(re.escape(n) for n in sorted(set(LOCK_NAMES.values()))) + ")"
    return web.Application(
        [
            (p, Page),
            (p + "oauth_callback", HubOAuthCallbackHandler),
            (p + "api/current", Current),
            (p + "api/generations", Generations),
            (p + f"api/generations/{name}", OneGeneration),
            (p + "api/diff", Diff),
            (p + f"api/diff/{name}/{name}", Diff),
            (p + f"lock/{name}/{name}/{lock_name}", Lock),
            (p + "mine", Mine),
            (p + "api/mine", MineApi),
            (p + f"api/users/{name}/mine", MineApi),
        ],
        cookie_secret=cookie_secret or secrets.token_bytes(32),
        xsrf_cookies=True,
    )


def said_of(res: dict[str, Any]) -> str:
    """What a ``hubstock mine`` run said: its one sentence (without the ``hubstock:``), or its output."""
    lines = [ln for ln in str(res.get("stderr", "")).splitlines() if ln.startswith("hubstock:")]
    text = lines[-1].removeprefix("hubstock:").strip() if lines else str(res.get("stderr", "")).strip()
    return text[-600:] or f"it failed (exit code {res.get('code')})"


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


def restricted_gids(root: Root) -> list[int]:
    """The groups of every published kernel for some groups only (that exist here): the page keeps
    them when it drops root, so that it reads those kernels' builds (it shows each kernel to its
    members only). A group first published after the page started is not among them: the page
    then shows that kernel without its packages until the hub (or the page) is restarted."""
    gids = set()
    for name in generations(root):
        try:
            manifest = generation(root, name).manifest()
        except RecordError:
            continue
        for k in manifest.kernels:
            for g in k.groups:
                with contextlib.suppress(KeyError):
                    gids.add(grp.getgrnam(g).gr_gid)
    return sorted(gids)


def drop_privileges(user: str, extra_gids: list[int] | None = None) -> None:
    """Become ``user`` (with its own groups, and ``extra_gids``) when running as root; refuse root
    itself."""
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
    os.setgroups(sorted({*os.getgrouplist(user, pw.pw_gid), *(extra_gids or [])}))
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.geteuid() == 0 or os.getegid() == 0:  # pragma: no cover - setuid cannot silently fail
        raise SystemExit("hubstock stock page: could not drop root privileges.")


def main() -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    def stop_now(signum: int, frame: object) -> None:  # until the loop runs (see serve())
        raise SystemExit(0)

    # the hub stops its services with SIGINT, then SIGTERM: either ends this one at once, even when
    # the hub was started with SIGINT ignored (in the background, by a script)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_now)
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
    note = os.environ.get("HUBSTOCK_RESTRICTED_NOTE") or None
    views = StockViews(Root(Path(root_dir)), prefix, base.rstrip("/") + "/hub/", note)
    # "My environments" needs the helper that acts as each user: only a page started as root has one
    site_dir = os.environ.get("HUBSTOCK_SITE")
    cmd = from_site(site_dir) if site_dir and os.geteuid() == 0 else None
    mine = MineHelper.start(cmd) if cmd is not None else None
    app = make_app(views, prefix, mine=mine)
    sockets = bind_sockets(url.port or 80, url.hostname or "127.0.0.1")
    _warm_up(views)
    drop_privileges(os.environ.get("HUBSTOCK_STOCK_PAGE_USER") or "nobody", restricted_gids(views.root))
    log.info("serving %s on %s as uid %d, reading %s", prefix, url.netloc, os.getuid(), root_dir)

    async def serve() -> None:
        server = HTTPServer(app, xheaders=True)
        server.add_sockets(sockets)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while os.getppid() == parent:  # should the hub die instead, it goes too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)
            if stop.is_set():
                log.info("stopping (signal)")
                break
        else:
            log.info("the hub (pid %d) is gone: stopping", parent)
        server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)
    finally:
        if mine is not None:
            mine.stop()


if __name__ == "__main__":
    main()
