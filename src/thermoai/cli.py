"""The ``thermoai`` command (also ``python -m thermoai``).

    thermoai reproduce [NAME ...] [--out DIR] [--quick]   run the headline experiments, write reports
    thermoai memory build|ask ...                        Extended Mind memory banks (see ``--help``)
    thermoai thermo logistic [--device pcb|chip|ideal]  sample a posterior on the simulated logistic circuit
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from thermoai.experiments import EXPERIMENTS


def _reproduce(args: argparse.Namespace) -> int:
    names = args.names or list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"== {name} ==", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(EXPERIMENTS[name])
        module.run(out, quick=args.quick)
        print(f"== {name}: done in {time.perf_counter() - start:.0f} s; report {out / (name + '.md')}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thermoai", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the headline experiments and write their reports")
    rep.add_argument("names", nargs="*", help=f"experiments to run (default all): {', '.join(EXPERIMENTS)}")
    rep.add_argument("--out", default="docs/results", help="folder for reports (default docs/results)")
    rep.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    rep.set_defaults(func=_reproduce)
    mem = sub.add_parser("memory", help="Extended Mind memory banks: build, ask", add_help=False)
    mem.add_argument("rest", nargs=argparse.REMAINDER)
    mem.set_defaults(func=lambda a: importlib.import_module("thermoai.memory.commands").main(a.rest))
    thermo = sub.add_parser("thermo", add_help=False,
                            help="posterior circuits on the simulated device: thermoai thermo logistic")
    thermo.add_argument("rest", nargs=argparse.REMAINDER)
    thermo.set_defaults(func=lambda a: importlib.import_module("thermoai.thermo.circuits.commands").main(a.rest))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "memory":  # its own parser, so that `thermoai memory --help` reaches it
        return int(importlib.import_module("thermoai.memory.commands").main(argv[1:]))
    if argv and argv[0] == "thermo":  # likewise for `thermoai thermo --help`
        return int(importlib.import_module("thermoai.thermo.circuits.commands").main(argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
