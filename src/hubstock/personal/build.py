"""The build job's work, as the user on a compute node: lock, build, smoke-test, then the kernel.

1. The stock build must still be there; its interpreter says which Python, which packages it
   has (``importlib.metadata``) and where they are.
2. ``uv pip compile`` locks the user's requirements with every stock package pinned as a
   constraint (a requirement that conflicts with the stock is refused here, in one sentence),
   for the stock Python and the compute nodes' platform: a PEP 751 ``pylock.toml`` with a
   sha256 for every file.
3. What the lock has that the stock does not is installed (``--no-deps --require-hashes``:
   each download checked against the lock) into a venv of the stock interpreter whose
   ``.pth`` file puts the stock site-packages after its own: megabytes, not a copy.
4. The build is content-addressed (the stock build and the files installed), gets its
   provenance (with the sha256 of every file), its completion marker, and is made read-only.
5. Its kernel (the stock kernel's, on the personal build's python) is started with
   jupyter_client and imports the stock check and every added package; only then is its
   kernel.json written (atomically), and the lock kept beside it.

A failure at any step leaves the previous kernel and build as they were, removes what was
half-made, and says what happened in the state record.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import canonicalize_name

from .. import __version__
from ..admin.build.cache import sha256_file
from ..errors import CommandError, HubstockError, PersonalError, PublishError, is_disk_full
from ..proc import run
from ..site import Site
from ..store.builds import is_complete, read_provenance
from ..store.fs import atomic_write, current_user, link_target, make_read_only, now_iso
from ..store.records import LockedPackage, PersonalBuild, PersonalSpec, PersonalState
from .layout import MARKER, PROVENANCE, Mine, MineEnv
from .request import denied, kernel_spec

if TYPE_CHECKING:
    from ..admin.publish.smoke import SmokeWorker

PTH = "_hubstock_stock.pth"

_PROBE = (
    "import json, site, sys, importlib.metadata as m; print(json.dumps({"
    "'version': '%d.%d' % sys.version_info[:2], 'site': site.getsitepackages(), "
    "'dists': {d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}}))"
)


def set_state(env: MineEnv, state: str, **fields: object) -> PersonalState:
    """Write the environment's state record (what ``mine list`` and the page show)."""
    old = env.state()
    keep = {"job_id": old.job_id, "build": old.build} if old else {}
    record = PersonalState.model_validate({**keep, **fields, "state": state, "updated": now_iso()})
    atomic_write(env.state_path, record.to_json(), mode=0o600)
    return record


def build_in_job(site: Site, mine: Mine, name: str, say=print) -> str:
    """Build ``name`` (its spec as written by ``mine create``); the build id. A failure is written
    to the state record, then raised."""
    env = mine.env(name)
    spec = env.spec()
    if spec is None:
        raise PersonalError(
            f"there is no environment {name!r} in {mine.path}; create it with `hubstock mine create`."
        )
    set_state(env, "running", step="starting", message="")
    try:
        bid = _build(site, mine, env, spec, say)
    except BaseException as e:
        message = str(e) if isinstance(e, HubstockError) else _unexpected(e)
        with contextlib.suppress(OSError, HubstockError):  # a full disk: `mine list` notices the job is gone
            set_state(env, "failed", step="", message=message)
        raise
    set_state(env, "ready", step="", build=bid, message="")
    return bid


def _unexpected(e: BaseException) -> str:
    if isinstance(e, OSError) and is_disk_full(e):
        return f"the disk or your quota is full ({e.filename or 'writing the build'}); free some space and create it again."
    if isinstance(e, KeyboardInterrupt | SystemExit):
        return "the build job was stopped before it finished; nothing was changed. Create it again."
    return f"the build failed unexpectedly ({type(e).__name__}: {e}); nothing was changed."


def _build(site: Site, mine: Mine, env: MineEnv, spec: PersonalSpec, say) -> str:
    from ..admin.publish.smoke import SmokeWorker

    # the smoke test's worker imports jupyter_client while the build locks and installs
    with SmokeWorker.start() as worker:
        return _build_with(site, mine, env, spec, say, worker)


def _build_with(site: Site, mine: Mine, env: MineEnv, spec: PersonalSpec, say, worker: SmokeWorker) -> str:
    base = spec.base
    if not is_complete(Path(base.prefix), base.build):
        raise PersonalError(
            f"the stock build {base.env}/{base.build} that environment {env.name!r} builds on is no longer on "
            f"the root (a newer one replaced it); create it again on today's stock: `hubstock mine create {env.name} "
            f"--replace {' '.join(spec.requirements)}`."
        )
    python = f"{base.prefix}/bin/python"
    environ = _interpreter_env(site, Path(base.prefix))
    step(env, say, f"reading the stock build {base.env}/{base.build}")
    out = run([python, "-I", "-c", _PROBE], what="reading the stock build", env=environ).stdout
    info = json.loads(
        (out.strip().splitlines() or ["{}"])[-1]
    )  # its answer is the last line (warnings before)
    stock: dict[str, str] = {canonicalize_name(n): str(v) for n, v in info["dists"].items()}
    stock_sites = [p for p in info["site"] if p.startswith(base.prefix + "/") and os.path.isdir(p)]

    step(env, say, f"locking {len(spec.requirements)} requirement(s) on the stock's {len(stock)} packages")
    lock_text = _lock(site, mine, spec, info["version"], stock)
    extra = _added(site, spec, lock_text, info["version"], stock)
    from ..admin.kinds.base import build_id_of

    bid = build_id_of(
        {
            "kind": "personal",
            "base": f"{base.env}/{base.build}",
            "packages": sorted((p.name, p.version, p.url, p.sha256) for p in extra),
        }
    )
    prefix = env.build(bid)
    if env.is_complete(bid) and _kernel_build(env) == bid:
        step(env, say, f"build {bid} is already complete and its kernel published; nothing to do")
        return bid
    if not env.is_complete(bid):
        remove_tree(prefix)
        try:
            _install(site, mine, env, spec, bid, prefix, python, environ, stock_sites, extra, say)
        except BaseException:
            remove_tree(prefix)
            raise
    step(env, say, "starting the kernel and importing the stock's and the added packages")
    kspec = kernel_spec(base, env.name, prefix)
    _smoke(site, env, kspec, prefix, base.kernel_dir, base.check, extra, worker)
    atomic_write(env.lock_path, _lock_header(spec) + lock_text, mode=0o600)
    before = _kernel_build(env)
    env.kernel_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _kernel_files(base.kernel_dir, env.kernel_dir)
    atomic_write(env.kernel_dir / "kernel.json", json.dumps(kspec, indent=1) + "\n", mode=0o600)
    _prune(env, keep={b for b in (bid, before) if b})
    step(env, say, f"kernel {env.kernel_name!r} ready: {kspec['display_name']}")
    return bid


def step(env: MineEnv, say, text: str) -> None:
    say(text)
    set_state(env, "running", step=text)


def _interpreter_env(site: Site, prefix: Path) -> dict[str, str]:
    """What the stock interpreter needs to run: its modules' environment, if it came from one."""
    prov = read_provenance(prefix)
    if prov is None or not prov.modules:
        return {}
    from .. import lmod

    loaded = lmod.load(
        [m.name for m in prov.modules], init=lmod.find_init(site.settings.modules.init), use=site.module_use()
    )
    return {k: v for k, v in loaded.environ.items() if k in ("PATH", "LD_LIBRARY_PATH", "PYTHONHOME")}


def uv_user_env(mine: Mine) -> dict[str, str]:
    """uv's environment in a user's build: the user's own cache, never a downloaded Python."""
    return {
        "UV_CACHE_DIR": str(mine.path / ".uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }


def _uv(mine: Mine, *args: str, what: str, env: dict[str, str] | None = None) -> str:
    from ..admin.uv import uv_command

    try:
        out = run(
            [*uv_command(), *args[:2], "--no-config", "--quiet", *args[2:]],
            what=what,
            env={**(env or {}), **uv_user_env(mine)},
            umask=0o077,
        )
    except CommandError as e:
        low = e.output.lower()
        if "no space left on device" in low or "disk quota exceeded" in low:
            raise PersonalError(
                f"your disk quota (or the disk) under {mine.path} is full; free some space (`hubstock mine "
                "remove` an environment you no longer use) and create it again.",
                detail=e.output,
            ) from None
        raise
    return out.stdout


def _lock(site: Site, mine: Mine, spec: PersonalSpec, version: str, stock: dict[str, str]) -> str:
    from ..admin.lock.wheeltags import uv_platform
    from ..admin.uv import uv_error_summary

    platform = site.settings.platforms[0]
    with tempfile.TemporaryDirectory(prefix="hubstock-mine-") as tmp:
        req, cons, out = Path(tmp, "requirements.in"), Path(tmp, "constraints.txt"), Path(tmp, "pylock.toml")
        req.write_text("".join(f"{r}\n" for r in spec.requirements))
        cons.write_text("".join(f"{n}=={v}\n" for n, v in sorted(stock.items())))
        personal = site.settings.personal
        index = ["--index-url", personal.index_url] if personal.index_url else []
        index += ["--no-index"] if personal.no_index else []
        for d in personal.find_links:
            index += ["--find-links", d]
        try:
            _uv(
                mine,
                "pip",
                "compile",
                "--format",
                "pylock.toml",
                "--python-version",
                version,
                "--python-platform",
                uv_platform(site, platform),
                *index,
                "--constraint",
                str(cons),
                "--output-file",
                str(out),
                str(req),
                what="locking your requirements",
            )
        except CommandError as e:
            raise PersonalError(
                _lock_failure(spec, e.output, uv_error_summary(e.output)), detail=e.output
            ) from None
        return (
            "\n".join(ln for ln in out.read_text().splitlines() if not ln.startswith("#")).lstrip("\n") + "\n"
        )


def _lock_failure(spec: PersonalSpec, output: str, summary: str) -> str:
    low = output.lower()
    if any(
        x in low for x in ("not found in the package registry", "not found in the provided package locations")
    ):
        return (
            f"a package you asked for is not in the package index ({summary}); check its name on the index "
            "and create the environment again."
        )
    if "no solution found" in low or "unsatisfiable" in low:
        return (
            f"your requirements conflict with the stock environment {spec.base.env!r} ({summary}); ask for "
            "versions that go with the stock's (`hubstock mine show` lists them), or none."
        )
    return f"your requirements cannot be locked ({summary}); check them and create the environment again."


def _added(
    site: Site, spec: PersonalSpec, lock_text: str, version: str, stock: dict[str, str]
) -> list[LockedPackage]:
    """The locked packages the stock build does not have (each checked against the deny list)."""
    from ..admin.lock.wheeltags import pick_artifact, target_tags

    doc = tomllib.loads(lock_text)
    platform = site.settings.platforms[0]
    major, minor = (int(x) for x in version.split("."))
    tags = target_tags((major, minor), platform, site.settings.virtual_packages.glibc)
    refused = denied(site.settings)
    out = []
    for pkg in doc.get("packages", []):
        name = canonicalize_name(pkg["name"])
        if stock.get(name) == str(pkg.get("version")):
            continue
        if name in refused:
            raise PersonalError(
                f"your requirements pull in package {pkg['name']!r}, which may not be installed in a personal "
                "environment on this site ([personal] deny); leave out what needs it."
            )
        try:
            url, sha = pick_artifact(pkg, tags, f"mine:{spec.name}")
        except HubstockError as e:
            raise PersonalError(str(e)) from None
        if not url.endswith(".whl"):
            raise PersonalError(
                f"package {pkg['name']} {pkg.get('version')} has no wheel for the compute nodes, and personal "
                "environments build nothing from source; ask for another version."
            )
        out.append(
            LockedPackage(manager="pip", name=pkg["name"], version=str(pkg["version"]), url=url, sha256=sha)
        )
    if not out:
        raise PersonalError(
            f"the stock environment {spec.base.env!r} already has everything you asked for "
            f"({', '.join(spec.requirements)}); use its kernel {spec.base.kernel!r} as it is."
        )
    return out


def _install(
    site: Site,
    mine: Mine,
    env: MineEnv,
    spec: PersonalSpec,
    bid: str,
    prefix: Path,
    python: str,
    environ: dict[str, str],
    stock_sites: list[str],
    extra: list[LockedPackage],
    say,
) -> None:
    env.builds.mkdir(mode=0o700, parents=True, exist_ok=True)
    step(env, say, f"making the venv {prefix.name} on the stock interpreter")
    _uv(mine, "venv", str(prefix), "--python", python, "--no-project", what="making the venv", env=environ)
    sites = sorted(prefix.glob("lib/python*/site-packages"))
    if len(sites) != 1:
        raise PersonalError(
            f"the venv {prefix} has no single site-packages folder; tell the site's administrators."
        )
    (sites[0] / PTH).write_text("".join(f"{p}\n" for p in stock_sites))
    names = ", ".join(f"{p.name} {p.version}" for p in extra)
    step(env, say, f"installing {len(extra)} package(s), each checked against the lock: {names}")
    with tempfile.TemporaryDirectory(prefix="hubstock-mine-") as tmp:
        reqs = Path(tmp, "requirements.txt")
        reqs.write_text("".join(f"{p.name} @ {p.url} --hash=sha256:{p.sha256}\n" for p in extra))
        try:
            _uv(
                mine,
                "pip",
                "install",
                "--python",
                str(prefix / "bin" / "python"),
                "--no-deps",
                "--require-hashes",
                "--compile-bytecode",
                "-r",
                str(reqs),
                what="installing the added packages",
                env=environ,
            )
        except CommandError as e:
            from ..admin.uv import uv_error_summary

            raise PersonalError(
                f"the added packages could not be installed ({uv_error_summary(e.output)}).", detail=e.output
            ) from None
    files, size = _files(prefix)
    limit = site.settings.personal.max_size_mb
    if size > limit * 1024 * 1024:
        raise PersonalError(
            f"the build of {env.name!r} is {size / 1048576:.0f} MB, more than the {limit} MB this site allows "
            "([personal] max_size_mb); add fewer or smaller packages."
        )
    record = PersonalBuild(
        build_id=bid,
        name=env.name,
        user=mine.user,
        base_env=spec.base.env,
        base_build=spec.base.build,
        base_prefix=spec.base.prefix,
        packages=extra,
        files=files,
        size=size,
        created=now_iso(),
        builder=f"hubstock {__version__} as {current_user()}",
    )
    atomic_write(prefix / PROVENANCE, record.to_json())
    atomic_write(prefix / MARKER, bid + "\n")
    make_read_only(prefix)


def _files(prefix: Path) -> tuple[dict[str, str], int]:
    """Every file of a build (sha256, or '-> target' for a symlink) and their size (hard links once)."""
    files: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, _dirs, names in os.walk(prefix):
        for n in names:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, prefix)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                files[rel] = f"-> {link_target(p)}"
                continue
            files[rel] = sha256_file(Path(p))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return files, size


def verify_build(env: MineEnv, bid: str) -> list[str]:
    """What differs in a build from its recorded files: '<path>: changed|missing|added'."""
    prov = env.provenance(bid)
    if prov is None:
        return [f"{PROVENANCE}: missing"]
    now, _size = _files(env.build(bid))
    now.pop(PROVENANCE, None)
    now.pop(MARKER, None)
    problems = [
        f"{p}: {'missing' if p not in now else 'changed'}"
        for p, h in sorted(prov.files.items())
        if now.get(p) != h
    ]
    problems += [f"{p}: added" for p in sorted(set(now) - set(prov.files))]
    return problems


def top_level(prefix: Path, pkg: LockedPackage) -> list[str]:
    """The importable top-level names an installed distribution gives (from its RECORD)."""
    norm = canonicalize_name(pkg.name).replace("-", "_")
    names: set[str] = set()
    for site in prefix.glob("lib/python*/site-packages"):
        for info in site.glob("*.dist-info"):
            if canonicalize_name(info.name.split("-")[0]).replace("-", "_") != norm:
                continue
            with contextlib.suppress(OSError):
                for line in (info / "RECORD").read_text().splitlines():
                    first = line.split(",")[0].split("/")[0]
                    if first.endswith(".py"):
                        first = first[:-3]
                    elif "/" not in line.split(",")[0]:
                        continue
                    if first.isidentifier() and not first.startswith("_") and first != "bin":
                        names.add(first)
    return sorted(names)


def _smoke(
    site: Site,
    env: MineEnv,
    kspec: dict,
    prefix: Path,
    base_dir: str,
    check: str,
    extra: list[LockedPackage],
    worker: SmokeWorker,
) -> None:
    from ..admin.publish.smoke import SmokeJob

    imports = sorted({n for p in extra for n in top_level(prefix, p)})
    code = "\n".join(x for x in (check, *(f"import {n}" for n in imports)) if x)
    with tempfile.TemporaryDirectory(prefix="hubstock-mine-smoke-") as tmp:
        kdir = Path(tmp, "kernels", env.kernel_name)
        kdir.mkdir(parents=True)
        _kernel_files(base_dir, kdir)
        (kdir / "kernel.json").write_text(json.dumps(kspec))
        job = SmokeJob(
            name=env.kernel_name, prefix=str(prefix), check=code, argv0=kspec["argv"][0], exe_in_prefix=False
        )
        try:
            outcome = worker.run([job], kdir.parent, site.settings.publish.smoke_timeout)[0]
        except PublishError as e:
            raise PersonalError(
                f"the kernel of {env.name!r} could not be tested ({e.args[0].split(';')[0]}); nothing was "
                "published. Tell the site's administrators.",
                detail=e.detail,
            ) from None
    if outcome is not None:
        reason, log = outcome
        raise PersonalError(
            f"the kernel of {env.name!r} did not pass its test: {reason}; nothing was published (its log is in {env.log_path}).",
            detail=log,
        )


def _lock_header(spec: PersonalSpec) -> str:
    return (
        f"# The lock of your environment {spec.name!r}: {', '.join(spec.requirements)} on the stock kernel\n"
        f"# {spec.base.display_name!r} (build {spec.base.env}/{spec.base.build}), made by hubstock {__version__}.\n"
        "# What you asked for and what it needs, locked against the stock's packages (their versions are\n"
        "# the stock's), with the sha256 of every file (PEP 751): with the stock env's own lock, installing\n"
        "# both into a venv of the same Python rebuilds it elsewhere.\n"
    )


def _kernel_build(env: MineEnv) -> str | None:
    return env.kernel_build()


def _kernel_files(base_dir: str, into: Path) -> None:
    """The stock kernel's other files (logos, the resources its argv names) beside a personal kernel."""
    with contextlib.suppress(OSError):
        for f in os.listdir(base_dir):
            src = os.path.join(base_dir, f)
            if f != "kernel.json" and os.path.isfile(src):
                shutil.copyfile(src, into / f)


def _prune(env: MineEnv, keep: set[str]) -> None:
    """Remove the environment's builds but ``keep`` (the new one and the one its kernel ran before)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(env.builds):
            if name not in keep:
                remove_tree(env.build(name))


def remove_tree(path: Path) -> None:
    """Remove a (read-only) build or folder of the user's."""
    if not os.path.lexists(path):
        return
    for dirpath, dirs, _files in os.walk(path):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)
