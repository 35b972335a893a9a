"""``hubstock doctor``'s checks on the hub node, one by one, with fakes: no scheduler, no hub.

Each check is a function of what it reads (a folder, a file's mode, a scheduler's output); these
tests give it that directly. The compute node's side is in ``tests/test_doctor_probe.py``;
``tests/test_doctor_hub.py`` runs the whole command on the Slurm rig with a real hub.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from tests.helpers import need_root
from tests.test_doctor_probe import write_fake_lmod

from hubstock.hub.doctor import DoctorOptions, run_doctor
from hubstock.hub.doctor.disk import check_space, space_check
from hubstock.hub.doctor.envs import (
    GenerationEnvs,
    InterpreterUse,
    LmodAt,
    ModuleSet,
    check_interpreters_here,
    check_modules_here,
    lmod_location,
    probe_args,
    read_generation_envs,
)
from hubstock.hub.doctor.hubcheck import (
    HubProbe,
    check_hub_running,
    check_login,
    check_port,
    check_secrets,
    check_state_dir,
    check_tls,
)
from hubstock.hub.doctor.model import Check, exit_code, fail, format_check, ok
from hubstock.hub.doctor.rootcheck import (
    check_generation,
    check_lock,
    check_root,
    compare_versions,
)
from hubstock.hub.doctor.scheduler import (
    check_scheduler,
    compare_queue,
    gres_gpus,
    parse_pbs_blocks,
    parse_slurm_records,
    pbs_limits,
    pbs_size,
    slurm_limits,
    slurm_time,
)
from hubstock.limits import Queue
from hubstock.lmod import kernel_argv
from hubstock.site import HubSettings, load_site
from hubstock.store.builds import mark_complete, record_damage, write_provenance
from hubstock.store.generations import Generation, switch_current
from hubstock.store.hubinfo import installed_version, major_minor
from hubstock.store.records import (
    BuildDamage,
    BuildProvenance,
    GenerationManifest,
    Interpreter,
    KernelEntry,
    ManifestBuild,
    ModuleRef,
)
from hubstock.store.root import Root
from hubstock.store.rootmark import write_marker
from hubstock.store.scan import scan_root, user_writable_paths

REPO = Path(__file__).resolve().parent.parent


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


# ---------------------------------------------------------------------------------------------- model


def test_a_check_is_one_line_with_its_fix_and_any_fail_fails_the_command():
    line = format_check(fail("queue.gpu", "no partition 'gpu'", "create it."))
    assert line.startswith("FAIL  queue.gpu") and line.endswith("no partition 'gpu' Fix: create it.")
    assert "\n" not in line
    assert "Fix" not in format_check(ok("root", "fine"))
    assert exit_code([ok("a", "x")]) == 0 and exit_code([ok("a", "x"), fail("b", "y", "z.")]) == 1
    assert set(Check.model_fields) == {"name", "status", "detail", "fix"}


# ---------------------------------------------------------------------------------------------- the root


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "envs" / "python" / "b1" / "bin").mkdir(parents=True)
    (root / "envs" / "python" / "b1" / "bin" / "python").write_text("")
    (root / "pkgs" / "x").mkdir(parents=True)
    (root / "pkgs" / "x" / "lock").write_text("")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (root / "pkgs").chmod(0o700)
    (root / "pkgs" / "x" / "lock").chmod(0o666)  # out of reach: pkgs/ is the admin's alone
    write_marker(root)
    return root


def test_the_scan_finds_what_users_may_change_and_nothing_out_of_their_reach(tmp_path):
    root = _tree(tmp_path)
    assert user_writable_paths(root) == []
    (root / "envs" / "python").chmod(0o777)
    (root / "envs" / "python" / "b1" / "bin" / "python").chmod(0o664)
    scan = scan_root(root)
    assert {p.name for p, _ in scan.writable} == {"python"} and scan.writable_count == 2
    checks = check_root(Root(root))
    assert statuses(checks) == {"root": "ok", "root.owner": "ok", "root.writable": "FAIL"}
    assert "chmod -R go-w" in checks[2].fix


def test_a_group_writable_path_is_fine_when_the_group_is_the_roots_shared_one(tmp_path):
    root = _tree(tmp_path)
    (root / "sessions").mkdir()
    root.chmod(0o2755)  # the group the hub and the admins share (store.perms)
    (root / "sessions").chmod(0o2770)
    assert user_writable_paths(root) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_path_owned_by_someone_else_is_named(tmp_path):
    root = _tree(tmp_path)
    os.chown(root / "envs" / "python" / "b1" / "bin" / "python", 65534, 65534)
    os.chown(root, 0, 0)
    checks = check_root(Root(root))
    assert statuses(checks)["root.owner"] == "FAIL" and "nobody" in checks[1].detail


def test_a_missing_root_fails_with_where_to_set_it(tmp_path):
    (check,) = check_root(Root(tmp_path / "nowhere"))
    assert check.status == "FAIL" and "hubstock.toml" in check.fix


def test_the_lock_is_tried_without_waiting(tmp_path):
    root = Root(tmp_path)
    assert check_lock(root).status == "ok"  # no lock file yet
    root.lock_file.write_text("")
    assert check_lock(root).status == "ok"
    fd = os.open(root.lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = check_lock(root)
    finally:
        os.close(fd)
    assert held.status == "warn" and held.detail.startswith("held by ")
    assert check_lock(root).status == "ok"  # released again


def _published(tmp_path: Path, complete: bool = True) -> Root:
    root = Root(tmp_path / "root")
    root.ensure()
    server, py = root.build("server", "s1"), root.build("python", "p1")
    for prefix, bid in ((server, "s1"), (py, "p1")):
        (prefix / "bin").mkdir(parents=True)
        if complete or bid == "p1":
            mark_complete(prefix, bid)
    (server / "bin" / "jupyterhub-singleuser").write_text("#!/bin/sh\n")
    gen = Generation("0001", root.generation("0001"))
    (gen.kernel_dir("python-stock")).mkdir(parents=True)
    (gen.kernel_dir("python-stock") / "kernel.json").write_text("{}")
    gen.write_manifest(
        GenerationManifest(
            generation="0001",
            digest="d" * 64,
            created="2026-11-28T10:00:00+00:00",
            by="admin",
            default_kernel="python-stock",
            server=ManifestBuild(env="server", build="s1", prefix=str(server)),
            builds={"python": ManifestBuild(env="python", build="p1", prefix=str(py))},
            kernels=[KernelEntry(name="python-stock", display_name="Py", env="python", build="p1")],
        )
    )
    switch_current(root, "0001")
    return root


def test_the_current_generation_must_be_whole(tmp_path):
    check, gen, manifest = check_generation(_published(tmp_path))
    assert check.status == "ok" and gen.name == "0001" and manifest.server.build == "s1"
    check, _, _ = check_generation(_published(tmp_path / "broken", complete=False))
    assert check.status == "FAIL" and "server build server/s1 is missing or incomplete" in check.detail
    root = _published(tmp_path / "damaged")
    record_damage(
        root, BuildDamage(env="python", build_id="p1", checked="now", problems=["M lib/x.py"], count=1)
    )
    check, _, _ = check_generation(root)
    assert check.status == "FAIL" and "found build python/p1 damaged" in check.detail
    assert "hubstock verify --repair" in check.fix
    check, gen, _ = check_generation(Root(tmp_path / "empty"))
    assert check.status == "FAIL" and gen is None and "hubstock publish" in check.fix


def test_versions_compare_by_major_and_minor(tmp_path):
    prefix = tmp_path / "server"
    info = prefix / "lib" / "python3.12" / "site-packages" / "jupyterhub-5.2.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: jupyterhub\nVersion: 5.2.1\n")
    (prefix / "conda-meta").mkdir()
    (prefix / "conda-meta" / "batchspawner-1.3.0-pyhd8ed1ab_0.json").write_text(
        json.dumps({"name": "batchspawner", "version": "1.3.0"})
    )
    assert installed_version(prefix, "jupyterhub") == "5.2.1"
    assert installed_version(prefix, "batchspawner") == "1.3.0"
    assert installed_version(prefix, "jupyterlab") is None
    assert major_minor("5.2.1") == "5.2" and major_minor("6.0.0rc1") == "6.0"
    assert compare_versions("jupyterhub", "5.2.4", "5.2.1", "server").status == "ok"
    bad = compare_versions("jupyterhub", "6.1.1", "5.2.1", "server")
    assert bad.status == "FAIL" and "6.1.*" in bad.fix and "envs/server/environment.yml" in bad.fix
    assert compare_versions("batchspawner", "1.3.0", None, "server").status == "FAIL"


# ---------------------------------------------------------------------- venv interpreters and Lmod modules


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _module_ref(name: str) -> ModuleRef:
    return ModuleRef(name=name, full_name=name, path=f"/sw/modules/{name}.lua", sha256="c" * 64)


def _published_envs(tmp_path: Path, interp: Path, at: LmodAt, old_at: LmodAt | None = None) -> Root:
    """A generation with a conda server, a venv on ``interp`` through module python/3.11, and an
    R module env whose old build is still published under a pinned name; its kernels find Lmod
    ``at`` (the old build's kernel ``old_at``, as published from another checkout)."""
    root = Root(tmp_path / "root")
    root.ensure()
    ident = Interpreter(path=str(interp), version="3.11.2", sha256=_sha(interp), module="python/3.11")
    builds = {
        ("server", "s1"): dict(kind="conda"),
        ("python", "p1"): dict(kind="venv", interpreter=ident, modules=[_module_ref("python/3.11")]),
        ("r", "r1"): dict(kind="module", modules=[_module_ref("R/4.2")]),
        ("r", "r0"): dict(kind="module", modules=[_module_ref("R/4.2")]),
    }
    for (env, bid), kw in builds.items():
        prefix = root.build(env, bid)
        (prefix / "bin").mkdir(parents=True)
        prov = BuildProvenance(
            build_id=bid, env=env, platform="linux-64", created="2026-12-01T10:00:00+00:00", builder="t", **kw
        )
        write_provenance(prefix, prov)
        mark_complete(prefix, bid)
    (root.build("server", "s1") / "bin" / "jupyterhub-singleuser").write_text("#!/bin/sh\n")
    gen = Generation("0001", root.generation("0001"))
    kernels = {  # name: (env, build, the template's own modules)
        "python-stock": ("python", "p1", None),
        "r": ("r", "r1", None),
        "r-r0000000": ("r", "r0", None),
        "r-gcc": ("r", "r1", ["gcc/12", "R/4.2"]),
    }
    for name, (env, bid, own) in kernels.items():
        hub = {"env": env, "build": bid, **({"modules": own} if own else {})}
        where = old_at if old_at and bid == "r0" else at
        mods = dict.fromkeys([*(m.full_name for m in builds[(env, bid)]["modules"]), *(own or [])])
        argv = kernel_argv(["kernel", "{connection_file}"], list(mods), init=where.init, use=where.use)
        gen.kernel_dir(name).mkdir(parents=True)
        (gen.kernel_dir(name) / "kernel.json").write_text(
            json.dumps({"argv": argv, "metadata": {"hubstock": hub}})
        )
    gen.write_manifest(
        GenerationManifest(
            generation="0001", digest="d" * 64, created="2026-12-01T10:00:00+00:00", by="admin",
            default_kernel="python-stock",
            server=ManifestBuild(env="server", build="s1", prefix=str(root.build("server", "s1"))),
            kernels=[KernelEntry(name=n, display_name=n, env=e, build=b) for n, (e, b, _) in kernels.items()],
        )
    )  # fmt: skip
    switch_current(root, "0001")
    return root


def test_the_generations_interpreters_and_module_sets_come_from_the_builds_records(tmp_path):
    interp = tmp_path / "python3.11"
    interp.write_bytes(b"python")
    at, old = (
        LmodAt("/opt/lmod/init/bash", ("/sw/modules",)),
        LmodAt("/opt/lmod/init/bash", ("/old/modules",)),
    )
    root = _published_envs(tmp_path, interp, at, old)
    _, gen, manifest = check_generation(root)
    envs = read_generation_envs(root, gen, manifest)
    assert envs.interpreters == (  # the conda server has none; python-stock's kernel says where Lmod is
        InterpreterUse(
            "python", "p1", str(interp), _sha(interp), "3.11.2", "python/3.11", ("python/3.11",), at
        ),
    )
    assert envs.module_sets == (  # a build's modules first, then the kernel.json's own, each once
        ModuleSet(("python/3.11",), ("python-stock",), at),
        ModuleSet(("R/4.2",), ("r",), at),
        ModuleSet(("R/4.2",), ("r-r0000000",), old),  # the same modules, but another tree
        ModuleSet(("R/4.2", "gcc/12"), ("r-gcc",), at),
    )
    assert envs.problems == ()
    (gen.kernel_dir("r-gcc") / "kernel.json").chmod(0o644)
    (gen.kernel_dir("r-gcc") / "kernel.json").write_text("{not json")
    envs = read_generation_envs(root, gen, manifest)
    assert len(envs.module_sets) == 3 and "r-gcc/kernel.json cannot be read" in envs.problems[0]


# what hubstock publish wrote for a kernel of module R/4.2 that, when the load fails, starts a kernel saying why
PUBLISHED_R = [
    "/bin/bash", "--noprofile", "--norc", "-c",
    "source /usr/share/lmod/lmod/init/bash; module use '/srv/my site/modules' /sw/modules; module purge; "
    "module load R/4.2 || { why=$( (module load R/4.2) 2>&1 >/dev/null | tr -s ' \\n' ' ' | sed -e "
    "'s/^ *Lmod has detected the following error: *//' -e 's/ *$//' ); echo 'hubstock: module load R/4.2 "
    "failed; see above.' >&2; exec /root/envs/server/s1/bin/python '{resource_dir}/unavailable.py' R "
    '"This kernel cannot start on ${HOSTNAME:-this node}: module load R/4.2 failed (${why:-no message})." '
    '"$@"; }; exec "$@"',
    "hubstock-kernel", "R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}",
]  # fmt: skip


def test_where_a_kernel_finds_lmod_is_read_from_the_head_of_its_argv():
    assert lmod_location(PUBLISHED_R) == LmodAt(
        "/usr/share/lmod/lmod/init/bash", ("/srv/my site/modules", "/sw/modules")
    )
    plain = kernel_argv(["R", "{connection_file}"], ["R/4.2"], init="/opt/lmod x/init/bash")
    assert lmod_location(plain) == LmodAt("/opt/lmod x/init/bash", ())
    for argv in (
        ["R", "--slave", "{connection_file}"],  # loads nothing
        ["/bin/bash", "--noprofile", "--norc", "-c", 'module load R; exec "$@"'],  # not hubstock's
        ["/bin/bash", "--noprofile", "--norc", "-c", "source '/unbalanced; module purge; exec R"],
        "/bin/bash -c x",
    ):
        assert lmod_location(argv) is None, argv


def test_a_generation_of_conda_builds_needs_nothing_of_the_kind(tmp_path):
    root = _published(tmp_path)
    _, gen, manifest = check_generation(root)
    envs = read_generation_envs(root, gen, manifest)
    assert envs == GenerationEnvs()
    assert check_interpreters_here(envs) == [] and check_modules_here(envs, None, []) == []
    assert probe_args(envs, None, []) == {}


def test_on_the_hub_node_a_changed_or_missing_interpreter_is_a_warning(tmp_path):
    interp = tmp_path / "python3.11"
    interp.write_bytes(b"python")
    use = InterpreterUse("python", "p1abcdef99", str(interp), _sha(interp), "3.11.2")
    (check,) = check_interpreters_here(GenerationEnvs(interpreters=(use,)))
    assert check.status == "ok" and str(interp) in check.detail
    interp.write_bytes(b"python, rebuilt by the site")
    (check,) = check_interpreters_here(GenerationEnvs(interpreters=(use,)))
    assert check.name == "generation.interpreter" and check.status == "warn"
    assert f"the interpreter {interp} of env 'python' build p1abcdef differs on the hub node" in check.detail
    assert f"sha256 {_sha(interp)[:12]}..., not {use.sha256[:12]}..." in check.detail
    assert check.fix == "rebuild with `hubstock build python` and publish, or restore the interpreter."
    interp.unlink()
    (check,) = check_interpreters_here(GenerationEnvs(interpreters=(use,)))
    assert check.status == "warn" and "is missing on the hub node" in check.detail


def test_on_the_hub_node_modules_are_loaded_when_it_has_lmod(tmp_path):
    init, mods, _ = write_fake_lmod(tmp_path)
    envs = GenerationEnvs(module_sets=(ModuleSet(("python/3.11",), ("python-stock",)),))
    (check,) = check_modules_here(envs, str(init), [str(mods)])
    assert (
        check.status == "ok"
        and check.detail == "every kernel's modules load here: python/3.11 (python-stock)"
    )
    envs = GenerationEnvs(module_sets=(ModuleSet(("R/4.2",), ("r",)),))
    (check,) = check_modules_here(envs, str(init), [str(mods)])
    assert check.name == "generation.modules" and check.status == "warn"
    assert check.detail.startswith(
        "kernel 'r': module load R/4.2 fails here (Lmod: The following module(s) are unknown: \"R/4.2\")"
    )
    (check,) = check_modules_here(envs, str(tmp_path / "no-lmod" / "bash"), [str(mods)])
    assert check.status == "ok" and check.detail.startswith("not checked here: no Lmod on the hub node")
    at = LmodAt(str(init), (str(mods),))
    envs = GenerationEnvs(
        module_sets=(ModuleSet(("R/4.2",), ("r",)), ModuleSet(("python/3.11",), ("py",), at))
    )
    (check,) = check_modules_here(envs, str(tmp_path / "no-lmod" / "bash"), [])  # py's own Lmod is there
    assert check.status == "ok" and check.detail == "every kernel's modules load here: python/3.11 (py)"
    assert probe_args(envs, str(init), ["/site/modules"]) == {
        "module_sets": [
            {"modules": ["R/4.2"]},
            {"modules": ["python/3.11"], "init": str(init), "use": [str(mods)]},
        ],
        "lmod": {"init": str(init), "use": ["/site/modules"]},
    }


def test_doctor_reads_them_from_the_published_generation(tmp_path):
    """The kernels' own Lmod (as published), not the site's [modules] as doctor reads it."""
    init, mods, interp = write_fake_lmod(tmp_path / "lmod")
    link = tmp_path / "lmod" / "sw" / "python" / "3.11" / "bin" / "python3"
    root = _published_envs(tmp_path, link, LmodAt(str(init), (str(mods),)))
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "hubstock.toml").write_text(
        f'root = "{root.path}"\n[hub]\nstate_dir = "{tmp_path / "state"}"\nhub_port = 1\n'
        f'[spawner]\nscheduler = "local"\n[modules]\ninit = "{tmp_path / "nowhere"}"\nuse = ["modules"]\n'
    )
    checks = {c.name: c for c in run_doctor(load_site(site_dir), DoctorOptions(job=False))}
    assert checks["generation.interpreter"].status == "ok"
    modules = checks["generation.modules"]  # the stand-in Lmod has python/3.11 only
    assert (
        modules.status == "warn"
        and "kernels 'r', 'r-r0000000': module load R/4.2 fails here" in modules.detail
    )
    interp.write_bytes(b"another python")
    checks = {c.name: c for c in run_doctor(load_site(site_dir), DoctorOptions(job=False))}
    assert checks["generation.interpreter"].status == "warn" and checks["generation"].status == "ok"


# ---------------------------------------------------------------------------------------------- the hub


def test_a_port_is_free_ours_or_someone_elses(tmp_path):
    def never() -> bool:
        return False

    assert check_port("port", "ip", "127.0.0.1", 8000, never, tmp_path, bind=lambda i, p: 0).status == "ok"
    ours = check_port(
        "port", "ip", "127.0.0.1", 8000, lambda: True, tmp_path, bind=lambda i, p: errno.EADDRINUSE
    )
    assert ours.status == "ok" and "this hub" in ours.detail
    (tmp_path / "jupyterhub.pid").write_text(f"{os.getpid()}\n")  # our pid file names the listener
    mine = check_port(
        "hub_port", "hub_ip", "127.0.0.1", 8081, never, tmp_path,
        bind=lambda i, p: errno.EADDRINUSE, owner=lambda p: os.getpid(),
    )  # fmt: skip
    assert mine.status == "ok"
    other = check_port(
        "hub_port", "hub_ip", "127.0.0.1", 8081, never, tmp_path / "x",
        bind=lambda i, p: errno.EADDRINUSE, owner=lambda p: 1,
    )  # fmt: skip
    assert other.status == "FAIL" and "[hub] hub_port" in other.fix and "pid 1" in other.detail
    nowhere = check_port("port", "ip", "10.9.8.7", 80, never, tmp_path, bind=lambda i, p: errno.EADDRNOTAVAIL)
    assert nowhere.status == "FAIL" and "[hub] ip" in nowhere.fix


def test_a_real_listener_that_is_not_the_hub_is_named(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        check = check_port("port", "ip", "127.0.0.1", port, lambda: False, tmp_path)
    assert check.status == "FAIL" and f"pid {os.getpid()}" in check.detail


def test_the_state_folder_and_the_secrets_are_private(tmp_path):
    state = tmp_path / "state"
    assert check_state_dir(state).status == "warn"
    state.mkdir(mode=0o700)
    state.chmod(0o700)
    assert check_state_dir(state).status == "ok"
    state.chmod(0o755)
    assert check_state_dir(state).status == "FAIL" and "chmod 700" in check_state_dir(state).fix
    assert check_secrets(state, demo=False).status == "ok"  # none yet
    for name in ("jupyterhub_cookie_secret", "proxy_auth_token"):
        (state / name).write_text("s\n")
        (state / name).chmod(0o600)
    assert check_secrets(state, demo=False).status == "ok"
    (state / "jupyterhub_cookie_secret").chmod(0o644)
    bad = check_secrets(state, demo=False)
    assert (
        bad.status == "FAIL"
        and "jupyterhub_cookie_secret" in bad.detail
        and "proxy_auth_token" not in bad.detail
    )
    assert bad.fix == f"run `chmod 600 {state / 'jupyterhub_cookie_secret'}`."


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_the_tls_key_is_private_and_the_certificates(tmp_path):
    pytest.importorskip("ssl")
    for name, days in (("a", "60"), ("b", "2")):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                 "-days", days, "-subj", "/CN=127.0.0.1", cwd=tmp_path)  # fmt: skip
        (tmp_path / f"{name}.key").chmod(0o600)

    def hub(cert: str, key: str) -> HubSettings:
        return HubSettings(ssl_cert=tmp_path / cert, ssl_key=tmp_path / key)

    assert check_tls(HubSettings()).status == "ok"
    good = check_tls(hub("a.pem", "a.key"))
    assert good.status == "ok" and "matches" in good.detail and "more days" in good.detail
    soon = check_tls(hub("b.pem", "b.key"))
    assert soon.status == "warn" and "expires in" in soon.detail
    mismatch = check_tls(hub("a.pem", "b.key"))
    assert mismatch.status == "FAIL" and "does not match" in mismatch.detail
    (tmp_path / "a.key").chmod(0o640)
    assert check_tls(hub("a.pem", "a.key")).status == "FAIL"
    assert check_tls(HubSettings(ssl_cert=tmp_path / "a.pem")).status == "FAIL"


def test_the_pam_service_and_the_allowed_group(tmp_path):
    (tmp_path / "pam.d").mkdir()
    hub = HubSettings(allowed_group="no-such-group-hubstock")
    checks = check_login(hub, pam_dirs=(tmp_path / "pam.d",))
    assert statuses(checks) == {"hub.pam": "FAIL", "hub.allowed_group": "FAIL"}
    assert "groupadd no-such-group-hubstock" in checks[1].fix
    (tmp_path / "pam.d" / "login").write_text("@include common-auth\n")
    checks = check_login(HubSettings(allowed_group="root"), pam_dirs=(tmp_path / "pam.d",))
    assert statuses(checks) == {"hub.pam": "ok", "hub.allowed_group": "ok"}


def test_a_hub_that_is_not_running_is_a_warning():
    assert check_hub_running(HubProbe("http://127.0.0.1:1/hub", True, "6.1.1", "")).status == "ok"
    down = check_hub_running(HubProbe("http://127.0.0.1:1/hub", False, None, "Connection refused"))
    assert down.status == "warn" and "not running" in down.detail


# ---------------------------------------------------------------------------------------------- the scheduler

SCONTROL_PARTITIONS = """\
PartitionName=debug AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] State=UP TotalCPUs=8 DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED
PartitionName=short Default=NO MaxTime=02:00:00 MaxCPUsPerNode=2 Nodes=n[1-2] State=UP MaxMemPerNode=2048
PartitionName=gpu Default=NO MaxTime=1-00:00:00 MaxCPUsPerNode=UNLIMITED Nodes=g1 State=UP MaxMemPerNode=UNLIMITED
PartitionName=old Default=NO MaxTime=UNLIMITED Nodes=n1 State=DOWN
"""
SCONTROL_NODES = """\
NodeName=n1 Arch=x86_64 CPUTot=4 Gres=(null) OS=Linux 6.1.0-13-amd64 #1 SMP PREEMPT_DYNAMIC Debian RealMemory=15000 State=IDLE Partitions=debug,short,old
NodeName=n2 Arch=x86_64 CPUTot=4 Gres=(null) RealMemory=15000 State=DOWN* Partitions=debug,short
NodeName=g1 Arch=x86_64 CPUTot=16 Gres=gpu:a100:2(S:0-1) RealMemory=250000 State=MIXED Partitions=gpu
"""


def _queue(name: str, cpus: int = 2, mem: str = "2G", gpus: int = 0, walltime: str = "01:00:00") -> Queue:
    return Queue(name=name, max_cpus=cpus, max_memory=mem, max_gpus=gpus, max_walltime=walltime)


def test_slurm_partitions_and_nodes_are_read():
    assert (
        slurm_time("1-00:00:00") == 86400 and slurm_time("02:00:00") == 7200 and slurm_time("30:00") == 1800
    )
    assert slurm_time("UNLIMITED") is None and slurm_time("90") == 5400
    assert gres_gpus("gpu:a100:2(S:0-1),shard:8") == 2 and gres_gpus("(null)") == 0
    nodes = parse_slurm_records(SCONTROL_NODES)
    assert nodes[0]["OS"].startswith("Linux 6.1.0") and nodes[0]["RealMemory"] == "15000"
    found = slurm_limits(parse_slurm_records(SCONTROL_PARTITIONS), nodes)
    assert found["debug"].cpus == 4 and found["debug"].memory == 15000 and found["debug"].walltime is None
    assert found["short"].cpus == 2 and found["short"].memory == 2048 and found["short"].walltime == 7200
    assert found["gpu"].gpus == 2 and found["gpu"].walltime == 86400
    assert not found["old"].up


def test_a_queue_must_exist_be_up_and_allow_what_the_form_offers():
    found = slurm_limits(parse_slurm_records(SCONTROL_PARTITIONS), parse_slurm_records(SCONTROL_NODES))
    known = sorted(found)
    assert compare_queue(_queue("debug", cpus=4, mem="8G"), found["debug"], "slurm", known).status == "ok"
    missing = compare_queue(_queue("bigmem"), None, "slurm", known)
    assert (
        missing.status == "FAIL"
        and "no partition 'bigmem'" in missing.detail
        and "debug, gpu" in missing.detail
    )
    short = compare_queue(
        _queue("short", cpus=4, mem="4G", walltime="08:00:00"), found["short"], "slurm", known
    )
    assert short.status == "FAIL"
    assert "max_walltime 08:00:00 but partition allows 02:00:00 (MaxTime)" in short.detail
    assert "max_cpus 4 but partition allows 2 (MaxCPUsPerNode)" in short.detail
    assert "max_memory = '2G'" in short.fix and "max_cpus = 2" in short.fix
    assert compare_queue(_queue("gpu", gpus=4), found["gpu"], "slurm", known).status == "FAIL"
    assert compare_queue(_queue("gpu", gpus=2, cpus=16), found["gpu"], "slurm", known).status == "ok"
    down = compare_queue(_queue("old"), found["old"], "slurm", known)
    assert down.status == "FAIL" and "State=UP" in down.fix


QMGR = """\
Queue workq
    queue_type = Execution
    resources_max.walltime = 24:00:00
    resources_max.ncpus = 8
    enabled = True
    started = True

Queue gpuq
    queue_type = Execution
    resources_max.walltime = 04:00:00
    resources_max.mem = 64gb
    resources_max.ngpus = 2
    enabled = True
    started = False
"""
PBSNODES_PRO = """\
vm
     Mom = 198.18.0.1
     state = free
     resources_available.mem = 16331512kb
     resources_available.ncpus = 4
     resources_available.ngpus = 0
"""
QSTAT_QF_TORQUE = """\
Queue:\tdebug
\tqueue_type = Execution
\tenabled = yes
\tstarted = yes

"""
PBSNODES_TORQUE = """\
localhost
    state = free
    np = 2
    status = rectime=1,state=free,ncpus=2,availmem=21694mb,opsys=linux
"""


def test_pbs_queues_and_nodes_are_read():
    assert pbs_size("16331512kb") == 15948 and pbs_size("8gb") == 8192 and pbs_size("1024") == 0
    found = pbs_limits(parse_pbs_blocks(QMGR), parse_pbs_blocks(PBSNODES_PRO))
    assert found["workq"].cpus == 4 and found["workq"].walltime == 86400 and found["workq"].memory == 15948
    assert not found["gpuq"].up
    torque = pbs_limits(parse_pbs_blocks(QSTAT_QF_TORQUE), parse_pbs_blocks(PBSNODES_TORQUE))
    assert torque["debug"].up and torque["debug"].cpus == 2 and torque["debug"].memory == 21694


def test_a_scheduler_that_does_not_answer_fails_once_naming_the_daemon(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "SlurmctldHost=ctl01(10.0.0.1)\nAuthInfo=socket=/run/site/munge.socket\nSlurmdPort=7000\n"
    )
    env = {"SLURM_CONF": str(conf)}
    munge_asked: list[list[str]] = []

    def munge(answer: tuple[int, str, str]):
        def run(cmd: list[str]) -> tuple[int, str, str]:
            munge_asked.append(cmd)
            return answer

        return run

    down = lambda cmd: (1, "", "slurm_load_partitions: Unable to contact slurm controller (connect failure)")  # noqa: E731
    checks = check_scheduler("slurm", (_queue("debug"),), down, env, munge((0, "", "")))
    assert statuses(checks) == {"scheduler": "FAIL"} and "Unable to contact" in checks[0].detail
    assert checks[0].detail.startswith("slurmctld, Slurm's controller on ctl01, is not answering")
    assert "start slurmctld on ctl01" in checks[0].fix
    assert munge_asked[0][-1] == "/run/site/munge.socket"  # munge asked on slurm.conf's socket
    # munged frozen: Slurm's commands time out, and so does munge
    slow = lambda cmd: (124, "", "scontrol show partition -o did not answer within 15 s")  # noqa: E731
    checks = check_scheduler(
        "slurm", (_queue("debug"),), slow, env, munge((124, "", "munge -n did not answer"))
    )
    assert checks[0].detail.startswith(
        "munged, the authentication daemon of Slurm's commands, is not answering"
    )
    assert "systemctl restart munge" in checks[0].fix
    # a credential the controller refuses
    refused = lambda cmd: (1, "", "slurm_load_partitions: Protocol authentication error")  # noqa: E731
    checks = check_scheduler("slurm", (_queue("debug"),), refused, env, munge((0, "", "")))
    assert "refused the hub node's munge credential" in checks[0].detail and "munge.key" in checks[0].fix
    # PBS: the server
    pbs_down = lambda cmd: (2, "", "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)")  # noqa: E731
    checks = check_scheduler("pbs", (_queue("workq"),), pbs_down, {}, munge((0, "", "")))
    assert checks[0].detail.startswith("the PBS server (pbs_server) is not answering")


NODES_DOWN = (
    "NodeName=n1 Arch=x86_64 CPUTot=4 NodeAddr=10.0.0.11 Partitions=debug State=IDLE Reason=(null)\n"
    "NodeName=n2 Arch=x86_64 CPUTot=4 NodeAddr=10.0.0.12 Partitions=debug State=IDLE* Reason=Not responding\n"
    "NodeName=n3 Arch=x86_64 CPUTot=4 NodeAddr=10.0.0.13 Partitions=gpu State=IDLE Reason=(null)\n"
)
PARTS_DOWN = "PartitionName=debug State=UP MaxTime=UNLIMITED Nodes=n[1-2]\nPartitionName=gpu State=UP MaxTime=UNLIMITED Nodes=n3\n"


def test_the_node_daemons_of_the_sites_queues_are_named_when_down(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("SlurmdPort=7000\n")

    def slurm(cmd: list[str]) -> tuple[int, str, str]:
        return 0, PARTS_DOWN if cmd[2] == "partition" else NODES_DOWN, ""

    knocked: list[tuple[str, int]] = []

    def knock(host: str, port: int) -> bool | None:
        knocked.append((host, port))
        return host == "10.0.0.13"  # nothing listens there

    queues = (_queue("debug"), _queue("gpu"))
    checks = check_scheduler("slurm", queues, slurm, {"SLURM_CONF": str(conf)}, slurm, knock)
    nodes = next(c for c in checks if c.name == "scheduler.nodes")
    assert nodes.status == "FAIL", nodes  # gpu has no node whose slurmd runs
    assert "slurmd on node n2 is not running (State=IDLE*, Reason=Not responding)" in nodes.detail
    assert "slurmd on node n3 is not running (nothing listens on 10.0.0.13:7000)" in nodes.detail
    assert (
        nodes.detail.endswith("no node of queue(s) gpu can run a server")
        and "systemctl start slurmd" in nodes.fix
    )
    assert ("10.0.0.11", 7000) in knocked and not any(h == "10.0.0.12" for h, _ in knocked)
    only_debug = check_scheduler("slurm", (_queue("debug"),), slurm, {"SLURM_CONF": str(conf)}, slurm, knock)
    assert next(c for c in only_debug if c.name == "scheduler.nodes").status == "warn"  # n1 still serves

    def pbs(cmd: list[str]) -> tuple[int, str, str]:
        nodes = "vm\n     Mom = 198.18.0.1\n     Port = 15002\n     state = down\n     comment = node down: communication closed\n"
        return 0, {"qstat": "Server ...", "qmgr": QMGR, "pbsnodes": nodes}[cmd[0]], ""

    checks = check_scheduler("pbs", (_queue("workq"),), pbs, {}, pbs, knock)
    nodes = next(c for c in checks if c.name == "scheduler.nodes")
    assert (
        nodes.status == "FAIL"
        and "pbs_mom on node vm is not running (state = down, comment = node down" in nodes.detail
    )

    def pbs(cmd: list[str]) -> tuple[int, str, str]:
        return 0, {"qstat": "Server ...", "qmgr": QMGR, "pbsnodes": PBSNODES_PRO}[cmd[0]], ""

    checks = check_scheduler("pbs", (_queue("workq"), _queue("nope")), pbs)
    assert statuses(checks) == {
        "scheduler": "ok",
        "queue.workq": "ok",
        "queue.nope": "FAIL",
        "scheduler.nodes": "ok",  # PBS Pro's pbsnodes without a Port: its state alone
    }


def test_doctor_without_a_probe_account_says_how_to_name_one(tmp_path):
    root = _published(tmp_path)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "hubstock.toml").write_text(
        f'root = "{root.path}"\n[hub]\nstate_dir = "{tmp_path / "state"}"\nhub_port = 1\n'
        '[spawner]\nscheduler = "slurm"\nenvironment = {PATH = "/nonexistent"}\n'
    )
    checks = run_doctor(load_site(site_dir), DoctorOptions(job=True))
    s = statuses(checks)
    assert s["scheduler"] == "FAIL" and s["node.job"] == "warn" and s["root"] == "ok"
    assert not [c for c in checks if c.name.startswith("queue.")]


# --- disk.state_dir, disk.root ------------------------------------------------------------------


def _statvfs(blocks: int, bavail: int, files: int, favail: int):
    return lambda path: os.statvfs_result((4096, 4096, blocks, bavail, bavail, files, favail, favail, 0, 255))


@pytest.mark.parametrize(
    ("blocks", "bavail", "files", "favail", "status", "said"),
    [
        (1_000_000, 500_000, 100_000, 90_000, "ok", "50.0%"),
        (1_000_000, 30_000, 100_000, 90_000, "warn", "nearly full"),
        (1_000_000, 5_000, 100_000, 90_000, "FAIL", "the filesystem is full"),  # 20 MiB: under 64 MiB
        (100_000_000, 900_000, 100_000, 90_000, "FAIL", "the filesystem is full"),  # 0.9%
        (1_000_000, 500_000, 100_000, 500, "FAIL", "out of inodes"),
        (1_000_000, 500_000, 0, 0, "ok", "50.0%"),  # no inode count (btrfs): none checked
    ],
)
def test_space_check_by_value(tmp_path, blocks, bavail, files, favail, status, said):
    check = space_check(
        "disk.root", tmp_path / "not-yet", "the root", statvfs=_statvfs(blocks, bavail, files, favail)
    )
    assert check.status == status and said in check.detail, check
    assert str(tmp_path) in check.detail  # the nearest folder that exists
    if status != "ok":
        assert f"df -h {tmp_path}" in check.fix and check.fix.endswith(".")


def test_a_full_filesystem_and_one_out_of_inodes_are_each_a_fail(tmp_path):
    """Real tmpfs mounts: one filled with a file, one filled with empty files (its inodes)."""
    need_root("mounting tmpfs")
    full, inodes = tmp_path / "full", tmp_path / "inodes"
    mounted = []
    try:
        for where, opts in ((full, "size=8m"), (inodes, "size=256m,nr_inodes=200")):
            where.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True)
            mounted.append(where)
        with open(full / "filler", "wb") as f, contextlib.suppress(OSError):
            f.write(b"\0" * (8 << 20))
        with contextlib.suppress(OSError):
            for i in range(1000):
                (inodes / f"f{i}").touch()
        state, root = check_space(full / "state", inodes / "root")
        assert (state.name, state.status) == ("disk.state_dir", "FAIL") and "is full" in state.detail, state
        assert (root.name, root.status) == ("disk.root", "FAIL") and "out of inodes" in root.detail, root
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)
