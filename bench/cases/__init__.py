"""The benchmarks: one function per benchmark, each returning its result entries (see
:mod:`.common` for an entry's fields), and :data:`CASES`, the suite in the order it runs.

Everything is real: the offline test channel (``rigs/channel.py``) plus a
few packages added for the benchmarks, the ``hubstock`` command in a subprocess
(``sys.executable -m hubstock``, as the tests run it), real py-rattler and uv
installs, real kernels, and (as root) the private Slurm and OpenPBS rigs and JupyterHub of the
hub tests. Every figure is the median of ``repeat`` runs, and its baseline is
measured in the same run, interleaved with it (A, B, A, B, ...), so that a slow
moment of the machine hits both.

The modules, by concern:

- :mod:`.common`: result entries, the :class:`Bench` context (scratch folder, channel, built
  sites), running and timing commands;
- :mod:`.builds`: conda builds (``noop_build``, ``warm_build``, ``warm_build_large``,
  ``cold_build``, ``disk_five_builds``);
- :mod:`.cli`: ``cli_overhead``;
- :mod:`.publish`: kernels and publishing (``kernel_start_readonly``, ``publish``);
- :mod:`.kinds`: the venv and module env kinds (``venv_build_cold``, ``venv_build_warm``,
  ``module_kernel_start``);
- :mod:`.hook`: the pre-spawn hook (``hook``, ``hook_on_loop``);
- :mod:`.hub`: spawning through the Slurm and OpenPBS rigs (``spawn_to_ready``,
  ``spawn_to_ready_pbs``) and the helpers that run a hub;
- :mod:`.rpcs`: ``status_rpcs_per_interval``;
- :mod:`.fallback`: ``status_fallback`` (``status_fallback_calls``, ``status_loop_stall_N``);
- :mod:`.personal`: users' own environments (``personal_build``);
- :mod:`.netfs`: the root on GlusterFS (``warm_build_large_netfs``, ``publish_1_netfs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .builds import cold_build, disk_five_builds, noop_build, warm_build, warm_build_large
from .cli import cli_overhead
from .common import Bench, remove_work, result, skipped, stop_left_behind, world_tmp
from .fallback import status_fallback
from .hook import hook
from .hub import spawn_to_ready, spawn_to_ready_pbs
from .kinds import module_kernel_start, venv_build_cold, venv_build_warm
from .netfs import netfs
from .personal import personal_build
from .publish import kernel_start_readonly, publish
from .rpcs import status_rpcs_per_interval

__all__ = ["CASES", "Bench", "remove_work", "result", "skipped", "stop_left_behind", "world_tmp"]

#: (benchmark, function) in the order they run
CASES: list[tuple[str, Callable[[Bench], list[dict[str, Any]]]]] = [
    ("noop_build", noop_build),
    ("warm_build", warm_build),
    ("warm_build_large", warm_build_large),
    ("cli_overhead", cli_overhead),
    ("cold_build", cold_build),
    ("disk_five_builds", disk_five_builds),
    ("venv_build_cold", venv_build_cold),
    ("venv_build_warm", venv_build_warm),
    ("kernel_start_readonly", kernel_start_readonly),
    ("module_kernel_start", module_kernel_start),
    ("publish", publish),
    ("hook", hook),
    ("spawn_to_ready", spawn_to_ready),
    ("spawn_to_ready_pbs", spawn_to_ready_pbs),
    ("status_rpcs_per_interval", status_rpcs_per_interval),
    ("status_fallback", status_fallback),
    ("personal_build", personal_build),
    ("netfs", netfs),
]
