"""The pre-spawn and post-stop hooks: pin each session to the published generation.

``PreSpawnHook`` (what JupyterHub calls; ``pre_spawn_hook`` is the same, all at once) resolves ``$ROOT/current`` once and points the
server at that generation: the server command and ``batchspawner-singleuser``
from the published server build, and ``PATH``, ``JUPYTER_PATH`` and
``JUPYTER_CONFIG_PATH`` into the generation. A publish during the session never
changes it. A kernel for some groups only (``restricted/<kernel>/``) is on the ``JUPYTER_PATH``
of a member's session alone, by the user's groups as the system resolves them at spawn time
(``getgrouplist``); the filesystem keeps everybody else out of it anyway. It registers the session (so ``hubstock gc`` keeps what it uses) and
writes an audit record; the batch job id is added once the job is submitted.
With nothing published, or a broken generation, the user gets a clear message
instead of a failed job. Every disk access runs in a thread: the hub's event loop only
sets the spawner's command and environment (:func:`apply_pin`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpawnError
from ..site import ENV_NAME_RE
from ..store.access import may_use, user_groups
from ..store.builds import is_complete
from ..store.fs import now_iso
from ..store.generations import Generation, current_name, doomed, resolve_current
from ..store.records import GenerationManifest, RecordError, SessionRecord
from ..store.root import Root
from ..store.rootmark import is_root
from ..store.sessions import read_session, register, unregister

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: a build id as hubstock makes them (a user's record naming anything else is not followed)
BUILD_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def published_generation(root: Root) -> tuple[Generation, GenerationManifest]:
    """The current generation, resolved once, and its manifest; a :class:`SpawnError` if unusable."""
    gen = resolve_current(root)
    if gen is None and not is_root(root.path):  # an unmounted shared filesystem, most often
        raise SpawnError(
            f"The storage of the notebook environments ({root.path}) is not available on the hub "
            "right now, so no server can start. Please tell the hub's administrators (`hubstock "
            "doctor` on the hub node says why)."
        )
    if gen is None:
        raise SpawnError(
            "No notebook environment has been published on this hub yet, so no server can start. "
            "Please tell the hub's administrators (they run `nox -s build-envs`)."
        )
    try:
        manifest = gen.manifest()
    except RecordError as e:
        raise _broken(gen, f"its manifest cannot be used ({e})") from None
    server = manifest.server
    if server is None:
        raise _broken(gen, "it has no server environment")
    if not is_complete(Path(server.prefix), server.build):
        raise _broken(gen, f"its server build {server.env}/{server.build} is missing or incomplete")
    if not (Path(server.prefix) / "bin" / "jupyterhub-singleuser").exists():
        raise _broken(gen, f"its server build {server.env}/{server.build} has no jupyterhub-singleuser")
    if not gen.kernels_dir.is_dir():
        raise _broken(gen, "it has no kernels")
    return gen, manifest


def _broken(gen: Generation, problem: str) -> SpawnError:
    return SpawnError(
        f"The published notebook environment (generation {gen.name}) is broken: {problem}. "
        "Please tell the hub's administrators (they can run `hubstock rollback`)."
    )


@dataclass(frozen=True)
class Pin:
    """What the pre-spawn hook pins a server to: a generation and its server build."""

    root: Root
    session: SessionRecord
    generation: Generation
    server_bindir: Path
    #: the kernels for some groups only that this user is in one of
    restricted: tuple[str, ...] = ()
    #: ``JUPYTER_PATH`` entries of the user's own kernels (``hubstock mine``)
    personal: tuple[str, ...] = ()


@dataclass(frozen=True)
class PersonalKernels:
    """A user's own kernels that can run: their ``JUPYTER_PATH`` entries and the stock builds they
    layer on (which the session's record names, so gc keeps them while it runs)."""

    paths: tuple[str, ...] = ()
    bases: tuple[str, ...] = ()  # '<env>/<build>'


def personal_kernels(personal_dir: str | None, user: str, root: Root) -> PersonalKernels:
    """The user's personal environments (``[personal] dir``) whose kernel is published, whose build
    is complete and whose stock base is still on ``root``. A folder the hub cannot read (a home
    on a root-squashed filesystem) gives none, and the spawn goes on.

    The hub reads this folder as root, and it is the user's: only folders the user owns count
    (not another user's, linked there), records are read as regular files only (never a FIFO),
    and the stock base is looked for where this root keeps it, whatever the record says."""
    if not personal_dir:
        return PersonalKernels()
    import pwd

    from ..personal.layout import Mine

    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        return PersonalKernels()
    mine = Mine(user, Path(personal_dir.format(home=home.rstrip("/") or "/", user=user)))
    paths, bases = [], []
    try:
        uid = pwd.getpwnam(user).pw_uid
        if os.stat(mine.path).st_uid != uid:
            return PersonalKernels()
        for env in mine.envs():
            try:
                st = os.lstat(env.path)
                if st.st_uid != uid or not stat.S_ISDIR(st.st_mode):
                    continue
                bid = env.kernel_build()
                prov = env.provenance(bid) if bid and env.is_complete(bid) else None
            except (OSError, RecordError):
                continue
            if prov is None or not (
                ENV_NAME_RE.fullmatch(prov.base_env) and BUILD_ID_RE.fullmatch(prov.base_build)
            ):
                continue
            if is_complete(root.build(prov.base_env, prov.base_build), prov.base_build):
                paths.append(str(env.jupyter_dir))
                bases.append(f"{prov.base_env}/{prov.base_build}")
    except OSError:
        return PersonalKernels()
    return PersonalKernels(tuple(paths), tuple(sorted(set(bases))))


def pin_session(
    root: Root, user: str, server: str, options: dict[str, Any], personal_dir: str | None = None
) -> Pin:
    """Every disk step of the pre-spawn hook: resolve ``current``, register the session, audit it.

    The session's record is written (and fsynced) *before* the generation is checked once
    more, its presence and gc's announced removals: ``hubstock gc`` (which reads the records
    again after announcing what it removes, and before it moves anything) then either sees the
    record and keeps the generation, or announced it before the check, and the hook pins the new
    current generation instead.
    """
    mine = personal_kernels(personal_dir, user, root)
    for attempt in range(3):
        was = current_name(root)
        try:
            gen, manifest = published_generation(root)
        except SpawnError:
            if attempt < 2 and current_name(root) != was:
                continue  # a publish and a gc came through while it was being read: the new one
            raise
        session = SessionRecord(
            user=user,
            server=server,
            generation=gen.name,
            builds=sorted(set(manifest.build_keys()) | set(mine.bases)),
            started=now_iso(),
        )
        register(root, session)
        if _still_there(root, gen, manifest):
            break
    else:
        unregister(root, user, server)
        raise SpawnError(
            "The published notebook environment was replaced several times while your server was starting; "
            "please start it again."
        )
    assert manifest.server is not None  # published_generation refuses a generation without one
    restricted = restricted_kernels(manifest, user)
    root.audit(
        "spawn",
        user=user,
        server=server,
        generation=gen.name,
        server_build=manifest.server.build,
        options=options,
        **({"restricted": list(restricted)} if restricted else {}),
        **({"personal": [Path(p).parent.name for p in mine.paths]} if mine.paths else {}),
    )
    return Pin(root, session, gen, Path(manifest.server.prefix) / "bin", restricted, mine.paths)


def restricted_kernels(manifest: GenerationManifest, user: str) -> tuple[str, ...]:
    """The generation's kernels for some groups only that ``user`` is a member of (now)."""
    entries = [k for k in manifest.kernels if k.groups]
    if not entries:
        return ()
    member_of = user_groups(user)
    return tuple(k.name for k in entries if may_use(k.groups, member_of))


def apply_pin(spawner: Any, pin: Pin) -> None:
    """Point ``spawner`` at the pinned generation (no disk access: safe in the hub's event loop)."""
    bindir = pin.server_bindir
    spawner.cmd = [str(bindir / "jupyterhub-singleuser")]
    if hasattr(spawner, "batchspawner_singleuser_cmd"):
        spawner.batchspawner_singleuser_cmd = str(bindir / "batchspawner-singleuser")
    spawner.environment = {
        **spawner.environment,
        "PATH": f"{bindir}:{BASE_PATH}",
        "JUPYTER_PATH": os.pathsep.join([pin.generation.jupyter_paths(pin.restricted), *pin.personal]),
        "JUPYTER_CONFIG_PATH": str(pin.generation.config_path),
        "HUBSTOCK_GENERATION": pin.generation.name,
    }
    spawner.hubstock_on_submit = functools.partial(_on_submit, pin)


def _on_submit(pin: Pin, job_id: str) -> None:
    """Record the job id; inside the hub's event loop the writes go to a thread."""
    session = pin.session

    def record() -> None:
        register(pin.root, session.model_copy(update={"job_id": job_id}))
        pin.root.audit(
            "submitted",
            user=session.user,
            server=session.server,
            generation=session.generation,
            job_id=job_id,
        )

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        record()
    else:
        _pending.add(task := loop.create_task(asyncio.to_thread(record)))
        task.add_done_callback(_pending.discard)


#: writes started off the event loop, kept referenced until they finish
_pending: set[asyncio.Task[None]] = set()


def pre_spawn_hook(spawner: Any, root: str | os.PathLike[str]) -> SessionRecord:
    """Pin ``spawner`` to the current generation; register and audit the session (all at once,
    for callers outside the hub's event loop; JupyterHub gets :class:`PreSpawnHook`)."""
    pin = pin_session(
        Root(Path(root)), spawner.user.name, spawner.name or "", dict(spawner.user_options or {})
    )
    apply_pin(spawner, pin)
    return pin.session


def _still_there(root: Root, gen: Generation, manifest: GenerationManifest) -> bool:
    """Whether the generation (and its server build) is still on the root, and not about to be
    removed by a running gc (:func:`~hubstock.store.generations.announce_removal`)."""
    server = manifest.server
    return (
        gen.manifest_path.is_file()
        and (server is None or is_complete(Path(server.prefix), server.build))
        and gen.name not in doomed(root)
    )


def post_stop_hook(spawner: Any, root: str | os.PathLike[str]) -> None:
    """Forget the session's record (what it used may now be garbage-collected)."""
    r = Root(Path(root))
    unregister(r, spawner.user.name, spawner.name or "")
    r.audit(
        "stop", user=spawner.user.name, server=spawner.name or "", job_id=getattr(spawner, "job_id", None)
    )


class PreSpawnHook:
    """``Spawner.pre_spawn_hook`` for a root: pins the spawn to the current generation (and adds
    the user's own kernels from ``personal_dir``, ``[personal] dir``, when set)."""

    def __init__(self, root: str | os.PathLike[str], personal_dir: str | None = None) -> None:
        self.root = Path(root)
        self.personal_dir = personal_dir

    async def __call__(self, spawner: Any) -> None:
        """The disk work (reading the generation, the session record's fsync, the audit line) runs
        in a thread, so the hub's event loop never waits on the shared filesystem; the record is
        durable before this returns, so before the job is submitted."""
        user, server, options = spawner.user.name, spawner.name or "", dict(spawner.user_options or {})
        pin = await asyncio.to_thread(pin_session, Root(self.root), user, server, options, self.personal_dir)
        apply_pin(spawner, pin)

    def __repr__(self) -> str:
        return f"PreSpawnHook({str(self.root)!r})"


class PostStopHook:
    """``Spawner.post_stop_hook`` for a root: forgets the session's record."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    async def __call__(self, spawner: Any) -> None:
        """Before the record goes: a job it names that the spawner no longer tracks (a spawn still
        queued when the hub restarted: JupyterHub kept no job id for it) is cancelled, or put on
        the hub's durable list of jobs to cancel (:data:`~.reaper.REAPER`) if the scheduler does
        not answer. The last record of a job is never removed before that."""
        root = Root(self.root)
        user, server = spawner.user.name, spawner.name or ""
        record = await asyncio.to_thread(read_session, root, user, server)
        tracked = getattr(spawner, "job_id", "") or ""
        cancel_lost = getattr(spawner, "cancel_lost_job", None)
        lost = record.job_id if record is not None and record.job_id != tracked else None
        if lost and cancel_lost is not None and await cancel_lost(lost):
            await asyncio.to_thread(root.audit, "cancel-lost", user=user, server=server, job_id=lost)
        await asyncio.to_thread(post_stop_hook, spawner, self.root)

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
