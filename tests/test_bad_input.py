"""Bad input: one clear sentence naming the culprit, no traceback, non-zero exit, nothing half-written."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration


def _snapshot(top) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(top):
        for f in files:
            p = os.path.join(d, f)
            out[p] = open(p, "rb").read()  # noqa: SIM115
    return out


def _assert_one_clear_failure(res, *names: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hubstock: ")
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("dependencies:\n  - python\n  - [unclosed\n", ["envs/demo/environment.yml", "YAML", "line"]),
        ("dependencies: {python: 3}\n", ["envs/demo/environment.yml", "dependencies"]),
        ("dependencies:\n  - python >=>3\n", ["envs/demo/environment.yml", "python >=>3"]),
        ("dependencies:\n  - demo-a\n  - pip:\n    - six\n", ["'pip:'", "python"]),
        ("dependncies:\n  - python\n", ["envs/demo/environment.yml", "dependncies"]),
    ],
    ids=["malformed-yaml", "not-a-list", "bad-matchspec", "pip-without-python", "unknown-key"],
)
def test_a_malformed_spec_is_named(make_site, hubstock, spec, names):
    site = make_site({"demo": spec})
    made = sorted(os.listdir(site.root))  # what `hubstock init-root` made
    for cmd in ("lock", "build", "status"):
        res = hubstock(site, cmd)
        _assert_one_clear_failure(res, *names)
    assert not (site.envs_dir / "demo" / "conda-lock.yml").exists()
    assert sorted(os.listdir(site.root)) == made and not any(site.root.joinpath("envs").iterdir())


def test_an_unknown_key_in_hubstock_toml_is_named(make_site, hubstock, channel_url):
    site = make_site({"demo": "dependencies:\n  - python\n"}, settings=f'chanels = ["{channel_url}"]\n')
    _assert_one_clear_failure(hubstock(site, "lock"), "hubstock.toml", "chanels")
    (site.dir / "hubstock.toml").write_text('platforms = ["linux-32"]\n')
    _assert_one_clear_failure(hubstock(site, "build"), "hubstock.toml", "linux-32")
    (site.dir / "hubstock.toml").write_text("[virtual_packages]\nglibc = 'new'\n")
    _assert_one_clear_failure(hubstock(site, "status"), "virtual_packages.glibc", "'new'")
    (site.dir / "hubstock.toml").write_text("root = [\n")
    _assert_one_clear_failure(hubstock(site, "status"), "hubstock.toml", "TOML")


@pytest.mark.parametrize(
    ("deps", "names"),
    [
        (["python", "demo-a", "demo-b <2"], ["demo-b", "demo-a"]),  # demo-a needs demo-b >=2
        (["python", "no-such-package"], ["'no-such-package'", "not found"]),
        (["python 2.7.*"], ["python"]),
    ],
    ids=["conflict", "missing-package", "no-matching-version"],
)
def test_an_unsolvable_spec_names_the_packages(make_site, hubstock, deps, names):
    body = "dependencies:\n" + "".join(f"  - {d}\n" for d in deps)
    site = make_site({"demo": body})
    res = hubstock(site, "lock")
    _assert_one_clear_failure(res, "envs/demo/environment.yml", *names)
    assert not (site.envs_dir / "demo" / "conda-lock.yml").exists()


def test_an_unresolvable_pip_requirement_is_named(make_site, hubstock):
    site = make_site({"demo": "dependencies:\n  - python\n  - pip:\n    - six==0.0.0.1\n"})
    _assert_one_clear_failure(hubstock(site, "lock"), "pip:", "six")
    assert not (site.envs_dir / "demo" / "conda-lock.yml").exists()


def test_a_missing_env_name_is_named_and_nothing_changes(make_site, hubstock):
    site = make_site({"demo": "dependencies:\n  - python\n  - demo-b 1.0\n"})
    hubstock(site, "lock", check=True)
    hubstock(site, "build", check=True)
    before = _snapshot(site.dir)
    for cmd in ("lock", "build"):
        _assert_one_clear_failure(hubstock(site, cmd, "nope"), "'nope'", "envs/nope/environment.yml", "demo")
    assert _snapshot(site.dir) == before


def test_a_failed_relock_keeps_the_old_lock(make_site, hubstock):
    site = make_site({"demo": "dependencies:\n  - python\n  - demo-b 1.0\n"})
    hubstock(site, "lock", check=True)
    lock = site.envs_dir / "demo" / "conda-lock.yml"
    before = lock.read_bytes()
    (site.envs_dir / "demo" / "environment.yml").write_text("dependencies:\n  - python\n  - demo-b 9.0\n")
    _assert_one_clear_failure(hubstock(site, "lock"), "demo-b")
    assert lock.read_bytes() == before
    assert sorted(p.name for p in lock.parent.iterdir()) == ["conda-lock.yml", "environment.yml"]


def test_no_site_is_explained(world_tmp, hubstock):
    _assert_one_clear_failure(hubstock(world_tmp, "status"), str(world_tmp), "--site")
