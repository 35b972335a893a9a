"""The hub's versions on the root (``store.hubinfo``) and ``publish``'s check of the server build
against them: the doctor's ``version.jupyterhub``, made on the machine that publishes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hubstock.admin.publish.kernels import BuildRef
from hubstock.admin.publish.publish import _refuse_a_server_the_hub_cannot_run
from hubstock.errors import PublishError
from hubstock.hub import config
from hubstock.hub.config import this_hub_versions
from hubstock.store.hubinfo import hub_versions_path, note_hub_versions, read_hub_versions
from hubstock.store.records import HubVersions
from hubstock.store.root import Root


def _server(tmp_path: Path, jupyterhub: str | None) -> BuildRef:
    prefix = tmp_path / "server-build"
    site_packages = prefix / "lib" / "python3.11" / "site-packages"
    site_packages.mkdir(parents=True)
    if jupyterhub:
        info = site_packages / f"jupyterhub-{jupyterhub}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: jupyterhub\nVersion: {jupyterhub}\n")
    return BuildRef(env="server", build_id="b1", prefix=prefix, lock_hash="x", kind="venv")


def _hub(root: Root, jupyterhub: str) -> None:
    record = HubVersions(
        versions={"jupyterhub": jupyterhub, "hubstock": "1"}, host="hubnode", written="2026-12-03T00:00:00Z"
    )
    assert note_hub_versions(root, record)


def test_the_record_is_written_once_per_change_and_never_makes_a_root(tmp_path):
    missing = Root(tmp_path / "not-mounted")
    assert not note_hub_versions(missing, this_hub_versions())
    assert not missing.path.exists()
    root = Root(tmp_path / "root")
    root.path.mkdir()  # a mount point, the shared filesystem not mounted on it: no root yet
    record = this_hub_versions()
    assert not note_hub_versions(root, record) and not any(root.path.iterdir())
    root.ensure()
    assert note_hub_versions(root, record)
    assert read_hub_versions(root) == record
    later = record.model_copy(update={"written": "2030-01-01T00:00:00Z"})
    assert not note_hub_versions(root, later)  # the same versions: nothing written
    assert hub_versions_path(root).stat().st_mode & 0o077 == 0  # as private as the session records
    hub_versions_path(root).write_text("{not json")
    assert read_hub_versions(root) is None  # unreadable: as if the hub had said nothing


def test_only_a_running_hub_records_its_versions(tmp_path, make_site):
    site = make_site({})
    root = Root(site.root)
    root.ensure()
    config._note_versions(site)  # the doctor, a test: no event loop
    assert read_hub_versions(root) is None

    async def hub_start() -> None:
        config._note_versions(site)

    asyncio.run(hub_start())
    assert read_hub_versions(root) is not None


@pytest.mark.parametrize(
    ("hub", "server", "says"),
    [
        ("5.2.1", "5.2.0", None),
        ("5.2.1", "4.1.6", "has jupyterhub 4.1.6, but the hub on hubnode runs 5.2.1"),
        ("5.2.1", None, "has no jupyterhub, but the hub on hubnode runs jupyterhub 5.2.1"),
    ],
)
def test_publish_refuses_a_server_build_the_hub_cannot_talk_to(tmp_path, hub, server, says):
    root = Root(tmp_path / "root")
    root.ensure()
    build = _server(tmp_path, server)
    _refuse_a_server_the_hub_cannot_run(root, build)  # no hub has said anything yet: nothing to compare
    _hub(root, hub)
    if says is None:
        _refuse_a_server_the_hub_cannot_run(root, build)
        return
    with pytest.raises(PublishError) as e:
        _refuse_a_server_the_hub_cannot_run(root, build)
    assert says in str(e.value) and "jupyterhub 5.2.*" in str(e.value), e.value
