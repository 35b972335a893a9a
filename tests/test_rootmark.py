"""A root is made once, on purpose (``hubstock init-root``), and every command reads its marker
first: an absent root, an unmounted mount point, a file, another root, or a read-only mount
where the root must be written gives one sentence, exit 2, and changes nothing."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import need_root, until

from hubstock.cli import main
from hubstock.store.root import Root
from hubstock.store.rootmark import ROOT_MARKER, check_root, read_marker, write_marker

WRITERS = (["build"], ["publish"], ["rollback"], ["gc"], ["verify", "--repair"])
READERS = (["status"], ["diff"], ["verify"], ["gc", "--dry-run"])


def _site(tmp: Path, root: Path) -> Path:
    site = tmp / "site"
    (site / "envs" / "demo").mkdir(parents=True, exist_ok=True)
    (site / "envs" / "demo" / "environment.yml").write_text("dependencies:\n  - python\n")
    (site / "hubstock.toml").write_text(f'root = "{root}"\nchannels = ["conda-forge"]\n')
    return site


def _tree(top: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``top`` with its mode and mtime: what "changes nothing" compares."""
    if not os.path.lexists(top):
        return {}
    out = {".": (os.lstat(top).st_mode, os.lstat(top).st_mtime_ns)}
    for p in top.rglob("*"):
        st = os.lstat(p)
        out[str(p.relative_to(top))] = (st.st_mode, st.st_mtime_ns)
    return out


def _refused(capsys, argv: list[str], *words: str) -> None:
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    for w in words:
        assert w in lines[0], (argv, w, lines[0])


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """``path`` bind-mounted read-only onto itself, as a root mounted read-only on a node."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_every_broken_root_is_one_sentence_and_nothing_changes(tmp_path, capsys):
    good = tmp_path / "good"
    Root(good).ensure()  # a real root, for "another root's marker"
    variants: dict[str, tuple[Path, tuple[str, ...]]] = {}
    variants["absent"] = (tmp_path / "absent", ("no hubstock root", "mount it", "init-root"))
    (tmp_path / "mountpoint").mkdir()
    variants["unmounted"] = (tmp_path / "mountpoint", ("is empty", "mounted", "init-root"))
    (tmp_path / "a-file").write_text("x")
    variants["a file"] = (tmp_path / "a-file", ("is a file",))
    shutil.copytree(good, tmp_path / "copy", symlinks=True)
    variants["another root"] = (tmp_path / "copy", (f"made at {good}", "--moved"))
    (tmp_path / "other" / "data").mkdir(parents=True)
    variants["not a root"] = (tmp_path / "other", (f"no {ROOT_MARKER}",))
    for name, (root, words) in variants.items():
        site = _site(tmp_path, root)
        before, site_before = _tree(root), _tree(site)
        for argv in (*WRITERS, *READERS):
            _refused(capsys, ["--site", str(site), *argv], str(root), *words)
        assert _tree(root) == before and _tree(site) == site_before, name
    assert not (tmp_path / "absent").exists()


def test_a_read_only_root_refuses_the_writers_and_serves_the_readers(tmp_path, capsys):
    need_root("read-only bind mounts")
    root = tmp_path / "root"
    Root(root).ensure()
    site = _site(tmp_path, root)
    before = _tree(root)
    with _read_only(root):
        for argv in WRITERS:
            _refused(capsys, ["--site", str(site), *argv], str(root), "read-only")
        assert main(["--site", str(site), "status", "--json"]) == 0
        assert main(["--site", str(site), "gc", "--dry-run"]) == 0
        capsys.readouterr()
    assert _tree(root) == before


def test_init_root_makes_a_root_once_and_adopts_a_moved_or_older_one(tmp_path, capsys):
    root = tmp_path / "root"
    site = _site(tmp_path, root)
    assert main(["--site", str(site), "init-root"]) == 0
    marker = read_marker(root)
    assert marker is not None and marker.path == str(root) and check_root(root, write=True) == marker
    before = _tree(root)
    assert main(["--site", str(site), "init-root", "--json"]) == 0  # again: nothing to do
    assert '"made": false' in capsys.readouterr().out and _tree(root) == before

    moved = tmp_path / "moved"
    shutil.copytree(root, moved, symlinks=True)
    _refused(capsys, ["--site", str(site), "--root", str(moved), "init-root"], "--moved")
    assert main(["--site", str(site), "--root", str(moved), "init-root", "--moved"]) == 0
    adopted = read_marker(moved)
    assert adopted is not None and (adopted.id, adopted.path) == (marker.id, str(moved))

    old = tmp_path / "old"  # a root made by a hubstock before the marker
    shutil.copytree(root, old, symlinks=True)
    (old / ROOT_MARKER).unlink()
    _refused(capsys, ["--site", str(site), "--root", str(old), "status"], "before hubstock marked")
    assert main(["--site", str(site), "--root", str(old), "init-root"]) == 0
    assert check_root(old).id != marker.id


def test_locking_makes_no_root_and_the_sites_own_root_is_made_by_its_first_writer(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "hubstock.toml").write_text('channels = ["conda-forge"]\n')  # no root: the site's own
    own = site / ".hubstock-root"
    assert main(["--site", str(site), "lock"]) == 0 and main(["--site", str(site), "status"]) == 0
    assert not own.exists()  # read as empty, not made
    assert main(["--site", str(site), "gc"]) == 0  # a writer: trying hubstock out needs no init-root
    assert read_marker(own) is not None


@pytest.mark.parametrize("answers", [["", "", "generations/0002"], ["ESTALE", "generations/0002"]])
def test_a_reader_of_current_survives_a_network_filesystems_bad_answers(tmp_path, monkeypatch, answers):
    """GlusterFS over FUSE, measured: a link swapped by rename on one client reads as ESTALE or
    as an empty string on another, now and then; the readers ask again."""
    import errno

    from hubstock.store import fs
    from hubstock.store.generations import current_name, resolve_current

    root = Root(tmp_path / "root")
    root.ensure()
    (root.generations / "0002").mkdir()
    os.symlink("generations/0002", root.current)
    real = os.readlink
    left = list(answers)

    def flaky(path, *a, **kw):
        if left and str(path) == str(root.current):
            answer = left.pop(0)
            if answer == "ESTALE":
                raise OSError(errno.ESTALE, "Stale file handle", str(path))
            return answer
        return real(path, *a, **kw)

    monkeypatch.setattr(fs.os, "readlink", flaky)
    gen = resolve_current(root)
    assert gen is not None and gen.name == "0002" and not left
    left.extend(answers)
    assert current_name(root) == "0002"


MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 0:40 / /nfs/ok rw,relatime - nfs4 srv:/export rw,vers=4.2,local_lock=none,addr=10.0.0.1
41 22 0:41 / /nfs/nolock rw,relatime - nfs srv:/export rw,vers=3,nolock,addr=10.0.0.1
42 22 0:42 / /nfs/local rw,relatime - nfs srv:/export rw,vers=3,local_lock=flock
43 22 0:43 / /lustre/ok rw - lustre mgs@tcp:/fs rw,flock,lazystatfs
44 22 0:44 / /lustre/local rw - lustre mgs@tcp:/fs rw,localflock
45 22 0:45 / /lustre/none rw - lustre mgs@tcp:/fs rw,lazystatfs
46 22 0:46 / /gpfs rw,relatime - gpfs gpfs0 rw
47 22 0:47 / /home/me/remote rw,nosuid,nodev - fuse.sshfs me@host:/x rw,user_id=0
48 22 0:48 / /glusterfs/vol rw,relatime - fuse.glusterfs 127.0.1.1:vol rw,user_id=0
"""


@pytest.mark.parametrize(
    "path, words",
    [
        ("/srv/root", None),
        ("/nfs/ok/hubstock", None),
        ("/nfs/nolock/hubstock", "nolock"),
        ("/nfs/local/hubstock", "local_lock=flock"),
        ("/lustre/ok/hubstock", None),
        ("/lustre/local/hubstock", "localflock"),
        ("/lustre/none/hubstock", "without flock"),
        ("/gpfs/hubstock", None),
        ("/home/me/remote/root", "sshfs"),
        ("/glusterfs/vol/root", None),
    ],
)
def test_the_mount_table_tells_which_filesystems_can_hold_a_root(path, words, monkeypatch):
    from hubstock.store import fscheck

    monkeypatch.setattr(fscheck.os.path, "realpath", lambda p: str(p))
    mount = fscheck.mount_of(Path(path), MOUNTINFO)
    assert mount is not None
    problem = fscheck.semantics_problem(mount)
    assert (problem is None) if words is None else (words in problem), (path, problem)


@contextlib.contextmanager
def _sshfs(source: Path, point: Path) -> Iterator[None]:
    """``source`` mounted at ``point`` by a real sshfs, talking to OpenSSH's sftp-server over two
    pipes (sshfs -o passive): no ssh, no network."""
    sftp = Path("/usr/lib/openssh/sftp-server")
    if shutil.which("sshfs") is None or not sftp.exists():
        if os.environ.get("CI"):
            pytest.fail("sshfs and openssh-sftp-server are missing (nox -s tests installs them)")
        pytest.skip("sshfs and openssh-sftp-server are not installed")
    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    server = subprocess.Popen([str(sftp)], stdin=to_server, stdout=from_server)
    client = subprocess.Popen(
        ["sshfs", "-f", "-o", "passive", f":{source}", str(point)], stdin=to_client, stdout=from_client
    )
    for fd in (to_server, from_client, to_client, from_server):
        os.close(fd)
    try:
        until(f"sshfs at {point}", lambda: f" {point} fuse.sshfs " in Path("/proc/self/mounts").read_text())
        yield
    finally:
        subprocess.run(["umount", str(point)], check=False)
        for p in (client, server):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_a_root_on_sshfs_is_refused_and_nothing_is_left(tmp_path, capsys):
    need_root("mounting sshfs")
    source, point = tmp_path / "remote", tmp_path / "mnt"
    source.mkdir()
    point.mkdir()
    site = _site(tmp_path, point / "root")
    with _sshfs(source, point):
        _refused(capsys, ["--site", str(site), "init-root"], f"{point / 'root'}", "sshfs", "locks")
        assert os.listdir(point) == []
        Root(source / "root").ensure()  # a root made where sshfs reaches it, marked for this path
        write_marker(point / "root")
        _refused(capsys, ["--site", str(site), "gc"], f"the root {point / 'root'} is on sshfs")
        assert main(["--site", str(site), "status", "--json"]) == 0  # reading it is fine
        capsys.readouterr()
    assert sorted(os.listdir(source)) == ["root"]
