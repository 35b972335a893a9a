"""The host side of the rig: the Debian packages it builds and runs with, the binaries it
calls (found on PATH or in the sbin folders, PostgreSQL's in its own bin folder), and root."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from rigs.slurm_rig import RigError, _run  # shared process helpers

from .config import _SBIN_PATH

#: Debian packages needed to build OpenPBS from source
BUILD_DEBIAN_PACKAGES = (
    "gcc",
    "g++",
    "make",
    "libtool",
    "autoconf",
    "automake",
    "pkg-config",
    "libhwloc-dev",
    "libx11-dev",
    "libxt-dev",
    "libedit-dev",
    "libncurses-dev",
    "libical-dev",
    "libexpat1-dev",
    "libcjson-dev",
    "libssl-dev",
    "zlib1g-dev",
    "libpq-dev",
    "tcl-dev",
    "tk-dev",
    "python3-dev",
    "swig",
    "patchelf",
)
#: Debian packages needed to run the rig (the datastore, the namespace tools); the libraries the
#: build links come with BUILD_DEBIAN_PACKAGES
RUN_DEBIAN_PACKAGES = ("postgresql", "iproute2", "util-linux", "mount")
DEBIAN_PACKAGES = BUILD_DEBIAN_PACKAGES + RUN_DEBIAN_PACKAGES

# binary -> Debian package that ships it (the host side of the rig)
_BINARIES = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "runuser": "util-linux",
    "mount": "mount",
    "ip": "iproute2",
    "pg_config": "libpq-dev",
    "psql": "postgresql",
}


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SBIN_PATH)


def missing_debian_packages(names: Iterable[str]) -> list[str]:
    """The packages dpkg does not report as installed (all of them if dpkg is absent)."""
    out = []
    for name in names:
        cp = (
            subprocess.run(
                ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
            )
            if shutil.which("dpkg-query")
            else None
        )
        if cp is None or "install ok installed" not in cp.stdout:
            out.append(name)
    return out


def ensure_debian_packages(names: Iterable[str], what: str) -> None:
    """Install the missing Debian packages when root (apt-get); RigError naming them otherwise."""
    names = list(names)
    if not shutil.which("dpkg-query"):
        return  # not Debian: require_binaries() and the build say what is missing
    missing = missing_debian_packages(names)
    if not missing:
        return
    if os.geteuid() != 0:
        raise RigError(
            f"{what} needs the Debian packages {' '.join(missing)}: "
            f"apt-get install --no-install-recommends {' '.join(missing)} (or run as root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env, timeout=600)
    _run(
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=300",
            *missing,
        ],
        env=env,
        timeout=1800,
    )


def require_binaries() -> None:
    """RigError naming the Debian packages to install if a binary the rig runs is missing."""
    missing = {b: pkg for b, pkg in _BINARIES.items() if _which(b) is None}
    if missing:
        raise RigError(
            f"the OpenPBS rig needs {', '.join(sorted(missing))} (missing); install the Debian "
            f"packages with: apt-get install --no-install-recommends {' '.join(RUN_DEBIAN_PACKAGES)}"
        )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RigError("the OpenPBS rig must run as root (namespaces, pbs_server, pbs_mom, job users)")


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl, ...) of the installed PostgreSQL."""
    cp = _run([_which("pg_config") or "pg_config", "--bindir"], timeout=10, check=False)
    for d in [cp.stdout.strip(), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        if d and (Path(d) / name).exists():
            return str(Path(d) / name)
    found = _which(name)
    if found:
        return found
    raise RigError(f"no PostgreSQL {name}: apt-get install postgresql")
