"""The ``thermoai`` command (also ``python -m thermoai``).

```
thermoai reproduce [NAME ...] [--quick | --full] [--out DIR] [--seed N]   the papers' experiments, one report
thermoai memory build|ask ...                        Extended Mind memory banks (see --help)
thermoai thermo logistic [--device pcb|chip|ideal]  sample a posterior on the simulated logistic circuit
```
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from pathlib import Path

from thermoai import __version__
from thermoai.experiments import EXPERIMENTS

DESCRIPTION = (
    "thermoai: physics-based and probabilistic AI in PyTorch (Bayesian learning, a simulator of "
    "thermodynamic hardware, thermodynamic K-FAC and Extended Mind Transformers). This command reproduces "
    "the results of the four papers the library implements, and asks a language model questions about a "
    "long document kept in its memory."
)


def _reproduce_epilog() -> str:
    from thermoai.experiments.report import duration, module_info

    lines = ["experiments (run time on 2 CPU cores, quick / full):"]
    for name in EXPERIMENTS:
        info = module_info(name)
        times = f"{duration(info['run_time'].get('quick'))} / {duration(info['run_time'].get('full'))}"
        lines.append(f"  {name:<18} {times:<16} {info['title']}")
    lines += ["", "examples:", "  thermoai reproduce --quick                 all experiments, small sizes (a smoke test)",
              "  thermoai reproduce cold_posterior --full   one experiment at the sizes of docs/results/",
              "  thermoai reproduce --rebuild --out docs/results   remake report.md from saved results"]
    return "\n".join(lines)


def _reproduce(args: argparse.Namespace) -> int:
    from thermoai.experiments import report

    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    out = Path(args.out) if args.out else (Path("docs/results") if mode == "full" else Path("out") / mode)
    command = "thermoai " + " ".join(args.argv)
    try:
        if args.rebuild:
            outcomes = report.rebuild(out, args.names or None, command=command)
            status = 0
        else:
            outcomes, status = report.reproduce(args.names, out, mode, args.seed, command, progress=not args.no_progress)
    except report.OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        if "unknown experiment" not in str(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    print(f"report: {out / 'report.md'} (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")", flush=True)
    return status


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser(
        "reproduce", help="run the papers' experiments and write one report with a verdict per paper",
        description=textwrap.fill("Run the experiments and write DIR/report.md (a section per paper: the claim, "
                                  "what was measured, the plot, a verdict), DIR/results.json and each experiment's "
                                  "own page. A failing experiment is reported as failed and the others still run.", 100),
        epilog=_reproduce_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default: all of them)")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes: a smoke test in minutes (what make run runs)")
    size.add_argument("--full", action="store_true", help="the sizes of docs/results/ (the default)")
    size.add_argument("--smoke", action="store_true", help="the tiniest sizes, to check the plumbing (tests)")
    size.add_argument("--rebuild", action="store_true", help="run nothing: remake the report from the NAME.json in DIR")
    rep.add_argument("--out", metavar="DIR", help="output folder (default docs/results with --full, out/quick with "
                                                   "--quick, out/smoke with --smoke)")
    rep.add_argument("--seed", type=int, metavar="N", help="seed passed to the experiments that take one (default: "
                                                           "their own fixed seeds)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.set_defaults(func=_reproduce)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thermoai", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"thermoai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands")
    _add_reproduce(sub)
    mem = sub.add_parser("memory", add_help=False,
                         help="build a memory bank from a long document, then ask a language model about it")
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
    args.argv = argv
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
