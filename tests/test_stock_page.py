"""The "Stock environments" page without a hub: its documents, its HTML, its speed, what it refuses.

The root here is written through ``hubstock.store`` (records as ``hubstock build`` and
``publish`` write them, with 500-package builds and 50 generations); the page's real
tornado application answers over HTTP. JupyterHub's OAuth is exercised against a real
hub in ``test_stock_page_hub.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from traitlets.config import Config

from hubstock.hub import stock_page, stock_views
from hubstock.hub.config import apply_site
from hubstock.hub.stock_views import NotFound, StockViews
from hubstock.personal.job import PASSED_ON
from hubstock.store.buildlock import LOCK_COPY, lock_copy_path, read_lock_copy, write_lock_copy
from hubstock.store.builds import mark_complete, write_provenance
from hubstock.store.diff import GenerationContents, diff_generations, diff_packages
from hubstock.store.generations import generation, switch_current
from hubstock.store.records import (
    BuildProvenance,
    GenerationManifest,
    KernelEntry,
    LockedPackage,
)
from hubstock.store.root import Root
from hubstock.store.versions import compare_versions

CONDA = "https://conda.anaconda.org/conda-forge/linux-64"
PYPI = "https://files.pythonhosted.org/packages/ab/cd"


def packages(n: int, numpy: str = "1.26.4", six: str = "1.16.0") -> list[LockedPackage]:
    out = [
        LockedPackage(
            manager="conda",
            name="python",
            version="3.12.7",
            build="h0_cpython",
            url=f"{CONDA}/python.conda",
            sha256="0" * 64,
        ),
        LockedPackage(
            manager="conda",
            name="numpy",
            version=numpy,
            build="py312_0",
            url=f"{CONDA}/numpy.conda",
            sha256="1" * 64,
        ),
        LockedPackage(
            manager="pip",
            name="six",
            version=six,
            url=f"{PYPI}/six-{six}-py2.py3-none-any.whl",
            sha256="2" * 64,
        ),
    ]
    out += [
        LockedPackage(
            manager="conda",
            name=f"lib-{i:03d}",
            version=f"1.{i}",
            build="0",
            url=f"{CONDA}/lib-{i:03d}.conda",
            sha256="3" * 64,
        )
        for i in range(n - len(out))
    ]
    return out


def add_build(root: Root, env: str, bid: str, pkgs: list[LockedPackage], lock: bytes | None = None) -> Path:
    prefix = root.build(env, bid)
    prefix.mkdir(parents=True)
    write_provenance(
        prefix,
        BuildProvenance(
            build_id=bid,
            env=env,
            platform="linux-64",
            packages=pkgs,
            created="2026-01-01T00:00:00+00:00",
            builder="hubstock test",
        ),
    )
    if lock is not None:
        write_lock_copy(prefix, lock)
    mark_complete(prefix, bid)
    return prefix


def add_generation(
    root: Root, gen: str, kernels: list[KernelEntry], overrides: dict | None = None, by: str = "admin"
) -> None:
    g = generation(root, gen)
    g.kernels_dir.mkdir(parents=True)
    g.lab_settings_dir.mkdir(parents=True)
    (g.lab_settings_dir / "overrides.json").write_text(json.dumps(overrides or {}))
    g.write_manifest(
        GenerationManifest(
            generation=gen,
            digest=gen * 16,
            created=f"2026-02-{int(gen) % 28 + 1:02d}T09:30:00+00:00",
            by=by,
            default_kernel=kernels[0].name,
            kernels=kernels,
        )
    )


def stock(bid: str, name: str = "python-stock", **kw) -> KernelEntry:
    return KernelEntry(
        name=name, display_name="Python 3 (stock)", language="python", env="python", build=bid, **kw
    )


@pytest.fixture
def root(tmp_path) -> Root:
    """Generation 0001 (numpy 1.26.4) and 0002 (numpy 2.1.0, six 1.17.0; the old build pinned)."""
    r = Root(tmp_path / "root")
    add_build(r, "python", "b1", packages(500), lock=b"# lock of b1\n")
    add_build(r, "python", "b2", packages(500, numpy="2.1.0", six="1.17.0"), lock=b"# lock of b2\n")
    add_generation(r, "0001", [stock("b1")])
    add_generation(
        r,
        "0002",
        [
            stock("b2"),
            KernelEntry(
                name="python-stock-b1",
                display_name="Python 3 (stock) (previous build b1)",
                language="python",
                env="python",
                build="b1",
                pinned_of="python-stock",
            ),
        ],
        overrides={"@jupyterlab/notebook-extension:tracker": {"codeCellConfig": {"lineNumbers": True}}},
    )
    switch_current(r, "0002")
    return r


def test_versions_compare_as_pep440_then_conda_then_text():
    assert compare_versions("1.26.4", "2.1.0") == -1
    assert compare_versions("2.0rc1", "2.0") == -1
    assert compare_versions("1.0", "1.0.0") == 0
    assert compare_versions("1.1.1w", "1.1.1v") == 1  # openssl: not PEP 440, conda-style
    assert compare_versions("9e", "10a") == -1
    assert compare_versions("1!0.1", "2.0") == 1


def test_package_changes_conda_and_pypi():
    a = packages(5)
    b = [p for p in packages(5, numpy="1.25.0", six="1.17.0") if p.name != "lib-000"]
    b.append(LockedPackage(manager="pip", name="Demo_Pkg", version="1", url=f"{PYPI}/x.whl", sha256="4" * 64))
    b[0] = b[0].model_copy(update={"build": "h1_cpython"})
    got = [(c.name, c.manager, c.change, c.before, c.after) for c in diff_packages(a, b)]
    assert got == [
        ("Demo_Pkg", "pip", "added", None, "1"),
        ("lib-000", "conda", "removed", "1.0", None),
        ("numpy", "conda", "downgraded", "1.26.4", "1.25.0"),
        ("python", "conda", "rebuilt", "3.12.7", "3.12.7"),
        ("six", "pip", "upgraded", "1.16.0", "1.17.0"),
    ]


def _contents(name: str, kernels: list[KernelEntry]) -> GenerationContents:
    m = GenerationManifest(
        generation=name, digest="d", created="t", by="a", default_kernel=kernels[0].name, kernels=kernels
    )
    return GenerationContents(name=name, manifest=m)


def test_renames_are_paired_only_when_plain():
    a = _contents("0001", [stock("b1"), KernelEntry(name="r", display_name="R", env="r", build="r1")])
    b = _contents(
        "0002", [stock("b1", name="py"), KernelEntry(name="r-stock", display_name="R 4", env="r", build="r1")]
    )
    d = {k.name: (k.change, k.renamed_from) for k in diff_generations(a, b).kernels}
    assert d == {"py": ("renamed", "python-stock"), "r-stock": ("renamed", "r")}
    # two candidates on one env, none with the old display name or build: not a rename
    c = _contents(
        "0003",
        [
            KernelEntry(name="x", display_name="X", env="python", build="b9"),
            KernelEntry(name="y", display_name="Y", env="python", build="b8"),
        ],
    )
    d = {k.name: k.change for k in diff_generations(a, c).kernels}
    assert d == {"x": "added", "y": "added", "python-stock": "removed", "r": "removed"}


def test_the_documents_from_the_root(root):
    views = StockViews(root)
    doc = views.current_doc()
    assert doc["published"] is True and doc["generation"] == "0002" and doc["by"] == "admin"
    k = doc["kernels"][0]
    assert (k["name"], k["env"], k["build"], k["language"], k["language_version"]) == (
        "python-stock",
        "python",
        "b2",
        "python",
        "3.12.7",
    )
    pk = {p["name"]: p for p in k["packages"]}
    assert len(pk) == 500
    assert (pk["numpy"]["version"], pk["numpy"]["source"]) == ("2.1.0", "conda-forge")
    assert (pk["six"]["version"], pk["six"]["source"], pk["six"]["manager"]) == ("1.17.0", "PyPI", "pip")
    assert k["lock_url"] == "/services/stock/lock/0002/python-stock/conda-lock.yml"
    assert k["install"] == [
        "conda-lock install -n python-stock conda-lock.yml",
        "micromamba create -n python-stock -f conda-lock.yml",
    ]
    assert doc["kernels"][1]["pinned_of"] == "python-stock"
    gens = views.generations_doc()
    assert gens["current"] == "0002" and [g["generation"] for g in gens["generations"]] == ["0002", "0001"]
    d = views.diff()
    assert (d.before.generation, d.after.generation) == ("0001", "0002")
    stock_change = next(c for c in d.kernels if c.name == "python-stock")
    assert [(p.name, p.change, p.before, p.after) for p in stock_change.packages] == [
        ("numpy", "upgraded", "1.26.4", "2.1.0"),
        ("six", "upgraded", "1.16.0", "1.17.0"),
    ]
    assert views.diff("0002", "0001").kernels[0].packages[0].change == "downgraded"
    assert views.lock("0002", "python-stock") == b"# lock of b2\n"
    assert views.lock("current", "python-stock-b1") == b"# lock of b1\n"


@pytest.mark.parametrize(
    "gen, kernel",
    [
        ("..", "python-stock"),
        ("0002", ".."),
        ("../../etc", "passwd"),
        ("0002/../0001", "python-stock"),
        ("0007", "python-stock"),
        ("0002", "python"),
        ("0002", "python-stock/../../../../etc/passwd"),
    ],
)
def test_a_lock_download_takes_names_from_the_manifest_only(root, gen, kernel):
    with pytest.raises(NotFound):
        StockViews(root).lock(gen, kernel)


def test_a_lock_copy_that_is_a_symlink_or_leaves_the_root_is_refused(root, tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for users\n")
    # the lock copy is a symlink (to a file outside the root, or one inside the same build)
    add_build(root, "python", "b3", packages(3))
    os.symlink(secret, root.build("python", "b3") / LOCK_COPY)
    add_build(root, "python", "b4", packages(3))
    os.symlink(".hubstock-build.json", root.build("python", "b4") / LOCK_COPY)
    # the build directory itself is a symlink to somewhere else
    (tmp_path / "outside" / "b5").mkdir()
    (tmp_path / "outside" / "b5" / LOCK_COPY).write_text("also not for users\n")
    os.symlink(tmp_path / "outside" / "b5", root.build("python", "b5"))
    # a FIFO, which would block a reader
    add_build(root, "python", "b6", packages(3))
    os.mkfifo(root.build("python", "b6") / LOCK_COPY)
    kernels = [stock(b, name=f"k{b}") for b in ("b3", "b4", "b5", "b6")]
    add_generation(root, "0003", kernels)
    views = StockViews(root)
    for k in kernels:
        assert lock_copy_path(root, k.env, k.build) is None
        assert read_lock_copy(root, k.env, k.build) is None
        with pytest.raises(NotFound, match="no lock is kept"):
            views.lock("0003", k.name)
    doc = views.one_generation_doc("0003")
    assert [k["lock_url"] for k in doc["kernels"]] == [None] * 4


def test_nothing_published_is_said_plainly(tmp_path):
    views = StockViews(Root(tmp_path / "empty"))
    assert views.current_doc()["published"] is False
    html = views.render_page("alice")
    assert "Nothing published" in html and "not made the stock kernels available" in html
    with pytest.raises(NotFound):
        views.lock("current", "python-stock")


def test_the_page_escapes_what_it_shows(tmp_path):
    r = Root(tmp_path / "root")
    evil = "<script>alert(1)</script>"
    add_build(
        r,
        "python",
        "b1",
        [LockedPackage(manager="pip", name=evil, version="1", url=f"{PYPI}/x.whl", sha256="0" * 64)],
    )
    add_generation(
        r,
        "0001",
        [KernelEntry(name="k", display_name=evil, language="python", env="python", build="b1")],
        by=evil,
    )
    switch_current(r, "0001")
    html = StockViews(r).render_page(evil)
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_500_package_env_and_50_generations_render_well_under_a_second(tmp_path, monkeypatch):
    r = Root(tmp_path / "root")
    for i in range(1, 51):
        bid = f"b{i:02d}"
        add_build(r, "python", bid, packages(500, numpy=f"1.{i}.0"), lock=b"# lock\n")
        kernels = [stock(bid)] + (
            [stock(f"b{i - 1:02d}", name=f"python-stock-b{i - 1:02d}", pinned_of="python-stock")]
            if i > 1
            else []
        )
        add_generation(r, f"{i:04d}", kernels)
    switch_current(r, "0050")
    views = StockViews(r)
    resolved = []
    real = stock_views.resolve_current
    monkeypatch.setattr(stock_views, "resolve_current", lambda root: resolved.append(1) or real(root))

    t0 = time.perf_counter()
    html = views.render_page("alice")
    cold = time.perf_counter() - t0
    assert resolved == [1]  # one request, one look at `current`
    t0 = time.perf_counter()
    views.render_page("alice")
    warm = time.perf_counter() - t0
    assert html.count('<tr data-name="lib-') == 2 * 497  # two kernels of 500 packages each
    assert html.count('<details class="generation"') == 50
    # printed, never asserted: tests do not assert wall-clock times (nox -s bench measures)
    print(f"\n50 generations, 2 x 500 packages: first render {cold * 1000:.0f} ms, then {warm * 1000:.0f} ms")


def _as(user_args: list[str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*user_args, sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )


def test_the_service_drops_root_before_it_reads_anything():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    code = (
        "import os; from hubstock.hub.stock_page import drop_privileges; drop_privileges('nobody'); "
        "print(os.getuid(), os.getgid(), os.getgroups())"
    )
    # nobody's own groups only (a site adds the page's account to the groups of restricted kernels)
    assert _as([], code).stdout.split() == ["65534", "65534", "[65534]"]
    res = _as([], code.replace("'nobody'", "'root'"))
    assert res.returncode != 0 and "refusing to run as 'root'" in res.stderr
    res = _as([], code.replace("'nobody'", "'no-such-user-xyz'"))
    assert res.returncode != 0 and "does not exist" in res.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_the_service_stops_at_once_on_sigint_or_sigterm(root, sig):
    """JupyterHub stops its services with SIGINT, then SIGTERM after a wait: the service ends on
    either, even started with SIGINT ignored (as a hub started in the background starts it)."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "HUBSTOCK_ROOT": str(root.path),
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_API_TOKEN": "x",
        "JUPYTERHUB_CLIENT_ID": "service-stock",
        "JUPYTERHUB_SERVICE_NAME": "stock",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubstock.hub.stock_page"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        for line in proc.stdout:
            if "serving" in line:
                break
        else:
            raise AssertionError(f"the service did not start: {proc.wait()}")
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(timeout=30) == 0  # at once, not after the hub's 10 s wait and SIGKILL
        print(f"\nthe stock page ended {time.monotonic() - t0:.2f} s after {sig}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_web_service_without_a_login(root):
    """No cookie and no token: the page sends to the hub's login, the API says 403."""
    import asyncio

    from tornado.httpclient import AsyncHTTPClient, HTTPClientError
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    async def run() -> dict:
        os.environ.setdefault("JUPYTERHUB_API_TOKEN", "x")
        os.environ.setdefault("JUPYTERHUB_CLIENT_ID", "service-stock")
        os.environ.setdefault("JUPYTERHUB_SERVICE_NAME", "stock")
        views = StockViews(root)
        app = stock_page.make_app(views, "/services/stock/")
        sockets = bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        server = HTTPServer(app)
        server.add_sockets(sockets)
        client = AsyncHTTPClient()
        out = {}
        for path in (
            "",
            "api/current",
            "api/generations",
            "api/diff",
            "api/diff/0001/0002",
            "lock/0002/python-stock/conda-lock.yml",
        ):
            try:
                r = await client.fetch(
                    f"http://127.0.0.1:{port}/services/stock/{path}", follow_redirects=False
                )
                out[path] = (r.code, r.headers.get("Location"), r.body)
            except HTTPClientError as e:
                out[path] = (e.code, e.response.headers.get("Location"), e.response.body)
        server.stop()
        return out

    got = asyncio.run(run())
    for path in ("", "lock/0002/python-stock/conda-lock.yml"):
        code, location, _ = got[path]
        assert code == 302 and "/hub/api/oauth2/authorize" in location, (path, got[path])
    for path in ("api/current", "api/generations", "api/diff", "api/diff/0001/0002"):
        code, _, body = got[path]
        assert code == 403 and json.loads(body)["status"] == 403, (path, got[path])
        assert b"numpy" not in body


def _hub_config(tmp_path: Path, extra: str = "") -> Config:
    site = tmp_path / "site"
    (site / "envs").mkdir(parents=True)
    (site / "hubstock.toml").write_text(
        f'root = "{tmp_path / "root"}"\n[hub]\nstate_dir = "{tmp_path / "state"}"\nidle_timeout = 0\n'
        '[spawner]\nscheduler = "local"\n' + extra
    )
    c = Config()
    apply_site(c, site)
    return c


def test_the_hub_serves_the_page_to_every_user_from_its_settings(tmp_path):
    c = _hub_config(tmp_path, '[hub.stock_page]\nname = "stock-envs"\nuser = "hubread"\nport = 18123\n')
    (svc,) = c.JupyterHub.services.get_value([])
    assert svc == {
        "name": "stock-envs",
        "url": "http://127.0.0.1:18123",
        "command": [sys.executable, "-m", "hubstock.hub.stock_page"],
        "environment": {
            "HUBSTOCK_ROOT": str(tmp_path / "root"),
            "HUBSTOCK_SITE": str(tmp_path / "site"),
            "HUBSTOCK_STOCK_PAGE_USER": "hubread",
            **{k: os.environ[k] for k in PASSED_ON if k in os.environ},  # the hub node's way out
        },
        "display": True,
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": [],
        "info": {"display_name": "Stock environments"},
    }
    assert c.JupyterHub.extra_user_scopes.get_value(set()) == {"access:services!service=stock-envs"}
    (menu,) = c.JupyterHub.template_paths.get_value([])
    assert (Path(menu) / "page.html").read_text().count('service.info.get("display_name")') == 1

    off = _hub_config(tmp_path / "off", "[hub.stock_page]\nenabled = false\n")
    assert off.JupyterHub.services.get_value([]) == []
    assert off.JupyterHub.extra_user_scopes.get_value(set()) == set()
