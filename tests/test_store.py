"""The shared root's contract (hubstock.store): versioned records that round-trip, and refuse the future."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hubstock.errors import HubstockError
from hubstock.store.builds import (
    build_ids,
    current_build,
    is_complete,
    mark_complete,
    read_provenance,
    write_provenance,
)
from hubstock.store.fs import atomic_symlink, make_read_only
from hubstock.store.generations import generation, generations, resolve_current, switch_current, unfinished
from hubstock.store.records import (
    AuditLine,
    BuildProvenance,
    GenerationManifest,
    KernelEntry,
    LockedPackage,
    ManifestBuild,
    RecordError,
    SessionRecord,
)
from hubstock.store.root import Root
from hubstock.store.sessions import live_sessions, register, unregister

PROVENANCE = BuildProvenance(
    build_id="3eff17743d23e45c",
    env="python",
    platform="linux-64",
    lock_content_hash={"linux-64": "abc"},
    lock_platform_hash="abc",
    packages=[
        LockedPackage(
            manager="conda",
            name="numpy",
            version="2.1.0",
            build="py312_0",
            url="file:///c/n.conda",
            sha256="0" * 64,
        ),
        LockedPackage(manager="pip", name="six", version="1.16.0", url="https://x/six.whl", sha256="1" * 64),
    ],
    created="2026-11-28T10:00:00+00:00",
    builder="hubstock 0.1.0",
)
MANIFEST = GenerationManifest(
    generation="0002",
    digest="d" * 64,
    created="2026-11-28T10:00:00+00:00",
    by="admin",
    default_kernel="python-stock",
    server=ManifestBuild(env="server", build="s1", prefix="/r/envs/server/s1", lock_hash="h"),
    builds={"python": ManifestBuild(env="python", build="p1", prefix="/r/envs/python/p1")},
    kernels=[
        KernelEntry(
            name="python-stock", display_name="Python 3 (stock)", language="python", env="python", build="p1"
        ),
        KernelEntry(
            name="python-stock-p0", display_name="old", env="python", build="p0", pinned_of="python-stock"
        ),
    ],
)
SESSION = SessionRecord(user="alice", server="", generation="0002", builds=["python/p1"], job_id="12.pbs")
AUDIT = AuditLine(
    time="2026-11-28T10:00:00+00:00", action="spawn", by="root", user="alice", generation="0002"
)
#: a build and a generation for some groups only: the newer schema, written only for them
RESTRICTED = [
    PROVENANCE.model_copy(update={"groups": ["matlab"], "schema_version": BuildProvenance.RESTRICTED_SCHEMA}),
    MANIFEST.model_copy(
        update={
            "kernels": [
                *MANIFEST.kernels,
                KernelEntry(name="m", display_name="M", env="m", build="m1", groups=["g"]),
            ],
            "schema_version": GenerationManifest.RESTRICTED_SCHEMA,
        }
    ),
]
RECORDS = [PROVENANCE, MANIFEST, SESSION, AUDIT, *RESTRICTED]


def _record_id(r: object) -> str:
    return type(r).__name__ + ("-restricted" if r in RESTRICTED else "")


@pytest.mark.parametrize("record", RECORDS, ids=_record_id)
def test_records_round_trip_with_their_schema(record):
    text = record.to_json()
    restricted = record in RESTRICTED
    # a record of everybody's keeps the schema an older hubstock reads, and has no "groups"
    schema, cls = json.loads(text)["schema"], type(record)
    if hasattr(cls, "RESTRICTED_SCHEMA"):
        assert schema == (cls.RESTRICTED_SCHEMA if restricted else cls.RESTRICTED_SCHEMA - 1)
    else:
        assert schema == cls.SCHEMA
    assert ('"groups"' in text) == restricted
    assert type(record).from_text(text, "x.json") == record
    assert type(record).from_text(record.to_line(), "x.json") == record


@pytest.mark.parametrize("record", RECORDS, ids=_record_id)
def test_a_record_of_a_future_schema_is_refused_with_a_message(record, tmp_path):
    data = json.loads(record.to_json())
    data["schema"] = 99
    data["a_field_from_the_future"] = {"x": 1}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError) as e:
        type(record).read(path)
    msg = str(e.value)
    assert str(path) in msg and "schema 99" in msg and "upgrade hubstock" in msg
    assert isinstance(e.value, HubstockError) and "\n" not in msg


def test_a_record_without_schema_is_read_as_schema_1():
    """Roots written before records were versioned stay readable."""
    data = json.loads(SESSION.to_json())
    del data["schema"]
    assert SessionRecord.from_data(data, "s.json") == SESSION


@pytest.mark.parametrize(
    "text, says",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"schema": 1, "user": 3}', "malformed"),
    ],
)
def test_a_damaged_record_is_named_not_misread(text, says):
    with pytest.raises(RecordError, match=says) as e:
        SessionRecord.from_text(text, "/r/sessions/a.json")
    assert "/r/sessions/a.json" in str(e.value)


def test_unknown_keys_are_refused_in_a_current_schema():
    data = json.loads(MANIFEST.to_json())
    data["kernelz"] = []
    with pytest.raises(RecordError, match="kernelz"):
        GenerationManifest.from_data(data, "m.json")


def test_the_audit_line_keeps_its_action_fields(tmp_path):
    root = Root(tmp_path / "root")
    root.audit("publish", generation="0003", kernels=["a"])
    (line,) = root.audit_lines()
    assert line.action == "publish" and line.fields == {"generation": "0003", "kernels": ["a"]}
    with open(root.audit_log, "a") as f:
        f.write("garbage\n")
    assert len(root.audit_lines()) == 1


def test_builds_generations_and_sessions_through_the_store(tmp_path):
    root = Root(tmp_path / "root")
    prefix = root.build("python", PROVENANCE.build_id)
    prefix.mkdir(parents=True)
    write_provenance(prefix, PROVENANCE)
    assert not is_complete(prefix) and read_provenance(prefix) == PROVENANCE
    make_read_only(prefix)
    os.chmod(prefix, 0o755)
    mark_complete(prefix, PROVENANCE.build_id)
    atomic_symlink(PROVENANCE.build_id, root.env_current("python"))
    assert current_build(root, "python") == PROVENANCE.build_id
    assert build_ids(root, "python") == [PROVENANCE.build_id]

    assert resolve_current(root) is None
    gen = generation(root, "0002")
    gen.kernels_dir.mkdir(parents=True)
    gen.write_manifest(MANIFEST)
    (root.generations / ".staging-0003-abcd").mkdir()
    switch_current(root, "0002")
    assert generations(root) == ["0002"] and unfinished(root) == [".staging-0003-abcd"]
    cur = resolve_current(root)
    assert cur is not None and cur.name == "0002" and cur.path == gen.path
    assert cur.manifest() == MANIFEST
    assert MANIFEST.build_keys() == {"server/s1", "python/p1", "python/p0"}

    register(root, SESSION)
    os.mkfifo(root.sessions / "bob.default.json")  # never opened: a FIFO would block the reader
    assert live_sessions(root, 1) == [SESSION]
    unregister(root, "alice", "")
    assert live_sessions(root, 1) == []


def test_make_read_only_leaves_nothing_writable(tmp_path):
    top = tmp_path / "t"
    (top / "d").mkdir(parents=True)
    (top / "d" / "f").write_text("x")
    (top / "run").write_text("#!/bin/sh\n")
    os.chmod(top / "run", 0o4777)
    os.symlink("d/f", top / "link")
    make_read_only(top)
    modes = {p.name: p.lstat().st_mode & 0o7777 for p in [top, top / "d", top / "d" / "f", top / "run"]}
    assert modes == {"t": 0o555, "d": 0o555, "f": 0o444, "run": 0o555}


def test_store_uses_only_the_standard_library_and_pydantic():
    src = Path(__file__).resolve().parent.parent / "src" / "hubstock" / "store"
    for py in src.glob("*.py"):
        text = py.read_text()
        for banned in ("..admin", "..hub", "rattler", "conda_lock", "jupyterhub", "traitlets", "yaml"):
            assert banned not in text.replace("hubstock.store", ""), f"{py.name} mentions {banned}"


def test_a_wait_for_the_root_lock_is_said_again_while_it_lasts(monkeypatch):
    import threading
    import time

    from hubstock.store import root as root_module

    monkeypatch.setattr(root_module, "REMIND_EVERY", 0.05)
    said: list[str] = []
    release = threading.Event()
    with root_module._reminding(said.append, "still waiting for pid 7 to finish with /r"):
        release.wait(0.3)  # blocked, as flock blocks
    n = len(said)
    time.sleep(0.15)
    assert n >= 2 and len(said) == n, said  # said while it lasted, and no more after
    assert said[0].startswith("still waiting for pid 7 to finish with /r (") and said[0].endswith(" s)")
