"""Lmod access (hubstock.lmod): module names, the kernel argv, the load's output; then the real
Debian Lmod with the module tree of rigs/lmod_rig.py (python/X.Y, R/X.Y) and an R kernel
(IRkernel) started through a module."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from hubstock import lmod
from hubstock.errors import HubstockError, ModuleError

IRKERNEL_ARGV = ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"]

# --- module names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["R", "R/4.2", "python/3.11", "gcc/12.2.0/openmpi/4.1.5", "py+x_1/1.0-rc1"])
def test_plain_module_names_pass(name: str) -> None:
    assert lmod.check_module_names([name]) == [name]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-f",
        "--force",
        "R 4.2",
        "R;rm -rf /",
        "$(id)",
        "R/",
        "/R",
        "R//4",
        ".hidden",
        "R/.4.3",
        "R/..",
        "a\nb",
    ],
)
def test_other_module_names_are_refused_in_one_sentence(name: str) -> None:
    with pytest.raises(ModuleError) as info:
        lmod.check_module_names(["R", name])
    message = str(info.value)
    assert repr(name) in message and "hubstock.toml" in message
    assert message.endswith(".") and "\n" not in message.replace(repr(name), "")


def test_a_string_is_not_a_list_of_modules() -> None:
    with pytest.raises(TypeError):
        lmod.check_module_names("R/4.2")


def test_module_error_is_a_hubstock_error() -> None:
    assert issubclass(ModuleError, HubstockError)
    assert ModuleError("x", detail="y").detail == "y"


# --- the kernel argv ----------------------------------------------------------------------------


def test_kernel_argv_by_value() -> None:
    argv = lmod.kernel_argv(
        IRKERNEL_ARGV, ["R/4.2", "gcc/12"], init="/opt/lmod x/init/bash", use=["/sw/modules", "/my mods"]
    )
    script = (
        "source '/opt/lmod x/init/bash'; module use /sw/modules '/my mods'; module purge; "
        "module load R/4.2 gcc/12 || { echo 'hubstock: module load R/4.2 gcc/12 failed, see the Lmod "
        "message above; the site admins must fix the modules of this kernel.' >&2; exit 1; }; "
        'exec "$@"'
    )
    assert argv == ["/bin/bash", "--noprofile", "--norc", "-c", script, "hubstock-kernel", *IRKERNEL_ARGV]


def test_kernel_argv_without_use() -> None:
    argv = lmod.kernel_argv(
        ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], ["python"], init="/i"
    )
    assert argv[4].startswith("source /i; module purge; module load python || {")
    assert argv[5:] == ["hubstock-kernel", "python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def test_kernel_argv_without_modules_is_the_argv() -> None:
    assert lmod.kernel_argv(IRKERNEL_ARGV, [], init="/i", use=["/m"]) == IRKERNEL_ARGV


@pytest.mark.parametrize("bad", ["relative/mods", "/a:/b", "-x"])
def test_kernel_argv_refuses_a_bad_module_directory(bad: str) -> None:
    with pytest.raises(ModuleError, match=r"\[modules\] use"):
        lmod.kernel_argv(IRKERNEL_ARGV, ["R"], init="/i", use=[bad])


def test_kernel_argv_refuses_a_bad_module_name() -> None:
    with pytest.raises(ModuleError, match="not a plain Lmod module name"):
        lmod.kernel_argv(IRKERNEL_ARGV, ["R; reboot"], init="/i")


# A stand-in for Lmod's init: `module` logs its arguments to stderr, "loads" name/1 as a
# dependency dep/1 plus the module, "name" meaning name/1 (modulefiles under the first `module use` directory), and
# fails like Lmod for bad/1.
FAKE_INIT = textwrap.dedent("""\
    module() {
      printf 'module %s\\n' "$*" >&2
      case "$1" in
        use) shift; export MODULEPATH="$1";;
        purge) unset LOADEDMODULES _LMFILES_;;
        load) shift
          for m in "$@"; do
            if [ "$m" = bad/1 ]; then
              printf 'Lmod has detected the following error: The following module(s) are unknown:\\n"%s"\\n\\n' "$m" >&2
              printf 'Please check the spelling or version number.\\n' >&2
              return 1
            fi
          done
          m=$1; case "$m" in */*) ;; *) m=$m/1;; esac
          export LOADEDMODULES="dep/1:$m" _LMFILES_="$MODULEPATH/dep/1.lua:$MODULEPATH/$m.lua" FAKE_LOADED=yes;;
      esac
    }
""")


@pytest.fixture
def fake_lmod(tmp_path: Path) -> tuple[Path, Path]:
    """(init, module directory) of the stand-in Lmod."""
    init = tmp_path / "init.bash"
    init.write_text(FAKE_INIT)
    mods = tmp_path / "mods"
    for name in ("dep/1", "x/1"):
        (mods / f"{name}.lua").parent.mkdir(parents=True, exist_ok=True)
        (mods / f"{name}.lua").write_text(f'whatis("{name}")\n')
    return init, mods


def test_the_rendered_script_loads_then_execs_the_argv(fake_lmod: tuple[Path, Path]) -> None:
    init, mods = fake_lmod
    args = ["a b", "$(touch /nonexistent)", "{connection_file}", "'"]
    argv = lmod.kernel_argv(["printf", "%s\\n", *args], ["x/1"], init=str(init), use=[str(mods)])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == args
    assert proc.stderr.splitlines() == [f"module use {mods}", "module purge", "module load x/1"]


def test_the_rendered_script_exits_1_with_lmods_message(fake_lmod: tuple[Path, Path]) -> None:
    init, mods = fake_lmod
    argv = lmod.kernel_argv(["echo", "kernel ran"], ["bad/1"], init=str(init), use=[str(mods)])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and proc.stdout == ""
    assert 'unknown:\n"bad/1"' in proc.stderr
    assert "hubstock: module load bad/1 failed, see the Lmod message above" in proc.stderr


# --- the load's output --------------------------------------------------------------------------

RESULT = "\0HUBSTOCK-LMOD-RESULT\0"


def test_parse_load_output() -> None:
    out = (
        "Lmod Warning: something\n"
        + RESULT
        + "R/4.2:python/3.11\0/m/R/4.2.lua:/m/python/3.11.lua\0"
        + "PATH=/s/R/bin:/usr/bin:/bin\0BASH_FUNC_module%%=() {  eval x\n}\0X=a=b\0EMPTY=\0"
        + "PWD=/here\0SHLVL=1\0_=/usr/bin/env\0"
    )
    messages, names, files, environ = lmod.parse_load_output(out)
    assert messages == "Lmod Warning: something\n"
    assert names == ["R/4.2", "python/3.11"]
    assert files == ["/m/R/4.2.lua", "/m/python/3.11.lua"]
    assert environ == {
        "PATH": "/s/R/bin:/usr/bin:/bin",
        "BASH_FUNC_module%%": "() {  eval x\n}",
        "X": "a=b",
        "EMPTY": "",
    }


def test_parse_load_output_of_nothing_loaded() -> None:
    assert lmod.parse_load_output(RESULT + "\0\0PATH=/usr/bin\0") == ("", [], [], {"PATH": "/usr/bin"})


def test_parse_load_output_without_a_result() -> None:
    assert lmod.parse_load_output("Lmod has detected the following error: x\n") is None


LMOD_UNKNOWN = """\
Lmod has detected the following error: The following module(s) are unknown:
"nosuch/1.0"

Please check the spelling or version number. Also try "module spider ..."
It is also possible your cache file is out-of-date; it may help to try:
  $ module --ignore_cache load "nosuch/1.0"
"""


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (LMOD_UNKNOWN, 'Lmod: The following module(s) are unknown: "nosuch/1.0"'),
        ("\x1b[1;31mLmod has detected the following error: \x1b[0m Bad   thing.\n", "Lmod: Bad thing"),
        (
            "\n\nbash: line 1: /x: No such file or directory\nmore\n",
            "bash: line 1: /x: No such file or directory",
        ),
        ("", ""),
    ],
)
def test_lmod_message_is_one_line(output: str, message: str) -> None:
    assert lmod.lmod_message(output) == message


def test_lmod_message_is_cut() -> None:
    message = lmod.lmod_message("Lmod has detected the following error: " + "word " * 200)
    assert len(message) == 300 and message.endswith("...")


def test_match_requested() -> None:
    loaded = ["gcc/12", "R/4.2", "python/3.11", "zlib/1"]
    assert lmod.match_requested(["R", "python/3.11", "zlib/default"], loaded) == {
        "R/4.2": "R",
        "python/3.11": "python/3.11",
        "zlib/1": "zlib/default",
    }


def test_load_argv_passes_names_as_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    argv = lmod.load_argv(["R/4.2"], init="/i/bash", use=["/m"], base_env={"MODULEPATH": "/x", "PATH": "/p"})
    assert argv[:6] == ["env", "-i", "--", "PATH=/p", "HOME=/home/someone", "MODULEPATH=/x"]
    assert argv[6:10] == ["/bin/bash", "--noprofile", "--norc", "-c"]
    assert argv[11:] == ["hubstock-lmod", "/i/bash", "1", "/m", "R/4.2"]
    assert "R/4.2" not in argv[10]
    with pytest.raises(ValueError):
        lmod.load_argv([], init="/i", base_env={"A=B": "c"})


def test_load_through_a_stand_in_lmod(fake_lmod: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    init, mods = fake_lmod
    monkeypatch.setenv("HUBSTOCK_TEST_LEAK", "1")
    loaded = lmod.load(["x"], init=init, use=[str(mods)], base_env={"SITE": "yes"})
    sha = {n: hashlib.sha256((mods / f"{n}.lua").read_bytes()).hexdigest() for n in ("dep/1", "x/1")}
    assert loaded.modules == [
        lmod.ResolvedModule("dep/1", "dep/1", f"{mods}/dep/1.lua", sha["dep/1"]),
        lmod.ResolvedModule("x", "x/1", f"{mods}/x/1.lua", sha["x/1"]),
    ]
    env = loaded.environ
    assert env["FAKE_LOADED"] == "yes" and env["SITE"] == "yes" and env["PATH"] == "/usr/bin:/bin"
    assert "HUBSTOCK_TEST_LEAK" not in env and "PWD" not in env and "_" not in env
    assert lmod.which("env", loaded) in ("/usr/bin/env", "/bin/env")
    assert lmod.which("no-such-command-here", loaded) is None


def test_load_failure_through_a_stand_in_lmod(fake_lmod: tuple[Path, Path]) -> None:
    init, mods = fake_lmod
    with pytest.raises(ModuleError) as info:
        lmod.load(["x/1", "bad/1"], init=init, use=[str(mods)])
    assert str(info.value) == (
        'module load x/1 bad/1 failed: Lmod: The following module(s) are unknown: "bad/1"; '
        "check the module name with `module avail` or [modules] use in hubstock.toml."
    )
    assert "Please check the spelling" in info.value.detail


def test_load_with_an_init_that_is_not_lmods(tmp_path: Path) -> None:
    init = tmp_path / "init"
    init.write_text("true\n")
    with pytest.raises(ModuleError, match=rf"sourcing {init} defined no module command, so it is not Lmod"):
        lmod.load(["R"], init=init)


def test_load_of_a_missing_module_directory(tmp_path: Path) -> None:
    with pytest.raises(ModuleError, match=rf"the module directory {tmp_path}/none does not exist"):
        lmod.load(["R"], init=tmp_path, use=[str(tmp_path / "none")])


# --- finding Lmod -------------------------------------------------------------------------------


def test_find_init_configured(tmp_path: Path) -> None:
    init = tmp_path / "bash"
    init.write_text("")
    assert lmod.find_init(str(init)) == init
    with pytest.raises(
        ModuleError, match=rf"Lmod's init {tmp_path}/nope \(\[modules\] init in hubstock.toml\)"
    ):
        lmod.find_init(str(tmp_path / "nope"))


def test_find_init_from_lmod_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "bash").write_text("")
    monkeypatch.setenv("LMOD_PKG", str(tmp_path))
    assert lmod.find_init() == tmp_path / "init" / "bash"


def test_find_init_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMOD_PKG", raising=False)
    monkeypatch.setattr(lmod, "DEBIAN_INIT", str(tmp_path / "no" / "bash"))
    monkeypatch.setattr(lmod, "_INIT_GLOBS", (str(tmp_path / "*" / "init" / "bash"),))
    with pytest.raises(ModuleError) as info:
        lmod.find_init()
    assert str(info.value) == (
        "Lmod is not installed here (no init/bash found): install Debian's lmod (apt-get install lmod) "
        "or set [modules] init in hubstock.toml."
    )


# --- the real Lmod ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.integration
def test_load_python_and_r(lmod_tree) -> None:
    init, tree = lmod_tree
    t0 = time.perf_counter()
    loaded = lmod.load([tree.python_module, "R"], init=init, use=[str(tree.modulepath)])
    took = time.perf_counter() - t0
    assert loaded.modules == [
        lmod.ResolvedModule(
            tree.python_module,
            tree.python_module,
            str(tree.python_modulefile),
            _sha256(tree.python_modulefile),
        ),
        lmod.ResolvedModule("R", tree.r_module, str(tree.r_modulefile), _sha256(tree.r_modulefile)),
    ]
    assert loaded.environ["LOADEDMODULES"] == f"{tree.python_module}:{tree.r_module}"
    assert lmod.which("R", loaded) == str(tree.r_bin / "R")
    assert lmod.which("Rscript", loaded) == str(tree.r_bin / "Rscript")
    assert lmod.which("python3", loaded) == str(tree.python_bin / "python3")
    assert loaded.environ["PATH"].endswith(":/usr/bin:/bin")
    print(f"\nmodule load of two modules took {took:.2f} s")  # printed, never asserted


@pytest.mark.integration
def test_resolve(lmod_tree) -> None:
    init, tree = lmod_tree
    (r,) = lmod.resolve(["R"], init=init, use=[str(tree.modulepath)])
    assert (r.name, r.full_name, r.path, r.sha256) == (
        "R",
        tree.r_module,
        str(tree.r_modulefile),
        _sha256(tree.r_modulefile),
    )


@pytest.mark.integration
def test_load_with_modulepath_in_the_base_environment(lmod_tree) -> None:
    init, tree = lmod_tree
    loaded = lmod.load([tree.r_module], init=init, base_env={"MODULEPATH": str(tree.modulepath)})
    assert [m.full_name for m in loaded.modules] == [tree.r_module]


@pytest.mark.integration
def test_unknown_module_is_one_sentence(lmod_tree) -> None:
    init, tree = lmod_tree
    with pytest.raises(ModuleError) as info:
        lmod.load([tree.python_module, "nosuch/1.0"], init=init, use=[str(tree.modulepath)])
    assert str(info.value) == (
        f"module load {tree.python_module} nosuch/1.0 failed: Lmod: The following module(s) are unknown: "
        '"nosuch/1.0"; check the module name with `module avail` or [modules] use in hubstock.toml.'
    )
    assert "Please check the spelling" in info.value.detail


@pytest.mark.integration
def test_module_wrapper_with_the_real_lmod(lmod_tree) -> None:
    init, tree = lmod_tree
    code = "import shutil, sys; print(sys.argv[1:]); print(shutil.which('R'))"
    argv = lmod.kernel_argv(
        ["python3", "-c", code, "a b", "{connection_file}"],
        [tree.python_module, tree.r_module],
        init=str(init),
        use=[str(tree.modulepath)],
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(["a b", "{connection_file}"]), str(tree.r_bin / "R")]

    argv = lmod.kernel_argv(["true"], ["nosuch/1.0"], init=str(init), use=[str(tree.modulepath)])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert 'The following module(s) are unknown: "nosuch/1.0"' in " ".join(proc.stderr.split())
    assert "hubstock: module load nosuch/1.0 failed" in proc.stderr


@pytest.mark.integration
def test_module_wrapper_as_another_user(lmod_tree, as_nobody: list[str]) -> None:
    """Jobs run as the hub's users: the tree and Lmod must work for them too."""
    init, tree = lmod_tree
    argv = lmod.kernel_argv(
        ["Rscript", "-e", "cat(1+1)"], [tree.r_module], init=str(init), use=[str(tree.modulepath)]
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    proc = subprocess.run([*as_nobody, *argv], capture_output=True, text=True, env=env, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "2"), proc.stderr


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(int(entry))
    return found


@pytest.mark.integration
def test_r_kernel_through_a_module(lmod_tree, tmp_path: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    init, tree = lmod_tree
    name = "hubstock-test-ir-lmod"  # not "ir": Debian's r-cran-irkernel installs that one
    kdir = tmp_path / "kernels" / name
    kdir.mkdir(parents=True)
    argv = lmod.kernel_argv(IRKERNEL_ARGV, [tree.r_module], init=str(init), use=[str(tree.modulepath)])
    (kdir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "R (Lmod)", "language": "R"}))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    km.connection_file = str(tmp_path / f"kernel-{name}.json")
    env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    t0 = time.perf_counter()
    km.start_kernel(env=env)
    pid = km.provisioner.pid if km.provisioner else None
    kc = km.client()
    kc.start_channels()
    out: list[str] = []
    try:
        kc.wait_for_ready(timeout=90)
        ready = time.perf_counter() - t0
        # the kernel is R itself (bash exec'd it), found through the module's PATH
        assert pid and os.path.realpath(f"/proc/{pid}/exe").startswith("/usr/lib/R/")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        path = next(e for e in environ if e.startswith(b"PATH=")).decode()
        assert path.startswith(f"PATH={tree.r_bin}:")
        reply = kc.execute_interactive(
            "cat(1+1)",
            output_hook=lambda msg: (
                out.append(msg["content"]["text"]) if msg["msg_type"] == "stream" else None
            ),
            timeout=60,
        )
        assert reply["content"]["status"] == "ok"
        assert "".join(out) == "2"
        print(f"R kernel through module {tree.r_module}: start to ready {ready:.2f} s")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert not km.is_alive()
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert _processes_mentioning(km.connection_file) == []
