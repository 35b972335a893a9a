"""Users' own environments (``hubstock mine``): a few packages on top of a stock environment.

A personal environment is a venv on the stock build's interpreter that sees the stock build's
packages read-only (a ``.pth`` file names its site-packages) and installs only what the stock
lacks, from a lock with a hash for every file. It is locked, built and smoke-tested by a batch
job of its user (:mod:`.build`, submitted by :mod:`.job`), into the user's own folder
(``[personal] dir``); its kernel appears only once the build is complete and its kernel ran.

- :mod:`.layout`: where a user's environments, builds, locks and kernels are;
- :mod:`.request`: what a user may ask for (names, requirements, the base), checked: pure;
- :mod:`.build`: the job's work;
- :mod:`.job`: the batch script and the submission, as the spawner submits servers;
- :mod:`.commands`: ``hubstock mine create|list|show|remove|lock``, :mod:`.args` their arguments.
"""
