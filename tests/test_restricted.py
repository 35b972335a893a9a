"""Kernels for some groups only (issue 23), on the admin side: real builds, real groups and users.

One site, built and published once: env ``py`` (ipykernel on this machine's Python) for everybody,
env ``lic`` (the same packages) closed to group G1 by its env.toml, and three kernels: ``py-stock``
(everybody's, the default), ``lic`` (on env ``lic``: for G1, from its env) and ``course`` (on env
``py``, for G2 and G3 by its own template: the folder gets G2 and an ACL entry for G3). Users:
``member`` (in G1 and G2), ``g3`` (in G3 only) and ``other`` (in none). Commands run as them with
``setpriv --init-groups``, as a batch job would (its groups as the system resolves them).

The hub side (the pre-spawn hook on Slurm and OpenPBS, the stock page in Chromium) is in
``test_hub.py`` and ``test_stock_page_browser.py``.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.helpers import need_root
from tests.test_venv_build import KERNEL_ARGV, hs, system_python, write_site, write_venv_env

from hubstock.hub.doctor import node_probe, probe_access
from hubstock.hub.doctor.node import NodeExpect, groups_check
from hubstock.hub.hooks import restricted_kernels
from hubstock.hub.stock_views import NotFound, StockViews
from hubstock.store import access
from hubstock.store.builds import read_provenance
from hubstock.store.generations import resolve_current
from hubstock.store.root import PROVENANCE, Root

pytestmark = pytest.mark.integration

RUN = secrets.token_hex(2)
G1, G2, G3 = f"hslic{RUN}", f"hscourse{RUN}", f"hsta{RUN}"
MEMBER, G3USER, OTHER = f"hsmember{RUN}", f"hsthree{RUN}", f"hsother{RUN}"
NOTE = "Licensed: ask research computing."


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def as_user(user: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` with the groups the system gives it now (as a batch job starts).
    Through a shell: setpriv's own exec still has root's capabilities, the shell's has none."""
    pw = pwd.getpwnam(user)
    cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
    cmd += ["/bin/sh", "-c", 'exec "$@"', "sh", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", check=False)


def write_kernel(site: Path, name: str, env: str, groups: list[str] | None = None) -> None:
    d = site / "kernels" / name
    d.mkdir(parents=True, exist_ok=True)
    hub: dict = {"env": env, "check": "import ipykernel"}
    if groups:
        hub["groups"] = groups
    spec = {
        "argv": KERNEL_ARGV,
        "display_name": f"Python ({name})",
        "language": "python",
        "metadata": {"hubstock": hub},
    }
    (d / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def people() -> Iterator[None]:
    """Groups G1, G2, G3 and the users ``member`` (G1, G2), ``g3`` (G3) and ``other`` (none)."""
    need_root("the tests of kernels for some groups (they create groups and users)")
    for g in (G1, G2, G3):
        _run("groupadd", g)
    _run("useradd", "-M", "-s", "/usr/sbin/nologin", "-G", f"{G1},{G2}", MEMBER)
    _run("useradd", "-M", "-s", "/usr/sbin/nologin", "-G", G3, G3USER)
    _run("useradd", "-M", "-s", "/usr/sbin/nologin", OTHER)
    yield
    for u in (MEMBER, G3USER, OTHER):
        subprocess.run(["userdel", "-f", u], check=False, capture_output=True)
    for g in (G1, G2, G3):
        subprocess.run(["groupdel", g], check=False, capture_output=True)


@pytest.fixture(scope="module")
def published(people) -> Iterator[SimpleNamespace]:
    """The site, built and published once (see the module's docstring)."""
    work = Path(tempfile.mkdtemp(prefix="hubstock-restricted-"))
    work.chmod(0o755)
    site = write_site(work / "site", work / "root", '[publish]\ndefault_kernel = "py-stock"\n')
    python = system_python()
    write_venv_env(site, "py", "ipykernel\n", path=python)
    write_venv_env(site, "lic", "ipykernel\n", path=python)
    (site / "envs" / "lic" / "env.toml").write_text(
        f'kind = "venv"\ngroups = ["{G1}"]\n\n[python]\npath = "{python}"\n'
    )
    write_kernel(site, "py-stock", "py")
    write_kernel(site, "lic", "lic")
    write_kernel(site, "course", "py", [G2, G3])
    hs(site, "lock")
    hs(site, "build")
    hs(site, "publish")
    root = Root(work / "root")
    gen = resolve_current(root)
    assert gen is not None
    manifest = gen.manifest()
    builds = {k.env: root.build(k.env, k.build) for k in manifest.kernels}
    yield SimpleNamespace(site=site, root=root, gen=gen, manifest=manifest, builds=builds)
    shutil.rmtree(work, ignore_errors=True)


def test_a_restricted_build_and_its_kernels_are_closed_to_everybody_else(published):
    p = published
    lic, py = p.builds["lic"], p.builds["py"]
    st = os.stat(lic)
    assert (oct(st.st_mode & 0o7777), grp.getgrgid(st.st_gid).gr_name) == ("0o550", G1)
    assert os.stat(py).st_mode & 0o7777 == 0o555
    # the records say so, and only theirs: an everybody's record is what an older hubstock wrote
    assert read_provenance(lic).groups == [G1]
    assert json.loads((lic / PROVENANCE).read_text())["schema"] == 3
    assert "groups" not in json.loads((py / PROVENANCE).read_text())
    doc = json.loads(p.gen.manifest_path.read_text())
    assert doc["schema"] == 2
    assert {k["name"]: k.get("groups") for k in doc["kernels"]} == {
        "py-stock": None,
        "lic": [G1],
        "course": [G2, G3],
    }
    # the kernels: everybody's in share/jupyter/kernels, the others each behind their own door
    assert sorted(os.listdir(p.gen.kernels_dir)) == ["py-stock"]
    lic_door, course_door = p.gen.restricted_dir("lic"), p.gen.restricted_dir("course")
    assert (os.stat(lic_door).st_mode & 0o7777, os.stat(lic_door).st_gid) == (0o550, grp.getgrnam(G1).gr_gid)
    assert os.stat(course_door).st_gid == grp.getgrnam(G2).gr_gid
    assert access.acl_groups(course_door) == {grp.getgrnam(G3).gr_gid: 5}
    assert access.access_problems(lic, [G1]) == [] and access.access_problems(course_door, [G2, G3]) == []

    python = str(lic / "bin" / "python")
    lic_json = str(p.gen.kernel_dir("lic", restricted=True) / "kernel.json")
    course_json = str(p.gen.kernel_dir("course", restricted=True) / "kernel.json")
    # outside the groups: nothing is listed, read or run, by any path
    for argv in (
        ["ls", str(lic)],
        [python, "-c", "pass"],
        ["cat", str(lic / "pyvenv.cfg")],
        ["cat", lic_json],
    ):
        res = as_user(OTHER, *argv)
        assert res.returncode != 0 and "Permission denied" in res.stderr, (argv, res)
    assert "Permission denied" in as_user(OTHER, "cat", course_json).stderr
    assert "Permission denied" in as_user(G3USER, python, "-c", "pass").stderr  # G3 is not G1
    # their members: the build runs, the kernels are there (G3 through the folder's ACL)
    res = as_user(MEMBER, python, "-c", "import ipykernel, sys; print(sys.prefix)")
    assert res.returncode == 0 and res.stdout.strip() == str(lic), res
    for user in (MEMBER, G3USER):
        assert as_user(user, "cat", course_json).returncode == 0
    assert (
        as_user(OTHER, str(py / "bin" / "python"), "-c", "import ipykernel").returncode == 0
    )  # py is everybody's


def _kernels_seen(p: SimpleNamespace, user: str, jupyter_path: str) -> set[str]:
    code = "import json; from jupyter_client.kernelspec import KernelSpecManager as K; print(json.dumps(sorted(K().find_kernel_specs())))"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "JUPYTER_PATH": jupyter_path}
    res = as_user(user, str(p.builds["py"] / "bin" / "python"), "-c", code, env=env)
    assert res.returncode == 0, res
    # (the machine's own kernels, Debian's IRkernel and the native python3, aside)
    return set(json.loads(res.stdout.splitlines()[-1])) & {"py-stock", "lic", "course"}


def test_each_user_is_given_the_kernels_of_their_groups_at_spawn_time(published):
    """What the pre-spawn hook puts on a session's JUPYTER_PATH, and what Jupyter then finds."""
    p = published
    seen = {
        u: _kernels_seen(p, u, p.gen.jupyter_paths(restricted_kernels(p.manifest, u)))
        for u in (MEMBER, G3USER, OTHER)
    }
    assert seen == {
        MEMBER: {"py-stock", "lic", "course"},
        G3USER: {"py-stock", "course"},
        OTHER: {"py-stock"},
    }
    # a user who points JUPYTER_PATH at the others' kernels by hand still finds none of them
    by_hand = p.gen.jupyter_paths(["lic", "course"])
    assert _kernels_seen(p, OTHER, by_hand) == {"py-stock"}
    # added to a group: the kernel comes with the next spawn; removed: it goes
    _run("gpasswd", "-a", OTHER, G1)
    try:
        assert restricted_kernels(p.manifest, OTHER) == ("lic",)
        assert _kernels_seen(p, OTHER, p.gen.jupyter_paths(restricted_kernels(p.manifest, OTHER))) == {
            "py-stock",
            "lic",
        }
    finally:
        _run("gpasswd", "-d", OTHER, G1)
    assert restricted_kernels(p.manifest, OTHER) == ()


def test_verify_finds_a_restricted_build_opened_and_repair_closes_it(published):
    p = published
    lic, door = p.builds["lic"], p.gen.restricted_dir("lic")
    os.chmod(lic, 0o555)
    os.chmod(door, 0o555)
    try:
        res = hs(p.site, "verify", check=False)
        assert res.returncode == 1, res
        assert f"....G...  {lic}  (for {G1} only: open to others (mode 0555))" in res.stdout, res.stdout
        assert f"kernel {p.gen.name}/lic: OPEN TO OTHERS" in res.stdout, res.stdout
        assert "run `hubstock verify --repair`" in res.stdout
        assert as_user(OTHER, "ls", str(lic)).returncode == 0  # it really was open
        doc = json.loads(hs(p.site, "verify", "--json", check=False).stdout)
        assert [k["kernel"] for k in doc["kernels"]] == [f"{p.gen.name}/lic"]
        res = hs(p.site, "verify", "--repair", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"kernel {p.gen.name}/lic: closed again" in res.stdout
    finally:
        access.close_to(lic, [G1], "test")
        access.close_to(door, [G1], "test")
    assert os.stat(lic).st_mode & 0o7777 == 0o550 and os.stat(door).st_mode & 0o7777 == 0o550
    assert "Permission denied" in as_user(OTHER, "ls", str(lic)).stderr
    assert hs(p.site, "verify", check=False).returncode == 0


def test_status_diff_and_the_audit_log_name_the_groups(published):
    p = published
    status = json.loads(hs(p.site, "status", "--json").stdout)
    assert {k["name"]: k["groups"] for k in status["published"]["kernels"]} == {
        "py-stock": [],
        "lic": [G1],
        "course": [G2, G3],
    }
    assert f"for {G2}, {G3} only" in hs(p.site, "status").stdout
    diff = hs(p.site, "diff").stdout
    assert f"kernel lic (Python (lic)), for {G1} only: added" in diff, diff
    lines = [json.loads(line) for line in (p.root.path / "audit.log").read_text().splitlines()]
    publish = [a for a in lines if a["action"] == "publish"][-1]
    assert publish["restricted"] == {"lic": [G1], "course": [G2, G3]}


def test_the_stock_page_shows_a_restricted_kernel_to_its_members_only(published):
    p = published
    views = StockViews(p.root, restricted_note=NOTE)
    names = lambda doc: {k["name"] for k in doc["kernels"]}  # noqa: E731
    assert names(views.current_doc(user=MEMBER)) == {"py-stock", "lic", "course"}
    theirs = views.current_doc(user=OTHER)
    assert names(theirs) == {"py-stock"}
    assert sorted((r["name"], r["groups"], r["note"]) for r in theirs["restricted"]) == [
        ("course", [G2, G3], NOTE),
        ("lic", [G1], NOTE),
    ]
    assert StockViews(p.root).current_doc(user=OTHER)["restricted"] == []  # no note: not a word
    assert {k.name for k in views.diff(user=OTHER).kernels} == {"py-stock"}
    assert views.lock_file("current", "lic", user=MEMBER).name == "pylock.toml"
    with pytest.raises(NotFound):
        views.lock_file("current", "lic", user=OTHER)
    page = views.render_page(OTHER)
    assert "Python (lic)</strong> is for members of" in page and NOTE in page
    assert 'data-kernel="lic"' in page and 'article class="kernel" id="kernel-lic"' not in page
    assert 'id="kernel-lic"' in views.render_page(MEMBER)


def test_what_cannot_be_restricted_is_refused_in_one_sentence(published, tmp_path):
    p = published
    before = sorted(os.listdir(p.root.generations))
    # the default kernel is everybody's
    toml = p.site / "hubstock.toml"
    settings = toml.read_text()
    toml.write_text(settings.replace('default_kernel = "py-stock"', 'default_kernel = "lic"'))
    try:
        res = hs(p.site, "publish", check=False)
    finally:
        toml.write_text(settings)
    assert res.returncode != 0 and "the default kernel 'lic' is for the groups" in res.stderr, res
    assert "Traceback" not in res.stderr
    # a kernel that names a group its env is closed to
    write_kernel(p.site, "lic-course", "lic", [G2])
    try:
        res = hs(p.site, "publish", check=False)
    finally:
        shutil.rmtree(p.site / "kernels" / "lic-course")
    assert res.returncode == 2 and f"names {G2!r}, but env 'lic' is for {G1} only" in res.stderr, res
    # a group that does not exist
    write_kernel(p.site, "nobodys", "py", ["hs-no-such-group"])
    try:
        res = hs(p.site, "publish", check=False)
    finally:
        shutil.rmtree(p.site / "kernels" / "nobodys")
    assert res.returncode == 2 and "names the group 'hs-no-such-group', which does not exist" in res.stderr, (
        res
    )
    assert sorted(os.listdir(p.root.generations)) == before  # nothing published or left staged
    # the server env is everybody's; an env's group must exist before anything is built
    site = write_site(tmp_path / "site", tmp_path / "root")
    write_venv_env(site, "server", "six\n", path=system_python())
    (site / "envs" / "server" / "env.toml").write_text(
        f'kind = "venv"\ngroups = ["{G1}"]\n\n[python]\npath = "{system_python()}"\n'
    )
    res = hs(site, "build", "server", check=False)
    assert res.returncode == 2 and "the server environment cannot be for some groups only" in res.stderr, res
    shutil.rmtree(site / "envs" / "server")
    write_venv_env(site, "tiny", "six\n", path=system_python())
    (site / "envs" / "tiny" / "env.toml").write_text(
        f'kind = "venv"\ngroups = ["hs-no-such-group"]\n\n[python]\npath = "{system_python()}"\n'
    )
    hs(site, "lock")
    res = hs(site, "build", check=False)
    assert res.returncode == 2 and "envs/tiny/env.toml names the group 'hs-no-such-group'" in res.stderr, res
    assert not (tmp_path / "root" / "envs" / "tiny").exists() or not any(
        (tmp_path / "root" / "envs" / "tiny").iterdir()
    )


def test_a_folder_for_several_groups_is_closed_by_its_group_and_an_acl(people, tmp_path):
    d = tmp_path / "door"
    d.mkdir()
    access.close_to(d, [G1, G2, G3], "test")
    gids = [grp.getgrnam(g).gr_gid for g in (G1, G2, G3)]
    assert (os.stat(d).st_gid, os.stat(d).st_mode & 0o7777) == (gids[0], 0o550)
    assert access.acl_groups(d) == {gids[1]: 5, gids[2]: 5}
    assert access.access_problems(d, [G1, G2, G3]) == []
    assert access.access_problems(d, [G1, G2]) == [f"the group {G3} has an ACL entry"]
    access.close_to(d, [G1], "test")  # fewer groups: the ACL goes
    assert access.acl_groups(d) == {} and access.access_problems(d, [G1]) == []
    os.chmod(d, 0o755)
    assert access.access_problems(d, [G1]) == ["open to others (mode 0755)"]
    assert access.user_groups(MEMBER) >= {G1, G2} and G1 not in access.user_groups(OTHER)
    assert access.may_use([], set()) and not access.may_use([G1], {G2}) and access.may_use([G1, G2], {G2})


def _probe_as(user: str, args: dict, where: Path) -> dict:
    """doctor's probe (``node_probe``) run as ``user``, as its job runs on a compute node."""
    where.mkdir(mode=0o755, exist_ok=True)
    (where / "args.json").write_text(json.dumps(args))
    (where / "args.json").chmod(0o644)
    probe = where / "node_probe.py"  # as doctor ships it to the job, run by the server build's python
    shutil.copyfile(node_probe.__file__, probe)
    probe.chmod(0o644)
    res = as_user(user, args["server_prefix"] + "/bin/python", str(probe), str(where / "args.json"))
    assert res.returncode == 0, res
    return json.loads(res.stdout)


def test_doctors_probe_checks_the_groups_on_the_node_as_the_test_account(published, world_tmp):
    """``node.groups``: what is closed to the test account refuses it on the node, the groups
    exist there; a member walks the kernels of its groups like the rest of the generation."""
    p = published
    builds = {str(b) for b in p.builds.values()}
    expect = NodeExpect(
        root=str(p.root.path), server_prefix=str(p.builds["py"]), glibc="2.17", linux="3.10", cuda=None,
        gpu=False, hub_url="", hub_running=False, user=OTHER, groups=(G1, G2, G3),
    )  # fmt: skip

    def probe(user: str) -> tuple[dict, dict]:
        access_args = probe_access(p.root, p.gen, p.manifest, builds, user)
        trees = [str(p.gen.path), *sorted(builds - {c["path"] for c in access_args["closed"]})]
        args = {"dirs": [str(p.root.path)], "trees": trees, "files": [], "server_prefix": str(p.builds["py"])}
        return access_args, _probe_as(user, {**args, **access_args}, world_tmp / user)

    access_args, report = probe(OTHER)
    assert sorted(c["path"] for c in access_args["closed"]) == sorted(
        [str(p.builds["lic"]), str(p.gen.restricted_dir("lic")), str(p.gen.restricted_dir("course"))]
    )
    assert report["root"]["unreadable"] == [] and report["restricted"] == {"opened": [], "missing_groups": []}
    assert [c.status for c in groups_check(report, expect)] == ["ok"]
    _, member = probe(MEMBER)  # walks restricted/lic and restricted/course, and the lic build
    assert member["root"]["unreadable"] == [] and member["restricted"]["opened"] == []

    os.chmod(p.builds["lic"], 0o555)  # opened by mistake
    try:
        _, report = probe(OTHER)
    finally:
        access.close_to(p.builds["lic"], [G1], "test")
    assert report["restricted"]["opened"] == [str(p.builds["lic"])]
    check = groups_check(report, expect)[0]
    assert check.status == "FAIL" and "hubstock verify --repair" in check.fix, check
    gone = {**report, "restricted": {"opened": [], "missing_groups": [G3]}}
    check = groups_check(gone, expect)[0]
    assert (
        check.status == "FAIL" and f"the group(s) {G3}, which kernels are for, do not exist" in check.detail
    )
