"""A full disk: one sentence naming the filesystem, the space left and what the step needs,
and never a complete build with files missing.

The integration tests mount small tmpfs filesystems (as root) and fill them: a root whose
filesystem fills up while the build byte-compiles, and a ``generations/`` that is full when
publish writes its kernels.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rigs.channel import add_package
from tests.helpers import need_root
from tests.test_store import PROVENANCE

from hubstock.errors import DiskFullError
from hubstock.store.builds import write_provenance
from hubstock.store.root import Root

PAGE = 4096
#: a module whose byte-code is several times its source
MODULE = "".join(f"def f{j}(x):\n    return x * {j} + {j}\n" for j in range(40))
BULK_FILES = 1200


@contextlib.contextmanager
def tmpfs(where: Path, size: int) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _used(mount: Path) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _fill(mount: Path) -> None:
    """Take every free byte of ``mount``."""
    with open(mount / ".filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * chunk):
                    pass


def _one_line(res) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture
def bulk_channel(channel, world_tmp) -> Path:
    ch = shutil.copytree(channel, world_tmp / "channel")
    files = {f"site-packages/demo_bulk/m{i:04d}.py": MODULE for i in range(BULK_FILES)}
    files["site-packages/demo_bulk/__init__.py"] = ""
    add_package(ch, "demo-bulk", "1.0", noarch="python", depends=["python >=3.11"], files=files)
    return ch


@pytest.mark.integration
def test_a_disk_that_fills_while_byte_compiling_leaves_no_complete_build(
    make_site, hubstock, bulk_channel, world_tmp
):
    need_root("mounting a tmpfs")
    mnt = world_tmp / "mnt"
    settings = f'root = "{mnt / "root"}"\nchannels = ["{bulk_channel.as_uri()}"]\n'
    site = make_site({"bulk": "dependencies:\n  - python\n  - demo-bulk\n"}, settings=settings)
    hubstock(site, "lock", check=True)

    # measure: what the whole build takes on a tmpfs, and what its byte-code takes
    with tmpfs(mnt, 1 << 30):
        hubstock(site, "init-root", check=True)
        hubstock(site, "build", check=True)
        total = _used(mnt)
        (prefix,) = [
            p for p in Root(mnt / "root").env("bulk").iterdir() if p.name[0] != "." and not p.is_symlink()
        ]
        pycs = list(prefix.glob("lib/python3*/site-packages/demo_bulk/__pycache__/*.pyc"))
        assert len(pycs) == BULK_FILES + 1
        pyc_bytes = sum(-(-p.stat().st_size // PAGE) * PAGE for p in pycs)

    # the same build on a filesystem with room for everything but half the byte-code
    size = (total - pyc_bytes // 2) // PAGE * PAGE
    with tmpfs(mnt, size):
        hubstock(site, "init-root", check=True)
        res = hubstock(site, "build")
        assert res.returncode == 1, res.stdout + res.stderr
        line = _one_line(res)
        assert line.startswith("hubstock: byte-compiling env 'bulk' failed: the filesystem ")
        assert f"{mnt} " in line and " is full, " in line and " left; it needs about " in line, line
        st = json.loads(hubstock(site, "status", "--json", check=True).stdout)["envs"]["bulk"]
        assert st["current"] is None and not any(b["complete"] for b in st["builds"])

        # with room again, the next build finishes, every module with its byte-code
        subprocess.run(["mount", "-o", f"remount,size={1 << 30}", str(mnt)], check=True)
        hubstock(site, "build", check=True)
        st = json.loads(hubstock(site, "status", "--json", check=True).stdout)["envs"]["bulk"]
        assert st["builds"] == [{"id": st["current"], "complete": True}]
        prefix = Root(mnt / "root").build("bulk", st["current"])
        (pkg,) = prefix.glob("lib/python3*/site-packages/demo_bulk")
        assert len(list((pkg / "__pycache__").glob("*.pyc"))) == BULK_FILES + 1
        assert hubstock(site, "verify").returncode == 0


@pytest.mark.integration
def test_a_full_generations_filesystem_stops_publish_with_one_sentence(make_site, hubstock, world_tmp):
    need_root("mounting a tmpfs")
    site = make_site({"py": "dependencies:\n  - python\n"})
    kdir = site.dir / "kernels" / "stock"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": ["{env_prefix}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Stock",
                "language": "python",
                "metadata": {"hubstock": {"env": "py"}},
            }
        )
    )
    (kdir / "logo-64x64.png").write_bytes(b"\x89PNG" + b"x" * 20000)
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    root = Root(site.root)
    with tmpfs(root.generations, 64 * 1024) as gens:
        _fill(gens)
        res = hubstock(site, "publish")
        assert res.returncode == 1
        line = _one_line(res)
        assert line.startswith("hubstock: writing generation 0001 failed: the filesystem ")
        assert f"{gens} " in line and " is full, " in line and "it needs about" in line, line
        assert sorted(os.listdir(gens)) == [".filler"]
        assert not os.path.lexists(root.current)


def test_records_on_a_full_disk_are_one_sentence_and_keep_the_old_content(world_tmp):
    need_root("mounting a tmpfs")
    with tmpfs(world_tmp / "mnt", 64 * 1024) as mnt:
        prefix = mnt / "envs" / "python" / PROVENANCE.build_id
        prefix.mkdir(parents=True)
        write_provenance(prefix, PROVENANCE)
        before = (prefix / ".hubstock-build.json").read_bytes()
        _fill(mnt)
        big = PROVENANCE.model_copy(update={"builder": "x" * 200_000})
        with pytest.raises(DiskFullError) as e:
            write_provenance(prefix, big)
        msg = str(e.value)
        assert "\n" not in msg and f"the filesystem {mnt} " in msg and "0 bytes left" in msg
        assert "it needs about 196.0 KB" in msg  # the record's size
        assert (prefix / ".hubstock-build.json").read_bytes() == before
        assert sorted(os.listdir(prefix)) == [".hubstock-build.json"]  # no temporary file left
        with pytest.raises(DiskFullError, match="writing the audit log failed"):
            Root(mnt).audit("gc", note="y" * 100_000)


@pytest.mark.integration
def test_a_disk_that_fills_while_the_installer_extracts_is_one_sentence(
    make_site, hubstock, channel, world_tmp
):
    """The conda installer (the process ``hubstock build`` forks for it) runs out of space: its
    error reaches the command as the one sentence of a full disk, and no build is complete."""
    need_root("mounting a tmpfs")
    mnt = world_tmp / "mnt"
    settings = f'root = "{mnt / "root"}"\nchannels = ["{channel.as_uri()}"]\n'
    site = make_site({"small": "dependencies:\n  - python\n"}, settings=settings)
    hubstock(site, "lock", check=True)
    with tmpfs(mnt, 4 << 20):  # the interpreter alone, extracted, is ten times that
        hubstock(site, "init-root", check=True)
        res = hubstock(site, "build")
        assert res.returncode == 1, res.stdout + res.stderr
        line = _one_line(res)
        assert line.startswith("hubstock: installing the conda packages failed: the filesystem "), line
        assert " is full, " in line and " left; it needs about " in line, line
        st = json.loads(hubstock(site, "status", "--json", check=True).stdout)["envs"]["small"]
        assert st["current"] is None and not any(b["complete"] for b in st["builds"])
