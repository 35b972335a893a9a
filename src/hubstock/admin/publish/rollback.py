"""``hubstock rollback``: make an earlier generation current again, with one atomic rename."""

from __future__ import annotations

from ...errors import PublishError, UsageError
from ...progress import Progress
from ...site import Site
from ...store.builds import is_complete
from ...store.generations import current_name, generation, generations, normalise, switch_current
from ...store.root import Root


def rollback(site: Site, gen: str | None, progress: Progress) -> str:
    """Make ``gen`` (default: the one before the current) the current generation again."""
    root = Root(site.root)
    with root.locked(on_wait=progress.warn):
        gens = generations(root)
        cur = current_name(root)
        if gen is None:
            earlier = [g for g in gens if cur is None or int(g) < int(cur)]
            if not earlier:
                raise PublishError(
                    f"there is no generation before {cur or 'the current one'} to roll back to "
                    f"(generations: {', '.join(gens) or 'none'})."
                )
            gen = earlier[-1]
        gen = normalise(gen)
        if gen not in gens:
            raise UsageError(
                f"generation {gen!r} does not exist (generations: {', '.join(gens) or 'none'}); "
                "see `hubstock status`."
            )
        manifest = generation(root, gen).manifest()
        for k in manifest.kernels:
            if not is_complete(root.build(k.env, k.build), k.build):
                raise PublishError(
                    f"generation {gen} cannot come back: its kernel {k.name!r} needs build "
                    f"{k.env}/{k.build}, which no longer exists."
                )
        if gen != cur:
            switch_current(root, gen)
            root.audit("rollback", generation=gen, previous=cur)
    progress.step(f"generation {gen} is current")
    return gen
