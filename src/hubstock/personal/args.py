"""The arguments of ``hubstock mine``: argparse only, so that the command line is parsed before
anything heavy is imported (``hubstock publish`` starts its smoke-test worker right after)."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    mine = sub.add_parser(
        "mine", help="your own environments: a few packages on a stock kernel, built as your batch job"
    )
    ms = mine.add_subparsers(dest="mine_command", required=True, metavar="ACTION")
    cr = ms.add_parser(
        "create", help="lock and build an environment as a batch job; its kernel appears in your next server"
    )
    cr.add_argument("name", help="its name: lowercase letters, digits, '-' and '_' (e.g. 'analysis')")
    cr.add_argument("packages", nargs="*", metavar="PKG", help="packages to add, e.g. tabulate 'humanize>=4'")
    cr.add_argument(
        "-r", "--requirements", action="append", default=[], metavar="FILE", help="a requirements file"
    )
    cr.add_argument(
        "--from",
        dest="base",
        metavar="KERNEL",
        help="the stock kernel (or env) to build on (default: the default kernel)",
    )
    cr.add_argument(
        "--replace",
        action="store_true",
        help="build it again (its kernel changes only when the new build passes)",
    )
    cr.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    cr.add_argument("--json", action="store_true", help="machine-readable output")
    ls = ms.add_parser("list", help="your environments, their state, and whether their stock base changed")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    sh = ms.add_parser("show", help="one environment: what it has, its build job, the end of its log")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true", help="machine-readable output")
    lk = ms.add_parser("lock", help="print an environment's lock (PEP 751), to rebuild it elsewhere")
    lk.add_argument("name")
    vf = ms.add_parser("verify", help="re-hash an environment's build against the files it recorded")
    vf.add_argument("name")
    rm = ms.add_parser(
        "remove", help="remove an environment, its builds and its kernel (cancels its build job)"
    )
    rm.add_argument("name")
    rm.add_argument("--json", action="store_true", help="machine-readable output")
    bj = ms.add_parser("build-job", help="(run by the build job) lock, build and test an environment")
    bj.add_argument("name")
    for p in ms.choices.values():
        p.description = f"hubstock mine {p.prog.split()[-1]}: {next(a.help for a in ms._choices_actions if a.dest == p.prog.split()[-1])}."
