"""\"My environments\" on the stock page (issue 24): a user creates an environment of their own in
Debian's Chromium; the page's root helper runs ``hubstock mine`` as that user, whose build is
that user's Slurm job; the page follows it to the kernel. Its API creates for oneself only (403
for anyone else), and bad input is one sentence on the page. Screenshots go to
``test-artifacts/browser/``.

Then her next server, a Slurm job started through the hub's pre-spawn hook, lists the kernel and
runs it. The hub runs the site's own configuration on the Slurm rig, on ``test_personal_jobs``'s
site."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from rigs.hub_rig import Forwarder, run_code
from rigs.hubsite import VENV_KERNEL, free_port, hub_settings, start_hub
from tests.helpers import kernel_script
from tests.test_browser import artifacts, chromium, page, showing_the_page  # noqa: F401 - fixtures
from tests.test_hub import cluster_for
from tests.test_personal_jobs import (  # noqa: F401 - fixtures
    ANN,
    BOB,
    MINE_DIR,
    as_user,
    envs_dir,
    mine_site,
    tools,
    wheelhouse,
)
from tests.test_stock_page_browser import _log_in_and_open_the_page

from hubstock.hub.hooks import personal_kernels

pytestmark = [pytest.mark.browser, pytest.mark.hub]

PASSWORD = "not-a-secret-1"  # test_personal_jobs's users'


@pytest.fixture(scope="module", params=["slurm", pytest.param("pbs", marks=pytest.mark.pbs)])
def hub(request, mine_site, hub_workdir, channel, wheelhouse):  # noqa: F811
    """The site's hub on each scheduler. On OpenPBS the hub, its page and the jobs live in the rig's
    network namespace, with no way out (the jobs install from the site's wheelhouse); Chromium
    reaches the hub through a relay of this machine's 127.0.0.1 port into it."""
    site0, root, tools_py = mine_site
    cluster = cluster_for(request, request.param)
    site = hub_workdir / f"site-mine-hub-{request.param}"
    if not site.exists():
        shutil.copytree(site0, site, symlinks=True)
    ports = [free_port() for _ in range(3)]
    settings = hub_settings(
        root.path, channel, hub_workdir / f"state-mine-{request.param}", ports=ports, **cluster.settings()
    )
    personal = f'\n[personal]\ntools = "{tools_py}"\nmax_envs = 10\n'
    if cluster.netns:
        personal += f'find_links = ["{wheelhouse}"]\nno_index = true\n'
    (site / "hubstock.toml").write_text(settings + personal)
    h = start_hub(
        site,
        ports[0],
        hub_workdir / f"hub-mine-{request.param}.log",
        extra_env=cluster.hub_env(),
        launcher=cluster.launcher,
        netns=cluster.netns,
    )
    relay = Forwarder(cluster.netns, "127.0.0.1", ports[0], ports[0]) if cluster.netns else None
    h.scheduler = request.param
    yield h
    if relay:
        relay.close()
    h.stop()
    cluster.close()


def test_the_api_creates_for_oneself_only_and_says_what_is_wrong(hub):
    status, token = hub.token_for(ANN, PASSWORD)
    assert status == 201 and token, hub.log_tail()
    auth = {"Authorization": f"token {token}"}
    api = f"{hub.url}/services/stock/api"
    r = requests.post(
        f"{api}/users/{BOB}/mine", json={"name": "x", "packages": ["six"]}, headers=auth, timeout=60
    )
    assert r.status_code == 403 and ANN in r.json()["message"], r.text
    assert not (envs_dir(BOB) / "x").exists()
    for body, says in (
        ({"name": "../x", "packages": ["six"]}, "cannot name your environment"),
        ({"name": "x", "packages": ["x" * 1000]}, "1000 characters long"),
        ({"name": "x", "packages": ["--index-url=http://elsewhere"]}, "no options"),
    ):
        r = requests.post(f"{api}/users/{ANN}/mine", json=body, headers=auth, timeout=60)
        assert r.status_code == 400 and says in r.json()["message"], (body, r.text)
    r = requests.get(f"{api}/mine", timeout=30)  # no token, no cookie
    assert r.status_code == 403


def test_a_user_creates_an_environment_on_the_page_and_gets_its_kernel(
    page,  # noqa: F811
    hub,
    artifacts,  # noqa: F811
    tools,  # noqa: F811
    mine_site,  # noqa: F811
):
    from playwright.sync_api import expect

    sched = hub.scheduler
    name = f"from{sched}"  # Ann's environment on this hub

    with showing_the_page(page, artifacts, f"mine-{sched}-login", hub):
        _log_in_and_open_the_page(page, hub, ANN, PASSWORD)
        page.get_by_role("link", name="My environments").click()
        expect(page.get_by_role("heading", name="My environments")).to_be_visible()

    with showing_the_page(page, artifacts, f"mine-{sched}-create", hub):
        page.get_by_label("Name").fill(name)
        page.get_by_label("On the stock kernel").select_option(VENV_KERNEL)
        page.get_by_label("Packages").fill("tabulate humanize")
        page.screenshot(path=str(artifacts / f"mine-{sched}-form.png"), full_page=True)
        page.get_by_role("button", name="Build it as my batch job").click()
        expect(page.locator("#said")).to_contain_text("build job")
        env = page.locator(f"article#env-{name}")
        expect(env).to_be_visible()
        page.screenshot(path=str(artifacts / f"mine-{sched}-building.png"), full_page=True)
        # the page refreshes itself while the job runs
        expect(env).to_have_attribute("data-state", "ready", timeout=300_000)
        env.get_by_role("link", name="log").click()
        expect(page.locator("#log")).to_contain_text(f"kernel 'mine-{name}' ready")
        page.screenshot(path=str(artifacts / f"mine-{sched}-ready.png"), full_page=True)

    with showing_the_page(page, artifacts, f"mine-{sched}-bad-input", hub):
        page.get_by_label("Name").fill("bad")
        page.get_by_label("Packages").fill("hubstock-no-such-package-anywhere")
        page.get_by_role("button", name="Build it as my batch job").click()
        bad = page.locator("article#env-bad")
        expect(bad).to_have_attribute("data-state", "failed", timeout=300_000)
        expect(bad).to_contain_text("not in the package index")
        page.screenshot(path=str(artifacts / f"mine-{sched}-failed.png"), full_page=True)
        bad.get_by_role("button", name="Remove").click()
        expect(page.locator("article#env-bad")).to_have_count(0)

    # the build was Ann's own job, and its kernel is hers alone, running stock and added packages
    found = personal_kernels(MINE_DIR, ANN, mine_site[1])
    mine_env = envs_dir(ANN) / name
    assert str(mine_env / "jupyter") in found.paths
    # her next server (a Slurm job, through the hub's pre-spawn hook) has the kernel, and runs it
    status, token = hub.token_for(ANN, PASSWORD)
    assert status == 201 and token
    status, _ = hub.request("POST", f"/hub/api/users/{ANN}/server", token=token, body={})
    assert status in (201, 202), hub.log_tail()
    try:
        hub.wait_for_server(ANN, token)
        status, specs = hub.request("GET", f"/user/{ANN}/api/kernelspecs", token=token)
        assert status == 200 and f"mine-{name}" in specs["kernelspecs"], specs
        shown = specs["kernelspecs"][f"mine-{name}"]["spec"]
        assert shown["display_name"].endswith(f" + mine: {name}"), shown  # on the stock's own name
        code = "import tabulate, humanize, ipykernel, os; print(os.environ['USER'], tabulate.__file__)"
        with ThreadPoolExecutor(1) as pool:  # its own event loop: Playwright's runs in this thread
            who, where = pool.submit(run_code, hub, ANN, token, f"mine-{name}", code).result().split()
        assert who == ANN and where.startswith(f"{mine_env}/builds/"), (who, where)
    finally:
        hub.request("DELETE", f"/hub/api/users/{ANN}/server", token=token)
        hub.wait_stopped(ANN, token, timeout=120)
    code = "import tabulate, humanize, ipykernel; print(tabulate.__name__)"
    out = as_user(ANN, str(tools), "-c", kernel_script(mine_env / "jupyter", f"mine-{name}", code))
    assert out.stdout.strip() == "tabulate", out
    assert mine_env.stat().st_uid != 0
    spec = json.loads((mine_env / "spec.json").read_text())
    assert spec["user"] == ANN
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (mine_env / "pylock.toml").exists():
        time.sleep(0.1)
    assert (mine_env / "pylock.toml").exists()
    # Bob sees none of it, on the page's API or on the disk
    status, bob_token = hub.token_for(BOB, PASSWORD)
    assert status == 201 and bob_token
    r = requests.get(
        f"{hub.url}/services/stock/api/mine", headers={"Authorization": f"token {bob_token}"}, timeout=60
    )
    assert r.status_code == 200 and name not in r.text, r.text
    res = as_user(BOB, "cat", str(mine_env / "pylock.toml"))
    assert res.returncode != 0 and "Permission denied" in res.stderr, res
    assert personal_kernels(MINE_DIR, BOB, mine_site[1]).paths == ()
