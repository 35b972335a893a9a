"""Compare two results files of ``python -m bench.run``: which figures moved beyond their spread.

    python -m bench.compare BEFORE.json AFTER.json      (or: python -m bench.run ... --compare BEFORE.json)

A figure *moved* when its median ratio in each run lies outside the other run's spread
(``ratio_spread``: the min and max of its paired sample/baseline ratios), and the medians differ
by more than the bench's band (:data:`BAND`, 10%: the steadiness a figure's rounds are run to,
:mod:`bench.cases.common`). Each run's noise is its own spread, so a change inside either is not
told from noise; and two runs minutes apart differ by more than the rounds of one run do (the
machine's state drifts: its page cache, its disk's write-back), so a change within the band is
not told from that drift. A figure without a spread (one run) counts its single ratio as both
ends. Prints one line per figure that moved, faster or slower, and one line per figure found in
only one of the files; exit 1 if a figure moved.
No product code knows about it: it reads the two JSON files only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: the bench's resolution: a figure is run until its rounds' ratios spread (interquartile range) within
#: this fraction of their median (:mod:`bench.cases.common`), and a change of a median ratio by less
#: than it is not a change
BAND = 0.10


def _figures(results: list[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    """name -> (min, median, max) of its ratio, for the figures that have one."""
    out = {}
    for r in results:
        ratio = r.get("ratio")
        if r.get("skipped") or r.get("error") or not isinstance(ratio, int | float):
            continue
        spread = r.get("ratio_spread")
        if isinstance(spread, list) and len(spread) == 3 and all(isinstance(x, int | float) for x in spread):
            out[r["name"]] = (float(spread[0]), float(ratio), float(spread[2]))
        else:
            out[r["name"]] = (float(ratio), float(ratio), float(ratio))
    return out


def moved(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """One line per figure whose median ratio moved beyond the spread of both runs and the band."""
    a, b = _figures(before), _figures(after)
    lines = []
    for name in sorted(a.keys() & b.keys()):
        (lo_a, med_a, hi_a), (lo_b, med_b, hi_b) = a[name], b[name]
        outside_a = not lo_a <= med_b <= hi_a
        outside_b = not lo_b <= med_a <= hi_b
        beyond_band = abs(med_b - med_a) > BAND * abs(med_a)
        if outside_a and outside_b and beyond_band:
            way = "slower" if med_b > med_a else "faster"
            was, now = f"{med_a:.3g} [{lo_a:.3g}-{hi_a:.3g}]", f"{med_b:.3g} [{lo_b:.3g}-{hi_b:.3g}]"
            lines.append(f"{name}: {way}: ratio {was} -> {now}")
    return lines


def compare_files(before: Path, after: Path, out: Any = None) -> int:
    """Print the comparison of two results files; 1 if a figure moved, 2 if a file is unusable."""
    out = out or sys.stdout
    runs = []
    for path in (before, after):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(
                f"bench: {path} cannot be read as a results file ({e}); give the --out of an earlier run.",
                file=out,
            )
            return 2
        if not isinstance(data, list):
            print(f"bench: {path} is not a results file (a JSON list of figures).", file=out)
            return 2
        runs.append(data)
    lines = moved(runs[0], runs[1])
    a, b = _figures(runs[0]), _figures(runs[1])
    print(f"\ncompared with {before}:", file=out)
    for line in lines:
        print(f"  MOVED {line}", file=out)
    for name in sorted(a.keys() ^ b.keys()):
        print(f"  only in {before if name in a else after}: {name}", file=out)
    print(
        f"  {len(lines)} of {len(a.keys() & b.keys())} figure(s) moved beyond their spread and {BAND:.0%}",
        file=out,
    )
    return 1 if lines else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.compare BEFORE.json AFTER.json", file=sys.stderr)
        return 2
    return compare_files(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
