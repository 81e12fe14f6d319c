"""Command line: ``python -m orchestrator COMMAND ...`` (also installed as ``rnn-orchestrator``).

Each subcommand is a pair of small functions, ``_add_X(subparsers)`` declaring its arguments and
``cmd_X(args) -> int`` running it, registered once in :data:`COMMANDS`. Exit status: 0 success,
2 a bad spec or bad arguments. A bad spec never prints a traceback: every problem is one line on
stderr, ``FILE: dotted.path: what is wrong (got X)``.

Keep imports of torch and ray inside the commands that need them: ``validate`` and ``plan``
must answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from orchestrator.errors import SpecError

if TYPE_CHECKING:
    from orchestrator.spec import JobSpec
    from orchestrator.sweep import Trial

EXIT_OK = 0
EXIT_BAD_SPEC = 2


def load_or_report(path: str) -> Optional[tuple["JobSpec", list["Trial"]]]:
    """The spec and its trials, or None after printing every problem to stderr (no traceback)."""
    from orchestrator.spec import load_spec
    from orchestrator.sweep import expand

    try:
        spec = load_spec(path)
        return spec, expand(spec)
    except SpecError as e:
        for line in e.lines(path):
            print(line, file=sys.stderr)
    except OSError as e:  # load_spec reports unreadable files itself; this is a last guard
        print(f"{path}: cannot read the spec: {e.strerror or e}", file=sys.stderr)
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    """Check specs without running anything: ``FILE: ok (N trials)`` or every problem."""
    status = EXIT_OK
    for path in args.specs:
        loaded = load_or_report(path)
        if loaded is None:
            status = EXIT_BAD_SPEC
            continue
        n = len(loaded[1])
        print(f"{path}: ok ({n} trial{'' if n == 1 else 's'})")
    return status


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check job specs; run nothing",
                       description="Check job specs (schema, ranges, cross-field rules, sweep) and run nothing.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="job spec YAML file(s)")
    p.set_defaults(func=cmd_validate)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print a job's trials, resources, local concurrency and a rough time estimate."""
    from orchestrator.plan import local_gpu_count, render_plan

    loaded = load_or_report(args.spec)
    if loaded is None:
        return EXIT_BAD_SPEC
    spec, trials = loaded
    cpus = args.cpus if args.cpus is not None else (os.cpu_count() or 1)
    gpus = args.gpus if args.gpus is not None else local_gpu_count()
    print(render_plan(spec, trials, args.spec, cpus, gpus))
    return EXIT_OK


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the trials a job would run; run nothing",
                       description="Show a job's trials (id, swept values), the resources each reserves, how many "
                                   "run at once on this machine, and a rough time estimate. Dispatches nothing.")
    p.add_argument("spec", metavar="SPEC", help="job spec YAML file")
    p.add_argument("--cpus", type=_non_negative, default=None, help="plan for this many CPUs (default: this machine's)")
    p.add_argument("--gpus", type=_non_negative, default=None, help="plan for this many GPUs (default: this machine's)")
    p.set_defaults(func=cmd_plan)


#: Every subcommand's parser builder, in the order ``--help`` lists them.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_validate, _add_plan]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Run recurrent language-model experiments from YAML job specs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status."""
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))
