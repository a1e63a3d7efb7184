"""``optimlab`` command line: registers the subcommands; each subcommand module parses its own
arguments and calls the library.

    optimlab compare [...]            compare optimizers on tasks (table, plots, HTML report)
    optimlab trajectories [...]       optimizer paths on a 2-D test function
    optimlab lr-find [...]            LR range test: a suggested learning rate for an optimizer on a task
    optimlab lr-sweep [...]           learning-rate sensitivity over a log grid (DeepOBS protocol)
    optimlab benchmark [...]          performance profiles of optimizers across the learning tasks
    optimlab tasks [--json]           the lab's tasks
    optimlab optimizers [--json]      the registry: names, defaults, capabilities

A user's mistake (a bad value, an unknown name, a folder that cannot be written) ends with one
line on stderr and exit status 2, before any training; Ctrl-C with status 130.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import benchmark as _benchmark
from . import compare as _compare
from . import lr_find as _lr_find
from . import lr_sweep as _lr_sweep
from . import optimizers as _optimizers
from . import tasks as _tasks
from . import trajectories as _trajectories
from ._common import PROG, HelpFormatter, Parser

SUBCOMMANDS = {"compare": _compare, "trajectories": _trajectories, "tasks": _tasks, "optimizers": _optimizers,
               "lr-find": _lr_find, "lr-sweep": _lr_sweep, "benchmark": _benchmark}

DESCRIPTION = """\
optimlab compares PyTorch optimizers fairly -- the same tasks, budget and seeds for each --
and prints which converges faster and which generalizes better, with plots and an HTML report.
It also suggests learning rates (LR range test, sensitivity sweep) and draws optimizer paths
on 2-D test functions. Nothing is downloaded: the data ships with scikit-learn or is generated."""

EPILOG = """\
examples:
  optimlab compare                                  # SGD+momentum vs Adam on digits-cnn: one-shot and tuned, 5 seeds
  optimlab compare --task mnist1d-mlp --optimizers 'sgd:lr=0.1,momentum=0.9,adam:lr=1e-2,betas=(0.9,0.99)'
  optimlab lr-find --task digits-mlp --optimizer adam
  optimlab tasks; optimlab optimizers               # what can be compared

Run `optimlab COMMAND --help` for a command's options."""


def _version() -> str:
    import platform

    import torch

    from .. import __version__

    return f"{PROG} {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


class _Version(argparse.Action):
    """``--version``, formatted only when asked (it imports torch)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``optimlab`` parser with every subcommand's."""
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the versions of optimlab, torch and Python")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", help="what to do (each has its own --help)")
    for module in SUBCOMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``optimlab ARGS``; returns the exit status. Called as the program (``argv`` None),
    an interrupted command exits at once: what finished is already saved, and the
    interpreter's teardown (torch, scikit-learn) would take seconds more."""
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        status = SUBCOMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt:
        print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr)
        status = 130
    except BrokenPipeError:  # `optimlab ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if status == 130 and as_program:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return status


if __name__ == "__main__":
    sys.exit(main())
