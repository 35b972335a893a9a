"""The pre-spawn and post-stop hooks: pin each session to the published generation.

``pre_spawn_hook(spawner, root)`` resolves ``$ROOT/current`` once and points the
server at that generation: the server command and ``batchspawner-singleuser``
from the published server build, and ``PATH``, ``JUPYTER_PATH`` and
``JUPYTER_CONFIG_PATH`` into the generation. A publish during the session never
changes it. It registers the session (so ``hubstock gc`` keeps what it uses) and
writes an audit record; the batch job id is added once the job is submitted.
With nothing published, or a broken generation, the user gets a clear message
instead of a failed job.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..admin.build import is_complete
from ..store.root import Root, now_iso, read_json
from ..store.sessions import Session, register, unregister

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class SpawnException(Exception):
    """A spawn that cannot go ahead; JupyterHub shows ``jupyterhub_message`` to the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message


def published_generation(root: Root) -> tuple[str, Path, dict[str, Any]]:
    """The current generation, resolved once: (name, directory, manifest)."""
    if not os.path.lexists(root.current):
        raise SpawnException(
            "No notebook environment has been published on this hub yet, so no server can start. "
            "Please tell the hub's administrators (they run `nox -s build-envs`)."
        )
    gen_dir = Path(os.path.realpath(root.current))
    manifest = read_json(gen_dir / "manifest.json")
    server = (manifest or {}).get("server")
    problem = None
    if not isinstance(manifest, dict):
        problem = f"its manifest {gen_dir / 'manifest.json'} is missing or unreadable"
    elif not server:
        problem = "it has no server environment"
    elif not is_complete(Path(server["prefix"]), server["build"]):
        problem = f"its server build {server['env']}/{server['build']} is missing or incomplete"
    elif not (Path(server["prefix"]) / "bin" / "jupyterhub-singleuser").exists():
        problem = f"its server build {server['env']}/{server['build']} has no jupyterhub-singleuser"
    elif not (gen_dir / "share" / "jupyter" / "kernels").is_dir():
        problem = "it has no kernels"
    if problem:
        raise SpawnException(
            f"The published notebook environment (generation {gen_dir.name}) is broken: {problem}. "
            "Please tell the hub's administrators (they can run `hubstock rollback`)."
        )
    return gen_dir.name, gen_dir, manifest


def pre_spawn_hook(spawner: Any, root: str | os.PathLike[str]) -> Session:
    """Pin ``spawner`` to the current generation; register and audit the session."""
    r = Root(Path(root))
    gen, gen_dir, manifest = published_generation(r)
    server = manifest["server"]
    bindir = Path(server["prefix"]) / "bin"
    spawner.cmd = [str(bindir / "jupyterhub-singleuser")]
    if hasattr(spawner, "batchspawner_singleuser_cmd"):
        spawner.batchspawner_singleuser_cmd = str(bindir / "batchspawner-singleuser")
    spawner.environment = {
        **spawner.environment,
        "PATH": f"{bindir}:{BASE_PATH}",
        "JUPYTER_PATH": str(gen_dir / "share" / "jupyter"),
        "JUPYTER_CONFIG_PATH": str(gen_dir / "etc" / "jupyter"),
        "HUBSTOCK_GENERATION": gen,
    }
    builds = sorted(
        {f"{server['env']}/{server['build']}"}
        | {f"{k['env']}/{k['build']}" for k in manifest.get("kernels", [])}
    )
    session = Session(
        user=spawner.user.name, server=spawner.name or "", generation=gen, builds=builds, started=now_iso()
    )
    register(r, session)
    r.audit(
        "spawn",
        user=session.user,
        server=session.server,
        generation=gen,
        server_build=server["build"],
        options=dict(spawner.user_options or {}),
    )

    def on_submit(job_id: str) -> None:
        done = Session(**{**session.to_json(), "job_id": job_id})
        register(r, done)
        r.audit("submitted", user=session.user, server=session.server, generation=gen, job_id=job_id)

    spawner.hubstock_on_submit = on_submit
    return session


def post_stop_hook(spawner: Any, root: str | os.PathLike[str]) -> None:
    """Forget the session's record (what it used may now be garbage-collected)."""
    r = Root(Path(root))
    unregister(r, spawner.user.name, spawner.name or "")
    r.audit(
        "stop", user=spawner.user.name, server=spawner.name or "", job_id=getattr(spawner, "job_id", None)
    )


class PreSpawnHook:
    """``Spawner.pre_spawn_hook`` for a root: pins the spawn to the current generation."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __call__(self, spawner: Any) -> None:
        pre_spawn_hook(spawner, self.root)

    def __repr__(self) -> str:
        return f"PreSpawnHook({str(self.root)!r})"


class PostStopHook:
    """``Spawner.post_stop_hook`` for a root: forgets the session's record."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __call__(self, spawner: Any) -> None:
        post_stop_hook(spawner, self.root)

    def __repr__(self) -> str:
        return f"PostStopHook({str(self.root)!r})"


def chain_hooks(*hooks: Callable[[Any], Any] | None) -> Callable[[Any], Awaitable[None]]:
    """One hook that runs ``hooks`` in order (each may be sync or async); ``None`` is skipped.

    A site adds its own steps after hubstock's, in ``spawner/jupyterhub_config.py``::

        site = apply_site(c)

        def site_pre_spawn(spawner):
            spawner.environment["OMP_NUM_THREADS"] = "1"

        c.Spawner.pre_spawn_hook = chain_hooks(c.Spawner.pre_spawn_hook, site_pre_spawn)
    """
    steps = [h for h in hooks if h is not None]

    async def chained(spawner: Any) -> None:
        for step in steps:
            result = step(spawner)
            if inspect.isawaitable(result):
                await result

    return chained
