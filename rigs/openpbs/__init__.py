"""A private, real single-node OpenPBS (PBS Pro) for tests and demos, in its own network namespace.

``OpenPBSRig(workdir).start()`` runs pbs_comm, pbs_server (with its PostgreSQL datastore),
pbs_sched and pbs_mom as root, without systemd, with everything under *workdir*: its own
``pbs.conf`` (given to every client through ``PBS_CONF_FILE``), PBS_HOME, datastore, logs and
temporary files.  Nothing is written to ``/etc``, ``/var/spool`` or ``/var/tmp``.

**The whole rig lives in a private network namespace** that it creates (``unshare --net``),
with one address, 198.18.0.1/32, on that namespace's ``lo``: TPP (pbs_comm's transport)
ignores every 127.x address, and the machine's external address is never used, so no packet
leaves the namespace.  A private mount namespace goes with it, in which ``/etc/hosts`` names
the rig's host by that address (the daemons resolve it on every connection: without it, DNS
stalls) and the OpenPBS build is bind-mounted where job users can reach it.  A small holder
process keeps both namespaces alive; it is the daemons' parent and their *child subreaper*, so
it reaps every orphan at once (pbs_mom counts a killed job's zombies as live processes).

Everything that talks to the rig runs in that namespace too: ``rig.run(argv)``,
``rig.popen(argv)`` or, for code that builds its own command lines, ``rig.ns_argv(argv)``
(``nsenter --net --mount --target <holder>``).  A hub, its proxy and a test client started with
``rig.popen`` reach the PBS server, and each other, there.

``stop()`` deletes the jobs, stops the daemons and the datastore by PID, then ends every
process left in the namespace and the holder: the namespace disappears with its last process.

OpenPBS itself: ``locate_openpbs()`` returns an installed PBS (``HUBSTOCK_OPENPBS_PREFIX``)
or builds the source tarball named by ``HUBSTOCK_OPENPBS_SOURCE`` once into a cache outside
the checkout (``$HUBSTOCK_TEST_CACHE/openpbs/<sha256 of the tarball>``, by default under
``~/.cache/hubstock-tests``) and reuses it.  Run as root, the rig installs the Debian packages
it needs (``BUILD_DEBIAN_PACKAGES``, ``RUN_DEBIAN_PACKAGES``).  Standard library only.


Command line (a demo, or a rig kept up by hand)::

    python -m rigs.openpbs build        # build (or find) OpenPBS, print its prefix
    python -m rigs.openpbs up DIR       # start, print how to reach it, leave it running
    python -m rigs.openpbs down DIR     # stop the rig recorded in DIR/run/rig.json
    python -m rigs.openpbs run DIR      # start, wait for Ctrl-C, stop
    python -m rigs.openpbs exec DIR -- qstat -fx   # a command inside a running rig

The modules: ``rig`` (the OpenPBSRig class: commands in the namespace, start and stop), with
its steps in ``startup`` (workdir, pbs.conf, daemons, queues), ``datastore`` (a cold start's
PBS_HOME and PostgreSQL), ``namespace`` (the holder process), ``processes`` (lock files, client
processes, the state file) and ``jobs`` (qstat, qdel, pbsnodes); ``build`` (finding or building
OpenPBS), ``packages`` (Debian packages and binaries), ``config`` (address, ports, queues),
``qstat`` (parsing ``qstat -f``) and ``__main__`` (the command line).
"""

from __future__ import annotations

from rigs.slurm_rig import RigError, create_user, remove_user  # shared process and user helpers

from .build import (
    CACHE_ENV,
    PREFIX_ENV,
    SOURCE_ENV,
    OpenPBSMissing,
    build_info,
    build_openpbs,
    cache_root,
    locate_openpbs,
    source_tarball,
)
from .config import ADDRESS, DEFAULT_PORTS, DEFAULT_QUEUES, Queue, pbs_size
from .packages import (
    BUILD_DEBIAN_PACKAGES,
    DEBIAN_PACKAGES,
    RUN_DEBIAN_PACKAGES,
    ensure_debian_packages,
    missing_debian_packages,
    require_binaries,
)
from .qstat import parse_qstat_f
from .rig import OpenPBSRig

__all__ = [
    "ADDRESS",
    "BUILD_DEBIAN_PACKAGES",
    "CACHE_ENV",
    "DEBIAN_PACKAGES",
    "DEFAULT_PORTS",
    "DEFAULT_QUEUES",
    "PREFIX_ENV",
    "RUN_DEBIAN_PACKAGES",
    "SOURCE_ENV",
    "OpenPBSMissing",
    "OpenPBSRig",
    "Queue",
    "RigError",
    "build_info",
    "build_openpbs",
    "cache_root",
    "create_user",
    "ensure_debian_packages",
    "locate_openpbs",
    "missing_debian_packages",
    "parse_qstat_f",
    "pbs_size",
    "remove_user",
    "require_binaries",
    "source_tarball",
]
