"""A new user's first login, in Debian's Chromium driven by Playwright (never a browser download).

The user has never logged in: they open the hub, type their password on the login
page, submit the spawn form with its defaults, and JupyterLab loads from a batch
job on the local Slurm. The launcher shows exactly the stock kernels; a notebook
on the stock kernel runs in the stock build; the site's default settings are in
effect and its disabled extension is absent. Screenshots are kept in
``test-artifacts/browser/`` (or ``$HUBSTOCK_TEST_ARTIFACTS``); a failure saves the
page and shows its text instead of waiting for a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigs.hubsite import free_port, hub_settings, start_hub
from rigs.slurm_rig import create_user, remove_user
from tests.helpers import need_root

from hubstock.store.root import Root

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NEW_USER = f"hsnew{secrets.token_hex(2)}"
PASSWORD = "First-Login-99"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    d = Path(os.environ.get("HUBSTOCK_TEST_ARTIFACTS") or REPO / "test-artifacts") / "browser"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(exe):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: `nox -s tests` installs it when run as root")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return exe


@pytest.fixture(scope="module")
def new_user(hub_workdir):
    need_root("the browser tests")
    homes = hub_workdir / "homes"
    homes.mkdir(mode=0o755, exist_ok=True)
    create_user(NEW_USER, PASSWORD, homes)
    yield NEW_USER
    remove_user(NEW_USER)


@pytest.fixture(scope="module")
def hub(hub_workdir, hub_site, channel, slurm_rig, new_user):
    ports = [free_port() for _ in range(3)]
    (hub_site / "hubstock.toml").write_text(
        hub_settings(
            hub_workdir / "root", channel, hub_workdir / "state-browser", "slurm", ports, slurm_rig.slurm_conf
        )
    )
    h = start_hub(hub_site, ports[0], hub_workdir / "hub-browser.log", extra_env=slurm_rig.env)
    yield h
    h.stop()
    slurm_rig.wait_no_jobs(timeout=60, active_only=True)


@pytest.fixture
def page(chromium, artifacts, hub_workdir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        pg = context.new_page()
        yield pg
        context.close()
        browser.close()


@contextlib.contextmanager
def showing_the_page(page, artifacts: Path, step: str, hub=None) -> Iterator[None]:
    """On failure: save a screenshot and the HTML, and fail with what the page says."""
    try:
        yield
    except Exception as e:
        shot = artifacts / f"failed-{step}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
            (artifacts / f"failed-{step}.html").write_text(page.content())
        text = ""
        with contextlib.suppress(Exception):
            text = page.locator("body").inner_text()[:2000]
        log = hub.log_tail(30) if hub else ""
        pytest.fail(
            f"{step} failed at {page.url}: {e}\n--- the page says:\n{text}\n--- screenshot: {shot}\n{log}"
        )


def test_a_new_user_logs_in_and_gets_jupyterlab_with_the_stock_kernels(page, hub, hub_site, artifacts):
    from playwright.sync_api import expect

    root = Root(hub_site.parent / "root")
    with showing_the_page(page, artifacts, "login", hub):
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", NEW_USER)
        page.fill("#password_input", "not-my-password")
        page.click("#login_submit")
        expect(page.get_by_text("Invalid username or password")).to_be_visible()
        page.fill("#username_input", NEW_USER)
        page.fill("#password_input", PASSWORD)
        page.click("#login_submit")

    with showing_the_page(page, artifacts, "spawn-form", hub):
        form = page.locator("#spawn_form")
        expect(form.locator('select[name="queue"]')).to_be_visible()
        expect(form.locator('select[name="queue"]')).to_have_value("debug")
        page.screenshot(path=str(artifacts / "spawn-form.png"))
        form.locator('input[type="submit"], button[type="submit"]').first.click()

    with showing_the_page(page, artifacts, "spawn", hub):
        shell = page.locator("#jp-main-dock-panel")
        failure = (
            page.get_by_text("Spawn failed")
            .or_(page.locator("div.error"))
            .or_(page.get_by_role("heading", name="Server not running"))
        )
        expect(shell.or_(failure)).to_be_visible(timeout=180_000)
        assert not failure.is_visible(), page.locator("body").inner_text()[:2000]
        assert f"/user/{NEW_USER}/lab" in page.url

    manifest = json.loads((root.current / "manifest.json").read_text())
    stock = sorted(k["display_name"] for k in manifest["kernels"])
    kernel = next(k for k in manifest["kernels"] if not k.get("pinned_of"))
    build = str(root.build(kernel["env"], kernel["build"]))

    with showing_the_page(page, artifacts, "launcher", hub):
        page.goto(f"{hub.url}/user/{NEW_USER}/lab?reset")
        expect(page.locator(".jp-Launcher-body")).to_be_visible()

        def section(title):
            return page.locator(".jp-Launcher-section").filter(
                has=page.locator(".jp-Launcher-sectionTitle", has_text=title)
            )

        expect(section("Notebook").locator(".jp-LauncherCard").first).to_be_visible()
        page.screenshot(path=str(artifacts / "launcher.png"))
        labels = sorted(
            t.strip() for t in section("Notebook").locator(".jp-LauncherCard-label").all_inner_texts()
        )
        assert labels == stock  # exactly the stock kernels: not the server env's own Python 3
        # the site's disabled extension is absent, the file browser (a control) is there
        expect(page.locator('.jp-SideBar [data-id="filebrowser"]')).to_have_count(1)
        expect(page.locator('.jp-SideBar [data-id="extensionmanager.main-view"]')).to_have_count(0)
        config = json.loads(page.locator("#jupyter-config-data").text_content())
        assert "@jupyterlab/extensionmanager-extension" in json.dumps(config.get("disabledExtensions"))

    with showing_the_page(page, artifacts, "notebook", hub):
        section("Notebook").locator(f'.jp-LauncherCard[title="{kernel["display_name"]}"]').click()
        nb = page.locator(".jp-NotebookPanel:visible")
        # the kernel is attached and idle once the status bar names it: before that, JupyterLab
        # would skip a cell run silently (the execution indicator alone can read idle too early)
        expect(
            page.locator(".jp-StatusBar-TextItem").filter(has_text=f"{kernel['display_name']} | Idle")
        ).to_be_visible(timeout=120_000)
        cell = nb.locator(".jp-Cell").first
        # the site's default setting (extensions/overrides.json): line numbers in code cells
        expect(cell.locator(".cm-lineNumbers")).to_be_visible()
        cell.locator(".cm-content").click()
        page.keyboard.type("import sys, getpass; print(sys.prefix, getpass.getuser())")
        page.keyboard.press("Shift+Enter")
        output = cell.locator(".jp-OutputArea-output")
        try:
            expect(output).to_have_count(1, timeout=30_000)
        except AssertionError:  # the run was not taken (prompt still [ ]): run the cell once more
            cell.locator(".cm-content").click()
            page.keyboard.press("Shift+Enter")
        expect(output).to_have_text(re.compile(rf"^{re.escape(build)} {NEW_USER}\s*$"), timeout=120_000)
        page.screenshot(path=str(artifacts / "notebook.png"))
