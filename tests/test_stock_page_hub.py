"""The "Stock environments" page behind a real hub: JupyterHub's OAuth, PAM users, the proxy.

The hub runs the site's own ``spawner/jupyterhub_config.py`` as root (the ``local``
scheduler: no server is started here), and starts the page as a managed service, which
drops to ``nobody``. Without a login the page sends to the hub's login and the API answers
403; a logged-in user (cookie) or a user's token reads both. The service reads nothing
outside the root, and no name in a URL makes it serve another file.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from rigs.hubsite import free_port, hub_settings, start_hub
from rigs.slurm_rig import create_user, remove_user
from tests.helpers import need_root
from tests.test_stock_page import add_build, add_generation, packages, stock

from hubstock.store.buildlock import LOCK_COPY, read_lock_copy
from hubstock.store.generations import switch_current
from hubstock.store.records import KernelEntry
from hubstock.store.root import Root

pytestmark = pytest.mark.hub

REPO = Path(__file__).resolve().parent.parent
USER, PASSWORD = f"hsstock{secrets.token_hex(2)}", "Stock-Page-77"
SECRET = "a secret of root's, outside the root"


@pytest.fixture(scope="module")
def place(hub_workdir) -> Path:
    d = hub_workdir / "stock-page"
    d.mkdir(mode=0o755)
    return d


@pytest.fixture(scope="module")
def root(place) -> Root:
    """Generations 0001 and 0002 (written through the store), and builds that try to leak files."""
    r = Root(place / "root")
    add_build(r, "python", "b1", packages(500), lock=b"# lock of b1\n")
    add_build(r, "python", "b2", packages(500, numpy="2.1.0"), lock=b"# lock of b2\n")
    add_generation(r, "0001", [stock("b1")])
    outside = place / "outside"
    outside.mkdir(mode=0o755)
    (outside / "public.txt").write_text(SECRET + " (world-readable)\n")
    os.chmod(outside / "public.txt", 0o644)
    (outside / "private.txt").write_text(SECRET + " (root only)\n")
    os.chmod(outside / "private.txt", 0o600)
    add_build(r, "python", "sym", packages(3))  # its lock copy: a symlink out of the root
    os.symlink(outside / "public.txt", r.build("python", "sym") / LOCK_COPY)
    add_build(r, "python", "hard", packages(3))  # its lock copy: a hard link to a root-only file
    os.link(outside / "private.txt", r.build("python", "hard") / LOCK_COPY)
    (outside / "elsewhere").mkdir(mode=0o755)  # a build directory that is a symlink out of the root
    (outside / "elsewhere" / LOCK_COPY).write_text(SECRET + " (in a folder)\n")
    os.symlink(outside / "elsewhere", r.build("python", "away"))
    extra = [
        KernelEntry(name=f"k-{b}", display_name=b, env="python", build=b) for b in ("sym", "hard", "away")
    ]
    add_generation(r, "0002", [stock("b2"), *extra])
    switch_current(r, "0002")
    return r


@pytest.fixture(scope="module")
def user(hub_workdir):
    need_root("the hub tests")
    homes = hub_workdir / "homes"
    homes.mkdir(mode=0o755, exist_ok=True)
    create_user(USER, PASSWORD, homes)
    yield USER
    remove_user(USER)


@pytest.fixture(scope="module")
def hub(place, root, channel, user):
    site = place / "site"
    shutil.copytree(REPO / "spawner", site / "spawner")
    ports = [free_port() for _ in range(3)]
    settings = hub_settings(root.path, channel, place / "state", "local", ports)
    (site / "hubstock.toml").write_text(settings + '\n[hub.stock_page]\nuser = "nobody"\n')
    h = start_hub(site, ports[0], place / "hub.log")
    yield h
    pid = _service_pid(h)
    h.stop()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists(), "the stock page outlived the hub"


def login(hub) -> requests.Session:
    s = requests.Session()
    page = s.get(hub.url + "/hub/login", timeout=30).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page)
    r = s.post(
        hub.url + "/hub/login?next=/hub/home",
        data={"username": USER, "password": PASSWORD, **({"_xsrf": xsrf.group(1)} if xsrf else {})},
        timeout=60,
    )
    assert r.status_code == 200 and "/hub/login" not in r.url, hub.log_tail()
    return s


def raw_get(hub, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client folds ``..`` away)."""
    u = urlparse(hub.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def test_without_a_login_the_page_sends_to_the_login_and_the_api_says_403(hub):
    r = requests.get(hub.url + "/services/stock/", timeout=30)
    assert r.status_code == 200 and urlparse(r.url).path == "/hub/login", (r.url, hub.log_tail())
    assert "numpy" not in r.text
    r = requests.get(hub.url + "/services/stock/lock/current/python-stock/conda-lock.yml", timeout=30)
    assert urlparse(r.url).path == "/hub/login" and b"lock of" not in r.content
    for path in ("api/current", "api/generations", "api/generations/0002", "api/diff", "api/diff/0001/0002"):
        r = requests.get(f"{hub.url}/services/stock/{path}", timeout=30, allow_redirects=False)
        assert r.status_code == 403 and r.json()["status"] == 403, (path, r.status_code, r.text)
        r = requests.get(
            f"{hub.url}/services/stock/{path}", headers={"Authorization": "token not-a-token"}, timeout=30
        )
        assert r.status_code == 403, (path, r.status_code)


def test_a_user_reads_the_page_and_the_api_with_a_login_or_a_token(hub):
    s = login(hub)
    home = s.get(hub.url + "/hub/home", timeout=30).text
    assert 'href="/services/stock/">Stock environments</a>' in home  # the Services menu
    r = s.get(hub.url + "/services/stock/", timeout=30)
    assert r.status_code == 200 and urlparse(r.url).path == "/services/stock/", r.url
    assert f"Signed in as {USER}" in r.text
    assert re.search(
        r'<tr data-name="numpy"><td class="name">numpy</td><td class="version">2\.1\.0</td>', r.text
    )
    assert "Content-Security-Policy" in r.headers and r.headers["Cache-Control"] == "no-store"
    doc = s.get(hub.url + "/services/stock/api/current", timeout=30).json()
    assert doc["generation"] == "0002" and doc["kernels"][0]["name"] == "python-stock"
    r = s.get(hub.url + "/services/stock/lock/0001/python-stock/conda-lock.yml", timeout=30)
    assert r.status_code == 200 and r.content == b"# lock of b1\n"
    assert r.headers["Content-Disposition"] == 'attachment; filename="conda-lock.yml"'

    status, body = hub.request(
        "POST",
        f"/hub/api/users/{USER}/tokens",
        body={"auth": {"username": USER, "password": PASSWORD}, "expires_in": 600},
    )
    assert status in (200, 201), body
    auth = {"Authorization": f"token {body['token']}"}
    diff = requests.get(hub.url + "/services/stock/api/diff", headers=auth, timeout=30).json()
    assert (diff["before"]["generation"], diff["after"]["generation"]) == ("0001", "0002")
    change = next(k for k in diff["kernels"] if k["name"] == "python-stock")
    assert change["packages"] == [
        {
            "manager": "conda",
            "name": "numpy",
            "change": "upgraded",
            "before": "1.26.4",
            "after": "2.1.0",
            "before_build": "py312_0",
            "after_build": "py312_0",
        }
    ]
    r = requests.get(
        hub.url + "/services/stock/lock/current/python-stock/conda-lock.yml", headers=auth, timeout=30
    )
    assert r.status_code == 200 and r.content == b"# lock of b2\n"


def _service_pid(hub) -> int:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            status = (d / "status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        if b"hubstock.hub.stock_page" in cmd and ppid == hub.proc.pid:
            return int(d.name)
    raise AssertionError(f"the stock page service is not running\n{hub.log_tail()}")


def test_the_service_runs_as_nobody_and_serves_nothing_outside_the_root(hub, root):
    status = (Path("/proc") / str(_service_pid(hub)) / "status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
    groups = re.search(r"^Groups:[ \t]*(.*)$", status, re.M).group(1).split()
    # nobody's own group only: no kernel for some groups only is published on this root
    assert uids == ["65534"] * 4 and gids == ["65534"] * 4 and groups == ["65534"]

    s = login(hub)
    assert s.get(hub.url + "/services/stock/", timeout=30).status_code == 200  # OAuth: the service's cookie
    base = "/services/stock/lock"
    cookies = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    u = urlparse(hub.url)

    def get(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.request("GET", path, headers={"Cookie": cookies})
        resp = conn.getresponse()
        out = resp.status, resp.read()
        conn.close()
        location = resp.getheader("Location") or ""
        if out[0] in (301, 302) and location.startswith("/"):  # the proxy folded the dots away: follow
            return get(location)
        return out

    assert get(f"{base}/0002/python-stock/conda-lock.yml") == (200, b"# lock of b2\n")  # the control
    for path in (
        f"{base}/0002/k-sym/conda-lock.yml",  # the lock copy is a symlink out of the root
        f"{base}/0002/k-away/conda-lock.yml",  # the build directory is a symlink out of the root
        f"{base}/0002/k-hard/conda-lock.yml",  # a hard link to a file only root may read
        f"{base}/..%2F..%2F..%2F..%2Fetc%2Fpasswd/python-stock/conda-lock.yml",
        f"{base}/0002/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd/conda-lock.yml",
        f"{base}/0002/..%2Fk-sym/conda-lock.yml",
        f"{base}/%2E%2E/%2E%2E/conda-lock.yml",
        f"{base}/0002/python-stock/../../../../../etc/passwd",
        "/services/stock/../../etc/passwd",
        f"{base}/0003/python-stock/conda-lock.yml",
        f"{base}/0002/python/conda-lock.yml",
    ):
        code, body = get(path)
        assert code in (400, 403, 404), (path, code, body[:200])
        assert SECRET.encode() not in body and b"root:x:0:0" not in body and b"lock of" not in body, path
    # the hard link is refused because the service is not root: root itself would read it
    assert read_lock_copy(root, "python", "hard") == (SECRET + " (root only)\n").encode()
    code, body = raw_get(hub, f"{base}/0002/k-hard/conda-lock.yml")
    assert code == 302 and SECRET.encode() not in body  # and without a login: to the login page
    doc = json.loads(get("/services/stock/api/generations/0002")[1])
    assert {k["name"]: k["lock_url"] for k in doc["kernels"]} == {
        "python-stock": f"{base}/0002/python-stock/conda-lock.yml",
        "k-sym": None,
        "k-hard": None,  # a regular file in the build, but the service may not read it
        "k-away": None,
    }
