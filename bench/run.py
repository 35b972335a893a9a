"""Run the benchmark suite: ``python -m bench.run`` (``nox -s bench`` runs it).

    python -m bench.run [--out .bench/results.json] [--repeat 5] [--tiny] [--only NAME]... [--keep]

Prints a table and writes the results (a JSON list of entries, see ``bench.cases``)
atomically to ``--out``. ``--tiny`` is the test suite's check that the code runs:
one run of each figure and the smallest sizes (2 kernels, 2 users, 2,000 files),
skipping nothing. Run from the repository root (it imports ``rigs``).
Exit status 1 if a benchmark failed to run (its entry says why); a missed goal is
a result, not a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("name", "value", "unit", "baseline", "baseline value", "ratio [min-max]", "goal", "met?")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=".bench/results.json", help="where to write the results (JSON)")
    p.add_argument("--repeat", type=int, default=None, help="runs per figure (default 5; 1 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="the smallest case of everything, one run each")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (builds, hub logs)")
    p.add_argument(
        "--compare",
        metavar="FILE",
        help="then compare with an earlier results file: name every figure whose median ratio moved "
        "beyond the spread of both runs (exit 1 if one did)",
    )
    return p


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def table(results: list[dict[str, Any]]) -> str:
    """The results as an aligned text table (one row per figure)."""
    rows = []
    for r in results:
        if r.get("skipped") or r.get("error"):
            why = f"skipped: {r['skipped']}" if r.get("skipped") else f"FAILED: {r['error']}"
            rows.append((r["name"], "-", r["unit"], r["baseline"], "-", "-", r["goal"], why))
            continue
        met = "-" if r["met"] is None else _fmt(r["met"])
        ratio = _fmt(r["ratio"])
        if r.get("ratio_spread") and len(r["ratio_spread"]) == 3 and r.get("runs", 1) > 1:
            low, _, high = r["ratio_spread"]
            ratio += f" [{_fmt(low)}-{_fmt(high)}]"
        if r.get("unsteady"):
            ratio += " (capped)"
        rows.append(
            (
                r["name"],
                _fmt(r["value"]),
                r["unit"],
                r["baseline"],
                _fmt(r["baseline_value"]),
                ratio,
                r["goal"],
                met,
            )
        )
    widths = [max(len(str(row[i])) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    head = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()
    return "\n".join([head, "  ".join("-" * w for w in widths), *lines])


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from rigs.hubsite import test_cache

    from bench import cases  # after sys.path: it imports rigs

    names = [n for n, _ in cases.CASES]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        print(
            f"bench: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    repeat = args.repeat or (1 if args.tiny else 5)
    # Measure as hubstock runs in production: Python writes (and then reuses) bytecode caches.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    # uv's downloads are cached between runs, as the tests do (the root's own cache is per run).
    os.environ.setdefault("UV_CACHE_DIR", str(test_cache() / "uv"))

    def say(msg: str) -> None:
        print(f"bench: {msg}", flush=True)

    work = cases.world_tmp()
    b = cases.Bench(work=work, repeat=repeat, tiny=args.tiny, say=say)
    say(f"scratch folder {work}; {repeat} run(s) per figure{' (tiny)' if args.tiny else ''}")
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for name, fn in cases.CASES:
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            b.failures, b.unsteady = [], []
            say(f"{name}...")
            try:
                entries = fn(b)
            except Exception as e:  # one broken benchmark must not hide the others' figures
                traceback.print_exc()
                entries = [{**cases.result(name, None, "-", "-", None, "-"), "error": str(e).splitlines()[0]}]
            for e in entries:
                e["bench_seconds"] = round(time.perf_counter() - t0, 1)
                if b.failures:
                    e["failed_runs"] = b.failures
                if b.unsteady:
                    e["unsteady"] = b.unsteady
            results += entries
            say(f"{name} done in {time.perf_counter() - t0:.0f} s")
    finally:
        # as the tests do: nothing the bench started may outlive it (a proxy reparented to init...)
        left = cases.stop_left_behind(work, say)
        if args.keep:
            say(f"kept {work}")
        else:
            cases.remove_work(work)
    if left:
        results.append(
            {
                **cases.result("leftovers", None, "-", "-", None, "no process left"),
                "error": f"{len(left)} process(es) the bench started were still running at its end "
                f"(stopped now): {', '.join(c.split(' ', 1)[0] for _, c in left)}",
                "left": [{"pid": pid, "cmdline": c} for pid, c in left],
            }
        )
    out = Path(args.out)
    write_json(out, results)
    print()
    print(table(results))
    print(f"\n{len(results)} figure(s) in {time.perf_counter() - started:.0f} s; written to {out}")
    code = 1 if any(r.get("error") for r in results) else 0
    if args.compare:
        from bench.compare import compare_files

        code = max(code, compare_files(Path(args.compare), out))
    return code


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # py-rattler's runtime can abort the interpreter at exit (see hubstock.cli.entry)
