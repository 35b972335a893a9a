"""hubstock's own conda-lock reader and content hash, checked against conda-lock itself.

Only `hubstock lock` may import conda_lock; these tests import it (it is in the test
extra) to compare: the content hash on many specs, the parsing pieces it is made of,
and the lock files conda-lock writes.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from hubstock.admin.lock import condalock, condaspec, lockhash
from hubstock.admin.lock.envspec import load_env_spec
from hubstock.admin.lock.lockfile import (
    build_id,
    lock_spec_and_hashes,
    lock_status,
    read_lock,
    virtual_packages,
)
from hubstock.errors import LockError, SpecError
from hubstock.site import Settings, Site, VirtualPackages
from hubstock.store.root import Root


def _site(tmp_path: Path, envs: dict[str, str], **settings) -> Site:
    for name, text in envs.items():
        (tmp_path / "envs" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "envs" / name / "environment.yml").write_text(textwrap.dedent(text))
    return Site(dir=tmp_path, settings=Settings(**settings), root=tmp_path / "root")


def _conda_lock_hashes(site: Site, env: str) -> dict[str, str]:
    """conda-lock's own content hash of envs/<env>/environment.yml for the site.

    conda-lock reads the file itself (channels, nodefaults, selectors, pip); the
    site's channels stand in only when the file names none besides nodefaults.
    """
    from conda_lock.content_hash import compute_content_hashes
    from conda_lock.src_parser import make_lock_spec
    from conda_lock.virtual_package import virtual_package_repo_from_specification

    path = site.envs_dir / env / "environment.yml"
    own = [c for c in (yaml.safe_load(path.read_text()).get("channels") or []) if c != "nodefaults"]
    platforms = list(site.settings.platforms)
    logging.disable(logging.WARNING)  # conda-lock logs every line a selector filters out
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapping = Path(tmp, "pypi-mapping.json")
            mapping.write_text("{}")
            vspec = Path(tmp, "virtual-packages.yml")
            vspec.write_text(
                yaml.safe_dump({"subdirs": {p: {"packages": virtual_packages(site, p)} for p in platforms}})
            )
            lock_spec = make_lock_spec(
                src_files=[path],
                channel_overrides=None if own else list(site.settings.channels),
                platform_overrides=platforms,
                mapping_url=str(mapping),
            )
            return dict(compute_content_hashes(lock_spec, virtual_package_repo_from_specification(vspec)))
    finally:
        logging.disable(logging.NOTSET)


LINUX = ["linux-64"]
FOUR = ["linux-64", "linux-aarch64", "osx-arm64", "win-64"]

HASH_CASES = {
    "plain": (
        """\
        name: python
        channels: [conda-forge]
        dependencies:
          - python 3.12.*
          - numpy
          - matplotlib-base
          - ipykernel
        """,
        {},
    ),
    "site-channels": (
        "dependencies:\n  - python\n  - r-base 4.4.*\n",
        {"channels": ["conda-forge", "bioconda"]},
    ),
    "pip-section": (
        """\
        channels: [conda-forge]
        dependencies:
          - python >=3.11,<3.13
          - pip
          - pip:
            - six==1.17.0
            - Foo_Bar[B,a] >=1.2 , <2
            - requests~=2.31
            - attrs!=23.1.*,>=22
            - pywin32; sys_platform == 'win32'
            - uvloop ; platform_system != "Windows"
            - typing-extensions; python_version < '3.12'
            - appnope; sys_platform == 'darwin' and platform_machine == 'arm64'
        """,
        {"platforms": FOUR},
    ),
    "several-platforms": (
        "channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - numpy=1.26=py311*\n  - libblas=*=*mkl\n",
        {"platforms": ["linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64"]},
    ),
    "virtual-packages": (
        "channels: [conda-forge]\ndependencies:\n  - python\n  - pytorch * cuda*\n",
        {
            "platforms": ["linux-64", "linux-aarch64", "osx-64"],
            "virtual_packages": VirtualPackages(glibc="2.17", linux="4.18", cuda="12.4"),
        },
    ),
    "channels": (
        """\
        channels:
          - conda-forge/label/rc
          - https://conda.anaconda.org/bioconda
          - file:///srv/channels/local
          - https://repo.example.org/conda/site/
          - conda-forge
          - nodefaults
        dependencies:
          - python
          - bioconda::samtools 1.*
          - conda-forge/linux-64::zlib
          - local::mypkg >=0.1
          - pandas[version='>=2,<3', build=py*]
        """,
        {"platforms": ["linux-64", "osx-arm64"]},
    ),
    "nodefaults-only": ("channels: [nodefaults]\ndependencies:\n  - python\n", {"channels": ["conda-forge"]}),
    "selectors": (
        """\
        channels:
          - conda-forge
          - nodefaults
        dependencies:
          - python 3.12.*
          - numpy
          - libgfortran5  # [linux]
          - llvm-openmp   # [osx]
          - intel-openmp  # [win]
          - mkl           # [linux64]
          - libcxx >=16   # [arm64]
          - tini          # [unix]
          - pip
          - pip:
            - six
            - uvloop      # [unix]
            - pywin32     # [win64]
        """,
        {"platforms": ["linux-64", "linux-aarch64", "osx-64", "osx-arm64", "win-64"]},
    ),
    "pip-emptied-by-selectors": (
        "dependencies:\n  - python\n  - pip:\n    - uvloop  # [osx]\n",
        {"platforms": ["linux-64", "osx-arm64"]},
    ),
    "category-and-duplicates": (
        """\
        category: dev
        channels: [conda-forge]
        dependencies:
          - python
          - numpy >=1.20
          - numpy <2
          - pip 24.*
          - pip:
            - six>=1
            - six==1.17.0
        """,
        {},
    ),
    "versions": (
        """\
        channels: [conda-forge]
        dependencies:
          - python==3.11.4
          - numpy 1.26.4 py311h64a7726_0
          - scipy >=1.10,<2|>=3
          - pandas 2.*
          - Pillow =10
          - openssl 3.0.12_1
          - ca-certificates 2023.09.01
          - tzdata >=2024a
        """,
        {"platforms": ["linux-64", "osx-64"]},
    ),
}


@pytest.mark.parametrize("case", sorted(HASH_CASES))
def test_the_content_hash_is_conda_locks(tmp_path, case):
    text, settings = HASH_CASES[case]
    site = _site(tmp_path, {"e": text}, **settings)
    spec = load_env_spec(site, "e")
    _, ours = lock_spec_and_hashes(site, spec)
    assert ours == _conda_lock_hashes(site, "e")
    assert sorted(ours) == sorted(site.settings.platforms)


def test_channel_credentials_become_env_vars_as_in_conda_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SITE_CHANNEL_TOKEN", "tk-123-456")
    monkeypatch.setenv("SITE_CHANNEL_USERNAME", "hub")
    monkeypatch.setenv("SITE_CHANNEL_PASSWORD", "s3cret")
    text = (
        "channels:\n  - https://host.example/t/tk-123-456/private\n"
        "  - https://hub:s3cret@mirror.example:8443/conda-forge\n"
        "dependencies:\n  - python\n"
    )
    site = _site(tmp_path, {"e": text})
    _, ours = lock_spec_and_hashes(site, load_env_spec(site, "e"))
    assert ours == _conda_lock_hashes(site, "e")
    url, used = lockhash.channel_url("https://host.example/t/tk-123-456/private")
    assert url == "https://host.example/t/${SITE_CHANNEL_TOKEN}/private" and used == ("SITE_CHANNEL_TOKEN",)


def test_the_hash_changes_with_what_the_lock_depends_on(tmp_path):
    site = _site(tmp_path, {"e": "channels: [conda-forge]\ndependencies:\n  - python\n"})
    base = lock_spec_and_hashes(site, load_env_spec(site, "e"))[1]
    newer_glibc = Site(
        dir=tmp_path, settings=Settings(virtual_packages=VirtualPackages(glibc="2.34")), root=site.root
    )
    assert lock_spec_and_hashes(newer_glibc, load_env_spec(newer_glibc, "e"))[1] != base
    (site.envs_dir / "e" / "environment.yml").write_text(
        "channels: [conda-forge]\ndependencies:\n  - python 3.12.*\n"
    )
    assert lock_spec_and_hashes(site, load_env_spec(site, "e"))[1] != base


_NAMES = ["numpy", "Py_Thon", "r-base"]
_VERSIONS = [
    "", "1.2", "=1.2", "==1.2", "1.2.*", "=1.2.*", "1.2*", ">=1.2", ">=1.2,<2", ">=1.2, <2", "1.2|1.3",
    "==1.2|==1.3", "1.2.*|>=2,<3", "~=1.2", "!=1.2.*", "=1.2.3rc1", "*", ">1.2.*", "1.2.3+abc", "1!2.0",
    "2023.09.01", "1.2 build_1", "=1.2=build_1", "* *_cp*", ">=1,<2 *mkl", "[version='>=1,<2', build='py*']",
    "[build_number=3]", "1.*.3", "^1.2$", "1.2 # a comment", ">=>3", "1..2", "1.2|", "(1.2", "=",
]  # fmt: skip
_CHANNELS = [
    "", "conda-forge::", "conda-forge/linux-64::", "https://conda.anaconda.org/bioconda::", "pkgs/main::",
    "file:///srv/chan/noarch::", "https://example.org/conda/a/b::", "https://example.org/t/tk-1/chan::",
]  # fmt: skip


def test_conda_specs_read_as_conda_reads_them():
    from conda_lock.src_parser.conda_common import conda_spec_to_versioned_dep

    checked = 0
    for name, version, channel in itertools.product(_NAMES, _VERSIONS, _CHANNELS):
        sep = "" if version[:1] in ("=", "<", ">", "!", "~", "[") or not version else " "
        spec = f"{channel}{name}{sep}{version}"
        try:
            d = conda_spec_to_versioned_dep(spec, "main")
            theirs: tuple | None = (d.name, d.version, d.build, d.conda_channel)
        except Exception:
            theirs = None
        try:
            ours: tuple | None = condaspec.parse_conda_spec(spec)
        except ValueError:
            ours = None
        assert ours == theirs, spec
        checked += 1
    assert checked == len(_NAMES) * len(_VERSIONS) * len(_CHANNELS)


@pytest.mark.parametrize(
    "req",
    [
        "six",
        "six==1.17.0",
        "Foo_Bar[B,a]>=1.2 , <2",
        "foo~=1.2",
        "foo===1.2",
        "foo!=1.2.*,>=1",
        "foo<=2,>=1,!=1.5",
        "foo==1.*",
        "foo>=1.2; sys_platform == 'linux'",
        "foo ; python_version < '3.12'",
        "foo[x] >1 ; platform_machine=='x86_64' and sys_platform=='darwin'",
        "foo; os_name == 'nt' or sys_platform == 'win32'",
        "foo; 'linux' in sys_platform",
        "foo; platform_system != 'Windows'",
        "foo; sys_platform == 'linux' and python_version < '3' or os_name=='nt'",
    ],
)
def test_pip_requirements_and_markers_as_conda_lock_reads_them(req):
    from conda_lock.src_parser.markers import evaluate_marker
    from conda_lock.src_parser.pyproject_toml import parse_python_requirement

    theirs = parse_python_requirement(req, manager="pip", category="main", mapping_url="unused").model_dump()
    if theirs["markers"] is None:
        del theirs["markers"]
    ours = lockhash.pip_dependency(req)
    assert ours == theirs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for platform in ("linux-64", "linux-aarch64", "osx-64", "osx-arm64", "win-64"):
            expected = evaluate_marker(theirs.get("markers"), platform)
            assert lockhash.evaluate_marker(ours.get("markers"), platform) == expected, platform


# ---- the spec parser: selectors and nodefaults ----------------------------------------


def test_selectors_are_read_once_per_platform(tmp_path):
    text = (
        "channels: [conda-forge, nodefaults]\n"
        "dependencies:\n  - python\n  - libgfortran5  # [linux]\n  - llvm-openmp  # [osx]\n"
        "  - pip:\n    - uvloop  # [unix]\n    - pywin32  # [win]\n"
    )
    site = _site(tmp_path, {"e": text}, platforms=["linux-64", "osx-arm64", "win-64"])
    spec = load_env_spec(site, "e")
    assert spec.channels == ["conda-forge"]
    assert spec.by_platform["linux-64"].conda == ("python", "libgfortran5")
    assert spec.by_platform["osx-arm64"].conda == ("python", "llvm-openmp")
    assert spec.by_platform["win-64"].pip == ("pywin32",)
    osx = spec.for_platform("osx-arm64")
    assert (
        osx.conda == ["python", "llvm-openmp"]
        and osx.pip == ["uvloop"]
        and osx.spec_names[-1] == "llvm-openmp"
    )
    # one list for all platforms would be wrong here: the solve must ask per platform
    with pytest.raises(SpecError, match="selectors ask for different packages on linux-64 and osx-arm64"):
        _ = spec.spec_names

    one = _site(tmp_path / "one", {"e": text}, platforms=["linux-64"])
    lin = load_env_spec(one, "e")
    assert lin.conda == ["python", "libgfortran5"] and lin.pip == ["uvloop"]
    assert lin.spec_names == ["python", "libgfortran5"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dependencies:\n  - python\n  - numpy  # [not win]\n", r"line 3: selector \[not win\] is not one"),
        ("dependencies:\n  - python\n  - pip:\n    - https://x.org/a.whl\n", "valid pip requirement"),
        ("dependencies:\n  - python\n  - pip:\n    - a @ https://x.org/a-1.whl\n", "is a direct URL"),
        ("channels: [nodefaults]\ndependencies:\n  - python\n", "no channel to solve from"),
        ("dependencies:\n  - python 3.12.* [bogus=1]\n", "not a valid conda package spec"),
    ],
)
def test_spec_mistakes_are_one_sentence(tmp_path, text, message):
    site = _site(tmp_path, {"e": text}, channels=["nodefaults"] if "nodefaults" in text else ["conda-forge"])
    with pytest.raises(SpecError, match=message) as e:
        load_env_spec(site, "e")
    assert "\n" not in str(e.value) and str(e.value).startswith("envs/e/environment.yml")


# ---- reading lock files ----------------------------------------------------------------


def _write_conda_lock(path: Path, hashes: dict[str, str], channels: list[str]) -> None:
    """A lock written by conda-lock's own writer, as `hubstock lock` writes them."""
    from conda_lock.lockfile import write_conda_lock_file
    from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency, Lockfile, LockMeta

    pkgs = []
    for platform in hashes:
        sub = "noarch" if platform == "osx-arm64" else platform
        for i, name in enumerate(["python", "numpy", "_libgcc_mutex"]):
            pkgs.append(
                LockedDependency(
                    name=name,
                    version=f"1.{i}",
                    manager="conda",
                    platform=platform,
                    dependencies={"python": ">=3.11"} if name == "numpy" else {},
                    url=f"https://conda.anaconda.org/conda-forge/{sub}/{name}-1.{i}-h0_{i}.conda",
                    hash=HashModel(md5=f"{i:032x}", sha256=f"{i + 7:064x}"),
                    build=f"h0_{i}",
                    categories={"main"},
                )
            )
        pkgs.append(
            LockedDependency(
                name="six",
                version="1.17.0",
                manager="pip",
                platform=platform,
                dependencies={},
                url="https://files.example/six-1.17.0-py2.py3-none-any.whl",
                hash=HashModel(sha256="a" * 64),
                categories={"main", "dev"},
            )
        )
    lock = Lockfile(
        package=pkgs,
        metadata=LockMeta(
            content_hash=hashes, channels=channels, platforms=list(hashes), sources=["environment.yml"]
        ),
    )
    write_conda_lock_file(lock, path, metadata_choices=set(), include_help_text=False)


def test_a_lock_conda_lock_writes_reads_the_same(tmp_path):
    from conda_lock.lockfile import parse_conda_lock_file

    path = tmp_path / "conda-lock.yml"
    _write_conda_lock(path, {"linux-64": "1" * 64, "osx-arm64": "2" * 64}, ["conda-forge", "file:///srv/c"])
    theirs = parse_conda_lock_file(path)
    ours = condalock.read_lock_file(path, "envs/e/conda-lock.yml")

    def key(p):
        return (p.manager, p.name, p.platform)

    def fields(p):
        return (p.version, p.url, p.hash.sha256, p.hash.md5, p.build, dict(p.dependencies))

    assert {key(p): fields(p) for p in ours.package} == {key(p): fields(p) for p in theirs.package}
    assert len(ours.package) == len(theirs.package) == 8  # six is listed once per category in v1
    assert ours.metadata.content_hash == theirs.metadata.content_hash
    assert ours.metadata.platforms == theirs.metadata.platforms
    assert [c.url for c in ours.metadata.channels] == [c.url for c in theirs.metadata.channels]
    assert build_id(ours, "linux-64") == build_id(theirs, "linux-64")


def _broken(data: dict, how: str) -> dict | str:
    pkg = data["package"][1]  # numpy 1.1 (linux-64)
    assert pkg["name"] == "numpy"
    if how == "no-sha256":
        del pkg["hash"]["sha256"]
    elif how == "null-sha256":
        pkg["hash"]["sha256"] = None
    elif how == "empty-url":
        pkg["url"] = ""
    elif how == "bad-sha256":
        pkg["hash"]["sha256"] = "xyz"
    elif how == "no-url":
        del pkg["url"]
    elif how == "no-hash":
        del pkg["hash"]
    elif how == "bad-manager":
        pkg["manager"] = "npm"
    elif how == "no-version-field":
        del data["version"]
    elif how == "version-2":
        data["version"] = 2
    elif how == "no-content-hash":
        del data["metadata"]["content_hash"]
    elif how == "platform-without-hash":
        data["metadata"]["platforms"].append("win-64")
    elif how == "not-a-lock":
        return "- just\n- a list\n"
    elif how == "not-yaml":
        return "version: 1\npackage: [unclosed\n"
    return data


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("no-sha256", "package numpy 1.1 (linux-64) has no sha256"),
        ("null-sha256", "package numpy 1.1 (linux-64) has no sha256"),
        ("empty-url", "package numpy 1.1 (linux-64) has no url"),
        ("bad-sha256", "package numpy 1.1 (linux-64) has a malformed sha256 'xyz'"),
        ("no-url", "package numpy 1.1 (linux-64) has no url"),
        ("no-hash", "package numpy 1.1 (linux-64) has no hash"),
        ("bad-manager", "package numpy 1.1 (linux-64) has an invalid manager"),
        ("no-version-field", "has no 'version'"),
        ("version-2", "is conda-lock format version 2"),
        ("no-content-hash", "metadata.content_hash is missing"),
        ("platform-without-hash", "no hash for platform win-64"),
        ("not-a-lock", "is not a conda-lock file"),
        ("not-yaml", "is not valid YAML at line"),
    ],
)
def test_a_broken_lock_names_what_is_missing(tmp_path, how, says):
    path = tmp_path / "conda-lock.yml"
    _write_conda_lock(path, {"linux-64": "1" * 64}, ["conda-forge"])
    broken = _broken(yaml.safe_load(path.read_text()), how)
    path.write_text(broken if isinstance(broken, str) else yaml.safe_dump(broken))
    with pytest.raises(LockError) as e:
        condalock.read_lock_file(path, "envs/e/conda-lock.yml")
    msg = str(e.value)
    assert says in msg
    assert msg.startswith("envs/e/conda-lock.yml") and msg.endswith("lock again with `nox -s lock`.")
    assert "\n" not in msg and "ValidationError" not in msg


def test_fresh_stale_and_missing(tmp_path):
    site = _site(tmp_path, {"e": "channels: [conda-forge]\ndependencies:\n  - python\n"})
    spec = load_env_spec(site, "e")
    assert lock_status(site, spec).state == "missing"
    _write_conda_lock(spec.lock_path, _conda_lock_hashes(site, "e"), ["conda-forge"])
    assert lock_status(site, spec).state == "fresh"
    assert read_lock(spec).metadata.platforms == ["linux-64"]
    spec.path.write_text("channels: [conda-forge]\ndependencies:\n  - python\n  - numpy\n")
    assert lock_status(site, load_env_spec(site, "e")).state == "stale"


# ---- no conda_lock outside `hubstock lock` ---------------------------------------------

_PROBE = """\
import contextlib, io, json, sys
from hubstock.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["--site", sys.argv[1], "--root", sys.argv[2], "status", "--json"])
after_status = sorted(m for m in sys.modules if m.partition(".")[0] == "conda_lock")
from hubstock.admin.lock.envspec import load_env_spec
from hubstock.admin.lock.lockfile import build_id, packages_for, require_fresh_lock
from hubstock.site import load_site
site = load_site(sys.argv[1], sys.argv[2])
lock = require_fresh_lock(site, load_env_spec(site, "demo"))
bid = build_id(lock, "linux-64")
names = sorted(p.name for p in packages_for(lock, "linux-64"))
print(json.dumps({
    "rc": rc, "status": json.loads(out.getvalue()), "bid": bid, "names": names,
    "after_status": after_status,
    "after_reading": sorted(m for m in sys.modules if m.partition(".")[0] == "conda_lock"),
}))
"""


def test_status_and_reading_a_lock_never_import_conda_lock(tmp_path):
    site = _site(tmp_path, {"demo": "channels: [conda-forge]\ndependencies:\n  - python\n  - numpy\n"})
    (tmp_path / "hubstock.toml").write_text('channels = ["conda-forge"]\n')
    Root(tmp_path / "root").ensure()  # `hubstock init-root`
    _write_conda_lock(
        site.envs_dir / "demo" / "conda-lock.yml", _conda_lock_hashes(site, "demo"), ["conda-forge"]
    )
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), str(tmp_path / "root")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["rc"] == 0 and got["status"]["envs"]["demo"]["lock"] == "fresh"
    assert got["names"] == ["_libgcc_mutex", "numpy", "python", "six"] and len(got["bid"]) == 16
    assert got["after_status"] == [] and got["after_reading"] == []


_WITHOUT_CONDA_LOCK = """\
import sys
sys.modules["conda_lock"] = None  # as on a build host: `import conda_lock` fails
from hubstock.cli import main
sys.exit(main(["--site", sys.argv[1], "--root", sys.argv[2], *sys.argv[3:]]))
"""


def test_without_the_lock_extra_only_writing_a_lock_stops(tmp_path):
    site = _site(tmp_path, {"demo": "channels: [conda-forge]\ndependencies:\n  - python\n"})
    (tmp_path / "hubstock.toml").write_text('channels = ["conda-forge"]\n')
    Root(tmp_path / "root").ensure()  # `hubstock init-root`

    def run(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", _WITHOUT_CONDA_LOCK, str(tmp_path), str(tmp_path / "root"), *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    res = run("lock")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "hubstock: writing a lock needs conda-lock, which is not installed here; install the lock "
        "extra with `pip install 'hubstock[lock]'` on the machine that locks."
    ]
    assert not (site.envs_dir / "demo" / "conda-lock.yml").exists()
    # checking and reading locks need no conda-lock
    _write_conda_lock(
        site.envs_dir / "demo" / "conda-lock.yml", _conda_lock_hashes(site, "demo"), ["conda-forge"]
    )
    assert run("lock", "--check").returncode == 0
    assert run("lock").returncode == 0
    assert run("status").returncode == 0


@pytest.mark.integration
def test_a_lock_with_selectors_and_nodefaults_solves_what_it_hashes(make_site, hubstock, channel_url):
    site = make_site(
        {
            "demo": f"""\
            channels:
              - {channel_url}
              - nodefaults
            dependencies:
              - python
              - demo-a      # [linux]
              - demo-c 0.1  # [osx]
              - pip:
                - six==1.17.0  # [win]
            """
        }
    )
    res = hubstock(site, "lock")
    assert res.returncode == 0, res.stderr
    lock = read_lock(load_env_spec(site, "demo"))
    got = {p.name: p.version for p in lock.package}
    # the osx-only pin of demo-c does not hold on linux: demo-b brings the newest demo-c
    assert {"python", "demo-a", "demo-b"} <= set(got) and got["demo-c"] == "0.2" and "six" not in got
    assert [c.url for c in lock.metadata.channels] == [channel_url]
    assert lock.metadata.content_hash == _conda_lock_hashes(site, "demo")
    assert hubstock(site, "lock", "--check").returncode == 0
