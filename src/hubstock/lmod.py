"""Environment modules (Lmod): find Lmod, load modules as a batch job would, and render kernel argvs.

Lmod's ``module`` is a shell function defined by sourcing Lmod's bash init; a plain ``bash -c``
has no ``module`` until it does. Everything here runs ``/bin/bash --noprofile --norc -c SCRIPT``
where SCRIPT is fixed text and every module name, directory and kernel argument is a positional
argument (``"$@"``), never spliced into the script.

- :func:`find_init` finds Lmod's bash init (a setting, ``$LMOD_PKG``, the usual install paths).
- :func:`load` runs ``module use/purge/load`` in a clean environment (as ``env -i`` would give a
  batch job) and returns the modules loaded (dependencies included, with their modulefiles'
  sha256) and the environment after the load; :func:`resolve` returns only the modules.
- :func:`which` looks a command up on a load's PATH.
- :func:`kernel_argv` (pure) renders the kernelspec argv that loads the modules, then execs the
  kernel.

Sourcing the init alone leaves MODULEPATH unset (Debian sets it in /etc/profile.d/lmod.sh from
/etc/lmod/modulespath): pass the module directories as ``use`` (or MODULEPATH in ``base_env``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CommandError, ModuleError
from .proc import run

__all__ = [
    "MODULE_NAME",
    "ModuleLoad",
    "ResolvedModule",
    "check_module_names",
    "find_init",
    "kernel_argv",
    "lmod_message",
    "load",
    "parse_load_output",
    "resolve",
    "which",
]

#: Lmod's bash init of Debian's package lmod (``lmod`` is a symlink to the versioned directory)
DEBIAN_INIT = "/usr/share/lmod/lmod/init/bash"
#: other usual places: Debian's versioned directories, and Lmod's own default install prefix
_INIT_GLOBS = ("/usr/share/lmod/*/init/bash", "/opt/apps/lmod/lmod/init/bash")
#: the PATH of the clean environment a load starts from (as a batch job's minimal PATH)
BASE_PATH = "/usr/bin:/bin"
#: $0 of the shells this module starts (shown by ps and in bash's own error messages)
_LOAD_ARGV0 = "hubstock-lmod"
_KERNEL_ARGV0 = "hubstock-kernel"
#: printed (between NULs) after a successful load: Lmod's messages come before it
_MARK = "HUBSTOCK-LMOD-RESULT"
#: one part of a module name: no leading "-" (an option to `module`) or "." (a hidden module)
_PART = r"[A-Za-z0-9_+][A-Za-z0-9_.+-]*"
#: what a module name may be (``R``, ``R/4.2``, ``gcc/12/openmpi/4.1``): the one rule, for every caller
MODULE_NAME = re.compile(rf"{_PART}(?:/{_PART})*")
#: variables bash itself sets in the shell that prints the environment: not the load's doing
_SHELL_VARS = frozenset({"_", "PWD", "OLDPWD", "SHLVL"})
#: how much of Lmod's message goes into the one-sentence error
_MESSAGE_MAX = 300

# $1 init, $2 number of module directories, then the directories, then the modules.
_LOAD_SCRIPT = f"""\
init=$1; nuse=$2; shift 2
source "$init"
type module >/dev/null 2>&1 || exit 4
if [ "$nuse" -gt 0 ]; then module use "${{@:1:$nuse}}"; shift "$nuse"; fi
module purge
if [ "$#" -gt 0 ]; then module load "$@" || exit 1; fi
printf '\\0%s\\0%s\\0%s\\0' {_MARK} "${{LOADEDMODULES-}}" "${{_LMFILES_-}}"
command -p env -0
"""


@dataclass(frozen=True)
class ResolvedModule:
    """One loaded module."""

    #: the name as asked ("R" or "R/4.2"); a dependency loaded by another module: its full name
    name: str
    #: the name Lmod loaded ("R/4.2")
    full_name: str
    #: the modulefile Lmod read
    path: str
    #: sha256 of the modulefile
    sha256: str


@dataclass(frozen=True)
class ModuleLoad:
    """What a ``module load`` gave: the modules (dependencies included) and the environment."""

    #: every module loaded, in Lmod's order ($LOADEDMODULES, $_LMFILES_)
    modules: list[ResolvedModule]
    #: the environment after the load (without the shell's own PWD, SHLVL and _)
    environ: dict[str, str]


# --- finding Lmod ---------------------------------------------------------------------------------


def find_init(configured: str | None = None) -> Path:
    """Lmod's bash init: ``configured`` (must exist), else ``$LMOD_PKG/init/bash``, else the usual
    install paths; ModuleError when there is none."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ModuleError(
                f"Lmod's init {configured} ([modules] init in hubstock.toml) does not exist; "
                "fix the path, or remove the setting to use the Lmod installed here."
            )
        return path
    candidates = []
    if os.environ.get("LMOD_PKG"):
        candidates.append(os.path.join(os.environ["LMOD_PKG"], "init", "bash"))
    candidates.append(DEBIAN_INIT)
    for pattern in _INIT_GLOBS:
        candidates.extend(sorted(glob.glob(pattern), reverse=True))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return Path(candidate)
    raise ModuleError(
        "Lmod is not installed here (no init/bash found): install Debian's lmod (apt-get install lmod) "
        "or set [modules] init in hubstock.toml."
    )


# --- pure parts -----------------------------------------------------------------------------------


def check_module_names(modules: Sequence[str]) -> list[str]:
    """The names, if each is a plain module name (``R``, ``R/4.2``, ``gcc/12/openmpi/4.1``)."""
    if isinstance(modules, str):
        raise TypeError("modules must be a sequence of names, not one string")
    for name in modules:
        if not isinstance(name, str) or not MODULE_NAME.fullmatch(name):
            raise ModuleError(
                f"the module name {name!r} is not a plain Lmod module name (letters, digits and _ . + -, "
                "parts joined by /, not starting with - or .); fix it in hubstock.toml."
            )
    return list(modules)


def _check_dirs(use: Sequence[str]) -> list[str]:
    if isinstance(use, str):
        raise TypeError("use must be a sequence of directories, not one string")
    dirs = [os.fspath(d) for d in use]
    for d in dirs:
        if not os.path.isabs(d) or ":" in d or "\n" in d:
            raise ModuleError(
                f"the module directory {d!r} is not an absolute path without ':'; "
                "fix [modules] use in hubstock.toml."
            )
    return dirs


def kernel_argv(
    argv: Sequence[str],
    modules: Sequence[str],
    *,
    init: str,
    use: Sequence[str] = (),
    fallback: Sequence[str] = (),
) -> list[str]:
    """The kernelspec argv that loads ``modules`` with Lmod, then execs the kernel's ``argv``.

    The script is fixed text (init, directories and module names shell-quoted); the kernel's
    argv, with the ``{connection_file}`` jupyter_client substitutes, follows as positional
    arguments and runs with ``exec "$@"``. If the load fails, Lmod's message goes to the
    kernel's stderr and the shell exits with status 1; with ``fallback`` (a command), it execs
    ``fallback REASON ARGV...`` instead, REASON being one sentence with Lmod's message: a kernel
    that tells the user why (:mod:`hubstock.admin.publish.unavailable_kernel`). No modules:
    ``argv`` unchanged.
    """
    names = check_module_names(modules)
    if not names:
        return list(argv)
    if not argv:
        raise ValueError("kernel_argv needs the kernel's argv")
    dirs = _check_dirs(use)
    loaded = " ".join(shlex.quote(n) for n in names)
    failed = (
        f"hubstock: module load {' '.join(names)} failed, see the Lmod message above; "
        "the site admins must fix the modules of this kernel."
    )
    steps = [f"source {shlex.quote(init)}"]
    if dirs:
        steps.append("module use " + " ".join(shlex.quote(d) for d in dirs))
    steps.append("module purge")
    if fallback:
        # Lmod's message, once more in a subshell (which changes nothing here), as one line
        why = f"why=$( (module load {loaded}) 2>&1 >/dev/null | tr -s ' \\n' ' ' | sed -e 's/^ *Lmod has detected the following error: *//' -e 's/ *Please check the spelling.*//' -e 's/ *$//' )"
        reason = (
            f'"This kernel cannot start on ${{HOSTNAME:-this node}}: module load {" ".join(names)} failed '
            f"(${{why:-no message}}). Ask your site's admins to restore the module or publish the kernel again.\""
        )
        run_fallback = "exec " + " ".join(shlex.quote(a) for a in fallback) + f" {reason} " + '"$@"'
        steps.append(f"module load {loaded} || {{ {why}; echo {shlex.quote(failed)} >&2; {run_fallback}; }}")
    else:
        steps.append(f"module load {loaded} || {{ echo {shlex.quote(failed)} >&2; exit 1; }}")
    steps.append('exec "$@"')
    return ["/bin/bash", "--noprofile", "--norc", "-c", "; ".join(steps), _KERNEL_ARGV0, *argv]


def load_argv(
    modules: Sequence[str],
    *,
    init: Path | str,
    use: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
) -> list[str]:
    """The command :func:`load` runs: ``env -i`` with PATH, HOME and ``base_env``, then bash."""
    names = check_module_names(modules)
    dirs = _check_dirs(use)
    env = {"PATH": BASE_PATH, "HOME": os.environ.get("HOME") or "/", **(base_env or {})}
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"not an environment variable name: {key!r}")
    assignments = [f"{k}={v}" for k, v in env.items()]
    return [
        "env",
        "-i",
        "--",
        *assignments,
        "/bin/bash",
        "--noprofile",
        "--norc",
        "-c",
        _LOAD_SCRIPT,
        _LOAD_ARGV0,
        os.fspath(init),
        str(len(dirs)),
        *dirs,
        *names,
    ]


def parse_load_output(output: str) -> tuple[str, list[str], list[str], dict[str, str]] | None:
    """Split what the load script printed: (Lmod's messages, loaded module names, their
    modulefiles, environment); None if the result was never printed."""
    head, sep, tail = output.partition(f"\0{_MARK}\0")
    if not sep:
        return None
    loaded, _, rest = tail.partition("\0")
    files, _, env_text = rest.partition("\0")
    environ: dict[str, str] = {}
    for entry in env_text.split("\0"):
        key, eq, value = entry.partition("=")
        if eq and key not in _SHELL_VARS:
            environ[key] = value
    names = [n for n in loaded.split(":") if n]
    paths = [p for p in files.split(":") if p]
    return head, names, paths, environ


def lmod_message(output: str) -> str:
    """Lmod's error in ``output`` condensed to one line ("Lmod: The following module(s) are unknown:
    "nosuch/1.0""), else the first line of the output; "" when there is none."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output.replace("\0", "\n"))
    found = re.search(r"Lmod has detected the following error:(.*?)(?:\n[ \t]*\n|\Z)", text, re.S)
    if found:
        message = "Lmod: " + " ".join(found.group(1).split())
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        message = " ".join(lines[0].split()) if lines else ""
    message = message.rstrip(" .")
    if len(message) > _MESSAGE_MAX:
        message = message[: _MESSAGE_MAX - 3].rstrip() + "..."
    return message


def match_requested(requested: Sequence[str], loaded: Sequence[str]) -> dict[str, str]:
    """Which requested name each loaded full name answers: exact ("R/4.2"), else by prefix ("R"),
    else by the first part ("R/default" loading "R/4.2"); the others are dependencies."""
    asked: dict[str, str] = {}
    rules = (
        lambda want, full: full == want,
        lambda want, full: full.startswith(want + "/"),
        lambda want, full: full.split("/", 1)[0] == want.split("/", 1)[0],
    )
    for rule in rules:
        for want in requested:
            if want in asked.values():
                continue
            for full in loaded:
                if full not in asked and rule(want, full):
                    asked[full] = want
                    break
    return asked


# --- running Lmod ---------------------------------------------------------------------------------


def load(
    modules: Sequence[str],
    *,
    init: Path,
    use: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> ModuleLoad:
    """Load ``modules`` as a batch job would: in a clean environment (PATH=/usr/bin:/bin, HOME,
    then ``base_env``), ``source init; module use DIR...; module purge; module load ...``.

    ModuleError with Lmod's message in one sentence (its whole output in ``detail``) if it fails.
    """
    names = check_module_names(modules)
    dirs = _check_dirs(use)
    for d in dirs:
        if not os.path.isdir(d):
            raise ModuleError(f"the module directory {d} does not exist; fix [modules] use in hubstock.toml.")
    argv = load_argv(names, init=init, use=dirs, base_env=base_env)
    what = f"module load {' '.join(names)}" if names else "module purge"
    try:
        proc = run(argv, what=what, timeout=timeout, check=False)
    except CommandError as e:
        raise ModuleError(e.message, detail=e.detail) from None
    output = proc.stdout
    parsed = parse_load_output(output) if proc.returncode == 0 else None
    if parsed is None:
        raise _load_failed(what, init, proc.returncode, output)
    messages, loaded, files, environ = parsed
    if len(loaded) != len(files):
        raise ModuleError(
            f"{what} gave {len(loaded)} loaded modules but {len(files)} modulefiles ($LOADEDMODULES, "
            "$_LMFILES_); check that no module path contains ':'.",
            detail=messages,
        )
    asked = match_requested(names, loaded)
    resolved = [
        ResolvedModule(name=asked.get(full, full), full_name=full, path=path, sha256=_sha256(path, full))
        for full, path in zip(loaded, files, strict=True)
    ]
    return ModuleLoad(modules=resolved, environ=environ)


def resolve(modules: Sequence[str], *, init: Path, use: Sequence[str] = ()) -> list[ResolvedModule]:
    """The modules ``module load`` loads (dependencies included), with their modulefiles' sha256."""
    return load(modules, init=init, use=use).modules


def which(command: str, load: ModuleLoad) -> str | None:
    """The absolute path of ``command`` on the loaded environment's PATH (symlinks kept), or None."""
    if "/" in command:
        return command if os.path.isabs(command) and _executable(command) else None
    for d in load.environ.get("PATH", "").split(os.pathsep):
        if os.path.isabs(d):
            candidate = os.path.join(d, command)
            if _executable(candidate):
                return candidate
    return None


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _sha256(path: str, full_name: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                digest.update(block)
    except OSError as e:
        raise ModuleError(
            f"the modulefile {path} of module {full_name} cannot be read ({e.strerror}); "
            "make it readable by everyone."
        ) from None
    return digest.hexdigest()


def _load_failed(what: str, init: Path | str, returncode: int, output: str) -> ModuleError:
    message = lmod_message(output)
    if returncode == 4:
        said = f" ({message})" if message else ""
        return ModuleError(
            f"sourcing {init} defined no module command{said}, so it is not Lmod's bash init; "
            "set [modules] init in hubstock.toml to Lmod's init/bash.",
            detail=output,
        )
    return ModuleError(
        f"{what} failed: {message or f'exit status {returncode}'}; check the module name with `module avail` or [modules] use in hubstock.toml.",
        detail=output,
    )
