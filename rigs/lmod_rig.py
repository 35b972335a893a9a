"""A real Lmod module tree for tests and demos: ``python/<X.Y>`` and ``R/<X.Y>`` modules.

``write_module_tree(dest)`` writes Lua modulefiles under ``dest/modules`` whose modules put a
directory of symlinks on PATH (``dest/sw/<name>/<X.Y>/bin``): this machine's Python
(``/usr/bin/python3`` by default) and Debian's R with Rscript. Symlink directories rather than
/usr/bin, so that ``which R`` after ``module load R/<X.Y>`` proves that the module did it.
Everything is made readable by everyone (``chmod -R a+rX``), so that jobs of the Slurm and
OpenPBS rigs (which run as other users on this machine) can load the modules too.

Needs the Debian packages in :data:`LMOD_DEBIAN_PACKAGES` (Lmod, R, IRkernel; installed
without Recommends: 30 packages, about 38 MB): :func:`ensure_debian_packages` installs the
missing ones when root. Standard library only.

Command line (a demo)::

    python rigs/lmod_rig.py DIR      # install what is missing (as root), write the tree, print it
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "LMOD_DEBIAN_PACKAGES",
    "ModuleTree",
    "RigError",
    "ensure_debian_packages",
    "missing_debian_packages",
    "write_module_tree",
]

#: Lmod, Debian's R and its Jupyter kernel (install with --no-install-recommends: with the
#: Recommends, r-base-core pulls in 646 packages, 632 MB)
LMOD_DEBIAN_PACKAGES = ["lmod", "r-base-core", "r-cran-irkernel"]

#: where the tree's programs are looked up: the minimal PATH of a batch job
_SYSTEM_PATH = "/usr/bin:/bin"


class RigError(Exception):
    """The module tree could not be set up."""


@dataclass(frozen=True)
class ModuleTree:
    """A module tree written by :func:`write_module_tree`."""

    #: the directory given (holds ``modules`` and ``sw``)
    root: Path
    #: the directory to ``module use`` (MODULEPATH)
    modulepath: Path
    #: "python/3.11" and its X.Y, modulefile, symlink bin directory and the real interpreter
    python_module: str
    python_version: str
    python_modulefile: Path
    python_bin: Path
    python_exe: str
    #: "R/4.2" and its X.Y, modulefile, symlink bin directory and Debian's R
    r_module: str
    r_version: str
    r_modulefile: Path
    r_bin: Path
    r_exe: str

    @property
    def modules(self) -> list[str]:
        """The module names of the tree."""
        return [self.python_module, self.r_module]


def missing_debian_packages(names: Iterable[str] = LMOD_DEBIAN_PACKAGES) -> list[str]:
    """The packages dpkg does not report as installed (all of them if there is no dpkg)."""
    dpkg = shutil.which("dpkg-query")
    missing = []
    for name in names:
        cp = (
            subprocess.run([dpkg, "-W", "-f=${Status}", name], capture_output=True, text=True, check=False)
            if dpkg
            else None
        )
        if cp is None or "install ok installed" not in cp.stdout:
            missing.append(name)
    return missing


def ensure_debian_packages(names: Iterable[str] = LMOD_DEBIAN_PACKAGES) -> None:
    """Install the missing packages (apt-get, no Recommends) when root; RigError naming them otherwise."""
    names = list(names)
    missing = missing_debian_packages(names)
    if not missing:
        return
    command = f"apt-get install --no-install-recommends {' '.join(missing)}"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RigError(f"the Lmod rig needs the Debian packages {' '.join(missing)}: run {command} as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq", "-o", "DPkg::Lock::Timeout=600"],
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "-o",
            "DPkg::Lock::Timeout=600",
            *missing,
        ],
    ):
        try:
            cp = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RigError(f"{' '.join(argv)} failed: {e}") from None
        if cp.returncode != 0:
            tail = (cp.stderr.strip() or cp.stdout.strip()).splitlines()[-5:]
            raise RigError(f"{' '.join(argv)} failed ({cp.returncode}): {' / '.join(tail)}")


def _system_program(name: str, package: str) -> str:
    found = shutil.which(name, path=_SYSTEM_PATH)
    if found is None:
        raise RigError(
            f"{name} not found on {_SYSTEM_PATH}: apt-get install --no-install-recommends {package}"
        )
    return found


def _output(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RigError(f"{' '.join(argv)} failed: {e}") from None
    if cp.returncode != 0:
        raise RigError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()[-500:]}")
    return cp.stdout.strip()


def _lua(text: str) -> str:
    """A Lua string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _link_dir(bin_dir: Path, links: dict[str, str]) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        link = bin_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def write_module_tree(dest: Path, *, python: str | None = None) -> ModuleTree:
    """Write the module tree under ``dest``: ``modules/python/<X.Y>.lua`` for ``python`` (a path,
    or a name looked up on /usr/bin:/bin; default python3 there) and ``modules/R/<X.Y>.lua`` for
    Debian's R. Idempotent; everything readable by everyone."""
    dest = Path(dest).absolute()
    py_exe = python if python and os.sep in python else _system_program(python or "python3", "python3")
    if not os.access(py_exe, os.X_OK):
        raise RigError(f"{py_exe} is not an executable Python interpreter")
    r_exe = _system_program("R", "r-base-core")
    rscript_exe = _system_program("Rscript", "r-base-core")
    py_version = _output([py_exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    r_version = _output(
        [rscript_exe, "-e", 'cat(R.version$major, sub("[.].*", "", R.version$minor), sep=".")']
    )

    modulepath = dest / "modules"
    py_bin = dest / "sw" / "python" / py_version / "bin"
    r_bin = dest / "sw" / "R" / r_version / "bin"
    _link_dir(py_bin, {"python3": py_exe, "python": "python3", f"python{py_version}": "python3"})
    _link_dir(r_bin, {"R": r_exe, "Rscript": rscript_exe})

    py_file = modulefile = modulepath / "python" / f"{py_version}.lua"
    modulefile.parent.mkdir(parents=True, exist_ok=True)
    modulefile.write_text(
        f"whatis({_lua(f'python {py_version} ({py_exe}) through a directory of symlinks')})\n"
        'family("python")\n'
        f'prepend_path("PATH", {_lua(str(py_bin))})\n'
    )
    r_file = modulefile = modulepath / "R" / f"{r_version}.lua"
    modulefile.parent.mkdir(parents=True, exist_ok=True)
    modulefile.write_text(
        f"whatis({_lua(f'R {r_version} ({r_exe}) with IRkernel, through a directory of symlinks')})\n"
        f'prepend_path("PATH", {_lua(str(r_bin))})\n'
    )

    for d in (modulepath, dest / "sw"):
        subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
    dest.chmod(dest.stat().st_mode | 0o755)
    return ModuleTree(
        root=dest,
        modulepath=modulepath,
        python_module=f"python/{py_version}",
        python_version=py_version,
        python_modulefile=py_file,
        python_bin=py_bin,
        python_exe=py_exe,
        r_module=f"R/{r_version}",
        r_version=r_version,
        r_modulefile=r_file,
        r_bin=r_bin,
        r_exe=r_exe,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python rigs/lmod_rig.py DIR", file=sys.stderr)
        return 2
    try:
        ensure_debian_packages()
        tree = write_module_tree(Path(args[0]))
    except RigError as e:
        print(f"lmod rig: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: str(v) for k, v in asdict(tree).items()}, indent=1))
    print(f"try: module use {tree.modulepath}; module load {' '.join(tree.modules)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
