"""Admin and developer tasks for hubstock and this site.

nox -s lock          lock envs/*/environment.yml into conda-lock.yml
nox -s build-envs    build the locked environments on the shared root
nox -s tests         run the test suite (installs what the tests need)
nox -s demo          build an offline demo site and run the whole hub on 127.0.0.1
nox -s lint          ruff and mypy
nox -s dist          build the sdist and the wheel into dist/ and check them
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "tests"]

#: Debian packages of the private single-node Slurm with its PBS commands (rigs/slurm_rig.py):
#: the hub tests' scheduler, and the demo's when run as root
SLURM_DEBIAN_PACKAGES: list[str] = ["slurmctld", "slurmd", "slurm-client", "munge", "slurm-wlm-torque"]
#: Debian packages of the private single-node OpenPBS (rigs/openpbs/): what building OpenPBS
#: from its source tarball needs, then its PostgreSQL datastore and the network-namespace tools
PBS_DEBIAN_PACKAGES: list[str] = [
    *("gcc", "g++", "make", "libtool", "autoconf", "automake", "pkg-config", "swig", "patchelf"),
    *("libhwloc-dev", "libx11-dev", "libxt-dev", "libedit-dev", "libncurses-dev", "libical-dev"),
    *("libexpat1-dev", "libcjson-dev", "libssl-dev", "zlib1g-dev", "libpq-dev", "tcl-dev", "tk-dev"),
    "python3-dev",
    *("postgresql", "iproute2", "util-linux", "mount"),
]
#: Debian packages of the stock R kernel: Lmod, and Debian's R with IRkernel behind the site kit's
#: modulefile (modules/R/debian.lua); `build-envs` installs them when run as root
STOCK_DEBIAN_PACKAGES: list[str] = ["lmod", "r-base-core", "r-cran-irkernel"]
#: Debian packages the test suite uses (installed by `nox -s tests` when run as root)
TEST_DEBIAN_PACKAGES: list[str] = [
    *SLURM_DEBIAN_PACKAGES,
    *PBS_DEBIAN_PACKAGES,
    "chromium",  # the browser tests (driven by Playwright; never a browser download)
    *("openssl", "systemd"),  # the TLS hub test's CA, and systemd-analyze verify of the rendered units
    "postgresql",  # the hub suite's run with PostgreSQL as the hub database
    *STOCK_DEBIAN_PACKAGES,  # Lmod and Debian's R with IRkernel: module kernels (rigs/lmod_rig.py)
    *("glusterfs-server", "glusterfs-client"),  # the root on a network filesystem (rigs/gluster_rig.py)
    *("sshfs", "openssh-sftp-server"),  # a filesystem that cannot hold a root (tests/test_rootmark.py)
]


def _missing_debian_packages(names: list[str]) -> list[str]:
    missing = []
    for name in names:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in res.stdout:
            missing.append(name)
    return missing


def _ensure_debian_packages(session: nox.Session, names: list[str], *, required: bool = True) -> None:
    """Install missing Debian packages when root; say what is missing otherwise (in CI, a missing
    package the tests need is an error; one the stock catalog can do without is not)."""
    if not names or not shutil.which("dpkg-query"):
        return
    missing = _missing_debian_packages(names)
    if not missing:
        return
    if os.geteuid() != 0:
        msg = f"missing Debian packages {' '.join(missing)}: install them (apt-get install) or run as root"
        if os.environ.get("CI") and required:
            session.error(msg)
        session.warn(msg + ("; the tests that need them will be skipped" if required else "; left out"))
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=300",
        *missing,
        external=True,
        env=env,
    )


def _hubstock(session: nox.Session, *args: str, extra: str = "") -> None:
    session.install("-e", f".[{extra}]" if extra else ".")
    session.run("hubstock", *args)


@nox.session
def lock(session: nox.Session) -> None:
    """Lock every environment spec (or the ones named after --) into its conda-lock.yml."""
    _hubstock(session, "lock", *session.posargs, extra="lock")  # writing a lock needs conda-lock


@nox.session(name="build-envs")
def build_envs(session: nox.Session) -> None:
    """Lock what has no lock, build the locked environments on the shared root, publish the kernels.

    An env without a lock is locked first, and a venv whose lock was made for another Python than
    its interpreter is locked again (saying so): this makes the shipped catalog build on any
    machine. A site that wants its committed locks taken as they are runs `hubstock build` and
    `hubstock publish` itself (or drops the lock line below); a stale lock is an error either way.
    """
    if os.geteuid() == 0:  # the stock R kernel: Lmod and Debian's R (an optional env: left out without)
        _ensure_debian_packages(session, STOCK_DEBIAN_PACKAGES, required=False)
    _hubstock(session, "lock", "--if-needed", *session.posargs, extra="admin")
    session.run("hubstock", "build", *session.posargs)
    session.run("hubstock", "publish")
    session.run("hubstock", "status")


@nox.session(name="publish-kernels")
def publish_kernels(session: nox.Session) -> None:
    """Smoke-test the kernels on their builds and publish them as a new generation."""
    _hubstock(session, "publish", extra="admin")
    session.run("hubstock", "status")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite; installs its Python and (as root) Debian prerequisites."""
    _ensure_debian_packages(session, TEST_DEBIAN_PACKAGES)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Build an offline demo site and run the whole hub on 127.0.0.1 (Ctrl-C stops it)."""
    if os.geteuid() == 0:  # as root the servers are Slurm jobs of a PAM user; otherwise local processes
        needed = SLURM_DEBIAN_PACKAGES + ([] if shutil.which("npm") else ["nodejs", "npm"])
        _ensure_debian_packages(session, needed)
    session.install("-e", ".[test]")
    # Ctrl-C reaches the demo too: give it the time to stop the hub, its servers and Slurm
    session.run("python", "-m", "rigs.demo", *session.posargs, interrupt_timeout=None)


@nox.session
def dist(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/ and check them (twine check --strict); install a
    role from the wheel with `pip install 'dist/hubstock-VERSION-py3-none-any.whl[hub]'` (see the
    README's "Which extra on which machine")."""
    session.install("build", "twine")
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist", ".")
    session.run("twine", "check", "--strict", *sorted(str(p) for p in Path("dist").iterdir()))


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common mistakes with ruff, and the engine's types with mypy."""
    session.install("ruff", "mypy", "-e", ".[hub,lock]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark suite (see BENCHMARKS.md): a table, and .bench/results.json."""
    if os.geteuid() == 0:  # spawn_to_ready runs the hub on the private Slurm rig
        needed = [p for p in TEST_DEBIAN_PACKAGES if p != "chromium"]
        _ensure_debian_packages(session, needed + ([] if shutil.which("npm") else ["nodejs", "npm"]))
    session.install("-e", ".[test]")
    session.run("python", "-m", "bench.run", *session.posargs)
