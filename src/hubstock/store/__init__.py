"""The shared root's contract: its layout, and typed, versioned records.

``store`` is what the admin wing (writing builds and generations) and the hub wing
(reading the current generation, writing sessions and audit lines) share. It uses
the standard library and pydantic only; nothing else reads or writes the root's
records or spells their file names.

- :mod:`.root`: the layout (:class:`~.root.Root`), the root's lock, the audit log;
- :mod:`.records`: the versioned records (provenance, manifest, session, audit line);
- :mod:`.builds`: is a build complete, which build is current, provenance;
- :mod:`.generations`: which generation is current (resolved once), what it holds;
- :mod:`.sessions`: the running servers' records;
- :mod:`.perms`: who may read and write what on the root, whatever the umask;
- :mod:`.buildlock`: the copy of its lock each build keeps, read back only from inside the build;
- :mod:`.catalog`: what users may know of the published generations (cached reads);
- :mod:`.diff`: what changed between two generations (pure), for ``hubstock diff`` and the hub's page;
- :mod:`.fs`: atomic writes, renames and removal.
"""
