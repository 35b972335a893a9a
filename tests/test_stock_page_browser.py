"""A user finds a package on the "Stock environments" page, in Debian's Chromium through Playwright.

The hub runs the site's own configuration on the local Slurm rig. A new PAM user logs
in, opens "Stock environments" from the hub's Services menu and filters for demo-c:
version 0.1. An admin then publishes a generation with demo-c 0.2; after a reload the
page shows 0.2 for the stock kernel (0.1 for the previous build's pinned kernel), and
the history shows the upgrade. With a kernel for one group published, a member sees it
on the page and a non-member sees only the site's note about it. Screenshots go to
``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
import secrets
import subprocess

import pytest
from rigs.hubsite import (
    KERNEL_NAME,
    LICENSED_DISPLAY_NAME,
    LICENSED_KERNEL,
    RESTRICTED_NOTE,
    cli,
    free_port,
    hub_settings,
    py_env,
    restricted_kernel,
    start_hub,
)
from rigs.slurm_rig import create_user, remove_user
from tests.helpers import need_root
from tests.test_browser import artifacts, chromium, page, showing_the_page  # noqa: F401 - fixtures

from hubstock.store.generations import resolve_current
from hubstock.store.root import Root

pytestmark = [pytest.mark.browser, pytest.mark.hub]

USER, PASSWORD = f"hsreader{secrets.token_hex(2)}", "Reads-The-Stock-5"
MEMBER, MEMBER_PASSWORD = f"hslicensee{secrets.token_hex(2)}", "Holds-A-License-6"


@pytest.fixture(scope="module")
def reader(hub_workdir):
    need_root("the browser tests")
    homes = hub_workdir / "homes"
    homes.mkdir(mode=0o755, exist_ok=True)
    create_user(USER, PASSWORD, homes)
    yield USER
    remove_user(USER)


@pytest.fixture(scope="module")
def hub(hub_workdir, hub_site, channel, slurm_rig, reader, licensed):
    ports = [free_port() for _ in range(3)]
    (hub_site / "hubstock.toml").write_text(
        hub_settings(
            hub_workdir / "root", channel, hub_workdir / "state-stock", "slurm", ports, slurm_rig.slurm_conf
        )
    )
    h = start_hub(hub_site, ports[0], hub_workdir / "hub-stock-page.log", extra_env=slurm_rig.env)
    yield h
    h.stop()


@pytest.fixture
def upgraded_later(hub_site, hub_workdir):
    """Starts from demo-c 0.1 (other tests publish either version on the shared site) and lets
    the test publish demo-c 0.2; afterwards the site and its root are as they were."""
    root = Root(hub_workdir / "root")
    original = resolve_current(root)
    assert original is not None
    env_file = hub_site / "envs" / "python" / "environment.yml"
    spec = env_file.read_text()
    env_file.write_text(py_env("0.1"))
    for step in ("lock", "build", "publish"):
        cli(hub_site, step)
    before = resolve_current(root)
    assert before is not None

    def publish_upgrade() -> str:
        env_file.write_text(py_env("0.2"))
        for step in ("lock", "build", "publish"):
            cli(hub_site, step)
        gen = resolve_current(root)
        assert gen is not None and gen.name != before.name
        return gen.name

    yield publish_upgrade
    env_file.write_text(spec)
    for step in ("lock", "build"):
        cli(hub_site, step)
    cli(hub_site, "rollback", original.name)


def test_a_user_finds_a_package_and_sees_its_upgrade(page, hub, artifacts, upgraded_later):  # noqa: F811
    from playwright.sync_api import expect

    with showing_the_page(page, artifacts, "stock-login", hub):
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", USER)
        page.fill("#password_input", PASSWORD)
        page.click("#login_submit")
        expect(page.locator("#spawn_form").or_(page.locator("#start"))).to_be_visible()

    with showing_the_page(page, artifacts, "stock-menu", hub):
        page.goto(f"{hub.url}/hub/home")
        page.get_by_role("button", name="Services").or_(page.get_by_role("link", name="Services")).click()
        item = page.get_by_role("link", name="Stock environments")
        expect(item).to_be_visible()
        page.screenshot(path=str(artifacts / "stock-services-menu.png"))
        item.click()
        expect(page.get_by_role("heading", name="Stock environments")).to_be_visible()
        assert page.url.startswith(f"{hub.url}/services/stock/")

    kernel = page.locator(f'article.kernel[data-kernel="{KERNEL_NAME}"]')
    with showing_the_page(page, artifacts, "stock-filter", hub):
        expect(page.get_by_text(f"Signed in as {USER}")).to_be_visible()
        page.get_by_label("Find a package").fill("demo-c")
        row = kernel.locator('tr[data-name="demo-c"]')
        expect(row).to_be_visible()
        expect(row.locator("td.version")).to_have_text("0.1")
        expect(kernel.locator('tr[data-name="python"]')).to_be_hidden()  # filtered out
        expect(kernel.locator("details.packages summary")).to_contain_text("1 of ")
        page.screenshot(path=str(artifacts / "stock-filter-demo-c-0.1.png"), full_page=True)

    gen = upgraded_later()  # an admin publishes demo-c 0.2

    with showing_the_page(page, artifacts, "stock-after-publish", hub):
        page.reload()
        expect(page.locator("section#current h2")).to_have_text(f"Generation {gen}")
        page.get_by_label("Find a package").fill("demo-c")
        expect(kernel.locator('tr[data-name="demo-c"] td.version')).to_have_text("0.2")
        pinned = page.locator(f'article.kernel[data-kernel^="{KERNEL_NAME}-"]')
        expect(pinned.locator('tr[data-name="demo-c"] td.version')).to_have_text("0.1")
        newest = page.locator("#history details.generation").first
        expect(newest.locator("summary")).to_contain_text(f"Generation {gen} (current)")
        upgrade = newest.locator(f'li[data-kernel="{KERNEL_NAME}"] tr[data-name="demo-c"]')
        expect(upgrade).to_be_visible()
        cells = [t.strip() for t in upgrade.locator("td").all_inner_texts()]
        assert cells == ["demo-c", "upgraded", "0.1", "0.2", "conda"], cells
        page.screenshot(path=str(artifacts / "stock-after-publish-demo-c-0.2.png"), full_page=True)
        assert re.search(
            r"Published \d{4}-\d\d-\d\d \d\d:\d\d UTC by root", page.locator("section#current").inner_text()
        )


@pytest.fixture(scope="module")
def licensed(hub_site, hub_workdir, reader):
    """A kernel for one group, published on the site before the hub starts (its page keeps the
    group, to read the kernel's build): MEMBER is in the group, the reader is not."""
    group = f"hslicpage{secrets.token_hex(2)}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    create_user(MEMBER, MEMBER_PASSWORD, hub_workdir / "homes")
    try:
        subprocess.run(["gpasswd", "-a", MEMBER, group], check=True, capture_output=True)
        with restricted_kernel(hub_site, group):
            yield group
    finally:
        remove_user(MEMBER)
        subprocess.run(["groupdel", group], check=False, capture_output=True)


def _log_in_and_open_the_page(page, hub, user: str, password: str) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page.context.clear_cookies()  # the hub's and the page's own: a new visitor
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    page.click("#login_submit")
    expect(page.locator("#spawn_form").or_(page.locator("#start"))).to_be_visible()
    page.goto(f"{hub.url}/services/stock/")
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()


def test_a_kernel_for_a_group_is_on_the_page_of_its_members_only(page, hub, artifacts, licensed):  # noqa: F811
    from playwright.sync_api import expect

    kernel = page.locator(f'article.kernel[data-kernel="{LICENSED_KERNEL}"]')
    with showing_the_page(page, artifacts, "stock-restricted-member", hub):
        _log_in_and_open_the_page(page, hub, MEMBER, MEMBER_PASSWORD)
        expect(kernel.locator("h3")).to_contain_text(LICENSED_DISPLAY_NAME)
        expect(kernel.locator(".groups")).to_have_text(f"for {licensed}")
        page.get_by_label("Find a package").fill("demo-c")  # the page reads its build for her
        expect(kernel.locator('tr[data-name="demo-c"] td.version')).to_have_text(re.compile(r"^0\.[12]$"))
        expect(page.locator("p.restricted")).to_have_count(0)
        kernel.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "stock-restricted-member.png"), full_page=True)

    with showing_the_page(page, artifacts, "stock-restricted-non-member", hub):
        _log_in_and_open_the_page(page, hub, USER, PASSWORD)
        expect(page.locator(f'article.kernel[data-kernel="{KERNEL_NAME}"]')).to_be_visible()
        expect(kernel).to_have_count(0)
        note = page.locator(f'p.restricted[data-kernel="{LICENSED_KERNEL}"]')
        expect(note).to_contain_text(f"{LICENSED_DISPLAY_NAME} is for members of {licensed} only.")
        expect(note).to_contain_text(RESTRICTED_NOTE)
        assert LICENSED_KERNEL not in page.locator("#history").inner_text()
        page.screenshot(path=str(artifacts / "stock-restricted-non-member.png"), full_page=True)
