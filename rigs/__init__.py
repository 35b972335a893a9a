"""The rigs: real parts that the tests, the benchmarks and `nox -s demo` start and stop themselves.

- ``rigs.channel``: the offline conda channel (this Python repackaged, plus small packages);
- ``rigs.slurm_rig``: a private single-node Slurm with its PBS (Torque) commands;
- ``rigs.openpbs``: a private single-node OpenPBS (PBS Pro) in its own network namespace,
  built once from its source tarball;
- ``rigs.clusters``: one interface over both schedulers for the hub tests;
- ``rigs.postgres_rig``: a private PostgreSQL server for the hub's database;
- ``rigs.hubsite`` and ``rigs.hub_rig``: a published site, and JupyterHub with its proxy on it;
- ``rigs.demo``: the whole hub on 127.0.0.1, offline (``nox -s demo``).

Each starts what it needs with free ports and private folders, and stops it by PID. They live
beside the engine, not in it: the ``hubstock`` wheel never ships them.
"""
