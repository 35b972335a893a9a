"""Unit tests of the pure parts: settings, spec parsing, wheel choice, build ids."""

from __future__ import annotations

import pytest
from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency, Lockfile, LockMeta, TimeMeta

from hubstock.admin.lock.lockfile import build_id, virtual_packages
from hubstock.admin.lock.solve import _solver_summary
from hubstock.admin.lock.wheeltags import pick_artifact as _pick_artifact
from hubstock.admin.lock.wheeltags import target_tags as _target_tags
from hubstock.errors import SiteError, SpecError
from hubstock.site import Settings, load_settings


def test_settings_defaults_and_typos(tmp_path):
    s = Settings()
    assert s.platforms == ["linux-64"] and s.channels == ["conda-forge"] and s.root is None
    bad = tmp_path / "hubstock.toml"
    bad.write_text("[virtual_packages]\nglibc = '2.17'\ncdua = '12'\n")
    with pytest.raises(SiteError, match=r"unknown key 'virtual_packages\.cdua'"):
        load_settings(bad)


def test_virtual_packages_are_the_compute_nodes(tmp_path):
    cfg = tmp_path / "hubstock.toml"
    cfg.write_text("[virtual_packages]\nglibc = '2.17'\ncuda = '12.4'\n")
    from hubstock.site import Site

    site = Site(dir=tmp_path, settings=load_settings(cfg), root=tmp_path / "root")
    vp = virtual_packages(site, "linux-64")
    assert vp["__glibc"] == "2.17" and vp["__cuda"] == "12.4" and vp["__archspec"] == "1 x86_64"
    assert "__cuda" not in virtual_packages(site, "osx-arm64")


def test_the_best_wheel_for_the_nodes_is_chosen():
    tags = _target_tags((3, 11), "linux-64", "2.17")
    pkg = {
        "name": "x",
        "version": "1",
        "wheels": [
            {"url": "https://h/x-1-py3-none-any.whl", "hashes": {"sha256": "a"}},
            {"url": "https://h/x-1-cp311-cp311-manylinux_2_28_x86_64.whl", "hashes": {"sha256": "b"}},
            {"url": "https://h/x-1-cp311-cp311-manylinux2014_x86_64.whl", "hashes": {"sha256": "c"}},
            {"url": "https://h/x-1-cp312-cp312-manylinux2014_x86_64.whl", "hashes": {"sha256": "d"}},
        ],
    }
    # glibc 2.28 wheels do not run on 2.17 nodes; the native 2014 wheel beats the pure one
    assert _pick_artifact(pkg, tags, "e") == ("https://h/x-1-cp311-cp311-manylinux2014_x86_64.whl", "c")
    only_sdist = {
        "name": "y",
        "version": "1",
        "sdist": {"url": "https://h/y-1.tar.gz", "hashes": {"sha256": "s"}},
    }
    assert _pick_artifact(only_sdist, tags, "e") == ("https://h/y-1.tar.gz", "s")


def test_solver_summary_is_one_line():
    raw = (
        "Cannot solve the request because of: a * cannot be installed because there are no viable options:\n"
        "└─ a 1.0 would require\n   └─ b >=2, for which no candidates were found.\n"
    )
    assert _solver_summary(raw) == (
        "a * cannot be installed because there are no viable options: a 1.0 would require b >=2, "
        "for which no candidates were found"
    )


def _lock(*pkgs: tuple[str, str, str]) -> Lockfile:
    return Lockfile(
        package=[
            LockedDependency(
                name=n,
                version=v,
                manager="conda",
                platform="linux-64",
                dependencies={},
                url=f"file:///c/noarch/{n}-{v}-0.conda",
                hash=HashModel(md5="0" * 32, sha256=sha),
                build="0",
                categories={"main"},
            )
            for n, v, sha in pkgs
        ],
        metadata=LockMeta(
            content_hash={"linux-64": "h"},
            channels=[],
            platforms=["linux-64"],
            sources=[],
            time_metadata=TimeMeta.create(),
        ),
    )


def test_build_id_depends_only_on_the_packages():
    a = _lock(("a", "1", "1" * 64), ("b", "2", "2" * 64))
    b = _lock(("b", "2", "2" * 64), ("a", "1", "1" * 64))
    c = _lock(("a", "1", "1" * 64), ("b", "2", "3" * 64))
    assert build_id(a, "linux-64") == build_id(b, "linux-64") != build_id(c, "linux-64")
    with pytest.raises(Exception, match="no packages for platform osx-64"):
        build_id(a, "osx-64")


def test_env_spec_parsing(tmp_path):
    from hubstock.admin.lock.envspec import load_env_spec
    from hubstock.site import Site

    site = Site(dir=tmp_path, settings=Settings(channels=["file:///ch"]), root=tmp_path / "r")
    (tmp_path / "envs" / "e").mkdir(parents=True)
    (tmp_path / "envs" / "e" / "environment.yml").write_text(
        "dependencies:\n  - python 3.11.*\n  - numpy >=1.20\n  - pip:\n    - six==1.17.0\n"
    )
    spec = load_env_spec(site, "e")
    assert spec.channels == ["file:///ch"] and spec.spec_names == ["python", "numpy"]
    assert spec.pip == ["six==1.17.0"]
    with pytest.raises(SpecError, match="not a valid environment name"):
        load_env_spec(site, "../etc")
