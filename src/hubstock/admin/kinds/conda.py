"""The conda kind: ``environment.yml`` locked to ``conda-lock.yml`` and installed with py-rattler
(the ``pip:`` part with uv, through the wheel cache)."""

from __future__ import annotations

from pathlib import Path

from ...errors import BuildError
from ...progress import Progress
from ...site import Site
from ...store.records import LockedPackage
from ...store.root import Root
from .base import BuildPlan, Env, Installed, Kind, LockState


class CondaKind(Kind):
    name = "conda"
    lock_name = "conda-lock.yml"

    def load(self, site: Site, name: str) -> Env:
        from ..lock.envspec import load_env_spec

        spec = load_env_spec(site, name)
        return Env(name=name, kind=self.name, dir=spec.dir, lock_name=self.lock_name, spec=spec)

    def lock_state(self, site: Site, env: Env) -> LockState:
        from ..lock.lockcache import digest
        from ..lock.lockfile import lock_status

        return lock_status(site, env.spec, digest(site, env.name)).state

    def lock(self, site: Site, env: Env, progress: Progress) -> None:
        from ..lock.solve import lock_env

        lock_env(site, env.spec, progress)

    def plan(self, site: Site, env: Env, platform: str) -> BuildPlan:
        from ..lock.lockfile import require_fresh_lock

        lock = require_fresh_lock(site, env.spec)
        platform_hash = lock.metadata.content_hash.get(platform)
        return self._plan(lock, platform, _lock_bytes(env, platform_hash))

    def plan_lock(self, site: Site, env: Env, platform: str, lock_bytes: bytes) -> BuildPlan:
        import yaml

        from ..lock.condalock import YAML_LOADER, lock_from_data

        try:
            data = yaml.load(lock_bytes.decode("utf-8"), Loader=YAML_LOADER)
        except (UnicodeDecodeError, yaml.YAMLError):
            raise BuildError(
                f"the kept lock of env {env.name!r} is not a readable conda-lock file."
            ) from None
        return self._plan(lock_from_data(data, f"the kept lock of env {env.name!r}"), platform, lock_bytes)

    def _plan(self, lock, platform: str, lock_bytes: bytes) -> BuildPlan:  # noqa: ANN001 - a condalock.Lockfile
        from ..lock.lockfile import build_id, packages_for

        bid = build_id(lock, platform)  # refuses a lock without packages for the platform
        entries = packages_for(lock, platform)
        packages = [
            LockedPackage(
                manager=p.manager,
                name=p.name,
                version=p.version,
                build=p.build,
                url=p.url,
                sha256=p.hash.sha256,
            )
            for p in entries
        ]
        platform_hash = lock.metadata.content_hash.get(platform)
        return BuildPlan(
            build_id=bid,
            platform=platform,
            packages=packages,
            lock_bytes=lock_bytes,
            lock_content_hash=dict(lock.metadata.content_hash),
            lock_platform_hash=platform_hash,
            state=entries,
        )

    def install(
        self, site: Site, root: Root, env: Env, plan: BuildPlan, prefix: Path, progress: Progress
    ) -> Installed:
        from ..build.conda_install import install_conda_lock

        return install_conda_lock(site, root, env.name, plan.state, plan.platform, prefix, progress)


def _lock_bytes(env: Env, platform_hash: str | None) -> bytes:
    """The env's conda-lock.yml as it is now, which must still be the lock being built."""
    data = env.lock_path.read_bytes()
    if platform_hash and platform_hash.encode() not in data:
        raise BuildError(
            f"{env.lock_rel} changed while env {env.name!r} was being built; run the build again."
        )
    return data
