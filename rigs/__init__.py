"""The rigs: real parts that the tests, the benchmarks and `nox -s demo` start and stop themselves.

- ``rigs.channel``: the offline conda channel (this Python repackaged, plus small packages);
- ``rigs.slurm_rig``: a private single-node Slurm with its PBS (Torque) commands;
- ``rigs.hubsite`` and ``rigs.hub_rig``: a published site, and JupyterHub with its proxy on it;
- ``rigs.demo``: the whole hub on 127.0.0.1, offline (``nox -s demo``).

They live beside the engine, not in it: the ``hubstock`` wheel never ships them.
"""
