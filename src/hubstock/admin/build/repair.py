"""``hubstock verify --repair``: verify, remove the damaged cache entries, then rebuild the damaged
builds that are their env's current build from the env's lock.

A damaged build that is in use is never removed first: :func:`~.build.ensure_build` makes its
replacement beside it and swaps the two in one step, so a kernel that starts meanwhile finds
the damaged build or the new one, never nothing."""

from __future__ import annotations

from ...errors import HubstockError
from ...progress import Progress
from ...site import Site
from ...store.builds import current_link
from ...store.root import Root
from ..kinds import load_env
from .build import ensure_build
from .verify import VerifyReport, check_build, verify


def verify_and_repair(site: Site, envs: list[str], progress: Progress) -> VerifyReport:
    report = verify(site, envs, True, progress)
    _rebuild_damaged(site, Root(site.root), report, progress)
    return report


def _rebuild_damaged(site: Site, root: Root, report: VerifyReport, progress: Progress) -> None:
    for b in report.builds:
        if b.ok:
            continue
        if b.env in site.env_names() and current_link(root, b.env) == b.build_id:
            try:
                result = ensure_build(site, load_env(site, b.env), progress)
            except HubstockError as e:
                report.left.append(f"{b.env}/{b.build_id} could not be rebuilt: {e}")
                continue
            if result.build_id == b.build_id:
                after = check_build(root, b.env, b.build_id)
                b.repaired = after.ok
                if not after.ok:
                    report.left.append(f"{b.env}/{b.build_id} still differs after its rebuild.")
                continue
            report.left.append(
                f"{b.env}/{b.build_id} is damaged and its env now builds {result.build_id}: "
                "publish, then `hubstock gc` removes the damaged build once nothing uses it."
            )
        else:
            report.left.append(
                f"{b.env}/{b.build_id} is damaged and is not the current build of a site env, so it "
                "cannot be rebuilt from a lock: `hubstock gc` removes it once no generation uses it."
            )
