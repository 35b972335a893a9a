"""hubstock's benchmark suite: ``nox -s bench`` (or ``python -m bench.run``), see BENCHMARKS.md.

``bench.cases`` has one function per benchmark; each builds what it needs with the
real ``hubstock`` command on the offline test channel (``rigs``) and returns
result entries. ``bench.run`` runs them all, prints a table and writes
``.bench/results.json``. ``bench.phases`` times the phases of one build in-process.
"""
