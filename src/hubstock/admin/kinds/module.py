"""The module kind: no packages to install, a kernel that comes from the site's module tree (the
site's R with IRkernel, a licensed MATLAB with its kernel).

``env.toml`` names the modules; ``hubstock lock`` loads them with Lmod and writes what they
resolve to (every module loaded, dependencies included: its full name, its modulefile and that
file's sha256) into ``modules.lock.json``. A build is a folder with the records every build has,
and its id comes from that resolution: a site that changes a modulefile under a kernel makes the
lock stale, and the new lock a new build, which ``hubstock diff`` and the stock page show.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ...errors import LockError
from ...progress import Progress
from ...site import Site
from ...store.fs import atomic_write
from ...store.records import LockedPackage, ModuleRef
from ...store.root import Root
from .base import BuildPlan, Env, Installed, Kind, LockState, build_id_of, module_refs

LOCK_NAME = "modules.lock.json"
LOCK_FORMAT = 1


@dataclass(frozen=True)
class ModuleSpec:
    modules: tuple[str, ...]


class ModuleKind(Kind):
    name = "module"
    lock_name = LOCK_NAME
    has_prefix_python = False

    def load(self, site: Site, name: str) -> Env:
        from ..lock.envconf import read_env_conf

        conf = read_env_conf(site, name)
        assert conf is not None
        mods = tuple(conf.modules)
        return Env(
            name=name,
            kind=self.name,
            dir=site.envs_dir / name,
            lock_name=self.lock_name,
            spec=ModuleSpec(mods),
            modules=mods,
            optional=conf.optional,
        )

    def lock_state(self, site: Site, env: Env) -> LockState:
        doc = _read(env)
        if doc is None:
            return "missing"
        return "fresh" if doc.get("input-hash") == _input_hash(site, env) else "stale"

    def resolve(self, site: Site, env: Env) -> list[ModuleRef]:
        from ... import lmod

        init = lmod.find_init(site.settings.modules.init)
        loaded = lmod.load(list(env.spec.modules), init=init, use=site.module_use())
        return module_refs(site, loaded.modules)

    def lock(self, site: Site, env: Env, progress: Progress) -> None:
        progress.step(f"[{env.name}] resolving module(s) {' '.join(env.spec.modules)} with Lmod")
        refs = self.resolve(site, env)
        doc = {
            "format": LOCK_FORMAT,
            "generated-by": f"hubstock {__version__}",
            "input-hash": _input_hash(site, env),
            "modules": [r.model_dump(mode="json") for r in refs],
        }
        atomic_write(env.lock_path, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def plan(self, site: Site, env: Env, platform: str) -> BuildPlan:
        state = self.lock_state(site, env)
        if state == "missing":
            raise LockError(
                f"{env.lock_rel} is missing: env {env.name!r} has never been locked; run "
                f"`hubstock lock {env.name}` and commit the lock."
            )
        if state == "stale":
            raise LockError(
                f"{env.lock_rel} is stale: the modules in envs/{env.name}/env.toml or [modules] in "
                f"hubstock.toml changed since it was locked; run `hubstock lock {env.name}` and commit it."
            )
        return self.plan_lock(site, env, platform, env.lock_path.read_bytes())

    def plan_lock(self, site: Site, env: Env, platform: str, lock_bytes: bytes) -> BuildPlan:
        data = lock_bytes
        try:
            doc = json.loads(data)
        except ValueError:
            raise LockError(f"the kept lock of env {env.name!r} is not valid JSON.") from None
        try:
            locked = [ModuleRef.model_validate(m) for m in doc.get("modules", [])]
        except ValueError:
            raise LockError(f"{env.lock_rel}: its modules are malformed; lock again.") from None
        now = self.resolve(site, env)
        if now != locked:
            changed = sorted({r.full_name for r in now} ^ {r.full_name for r in locked}) or [
                a.full_name for a, b in zip(now, locked, strict=False) if a != b
            ]
            raise LockError(
                f"module(s) {', '.join(changed) or 'of env ' + repr(env.name)} no longer resolve as "
                f"{env.lock_rel} says (the site changed a modulefile); run `hubstock lock {env.name} --update`, "
                "check `hubstock diff` after publishing, and commit the lock."
            )
        packages = [
            LockedPackage(
                manager="module",
                name=r.full_name.split("/")[0],
                version=_version(r),
                url=r.path,
                sha256=r.sha256,
            )
            for r in locked
        ]
        h = str(doc.get("input-hash", ""))
        return BuildPlan(
            build_id=build_id_of({"kind": "module", "modules": [r.model_dump(mode="json") for r in locked]}),
            platform=platform,
            packages=packages,
            lock_bytes=data,
            lock_content_hash={platform: h},
            lock_platform_hash=h,
            modules=locked,
        )

    def install(
        self, site: Site, root: Root, env: Env, plan: BuildPlan, prefix: Path, progress: Progress
    ) -> Installed:
        progress.step(
            f"[{env.name}] modules {' '.join(r.full_name for r in plan.modules)}: nothing to install"
        )
        return Installed()


def _version(r: ModuleRef) -> str:
    return r.full_name.split("/", 1)[1] if "/" in r.full_name else "default"


def _input_hash(site: Site, env: Env) -> str:
    doc = {
        "format": LOCK_FORMAT,
        "modules": list(env.spec.modules),
        "use": list(site.settings.modules.use),  # as written: the same in every clone of the site
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _read(env: Env) -> dict | None:
    try:
        data = env.lock_path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        raise LockError(
            f"{env.lock_rel} is not valid JSON; lock again with `hubstock lock {env.name}`."
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT:
        raise LockError(
            f"{env.lock_rel} is not a hubstock modules lock; lock again with `hubstock lock {env.name}`."
        )
    return doc
