"""``optimlab`` command line: registers the subcommands; each subcommand module parses its own
arguments and calls the library.

    optimlab compare [...]            compare optimizers on tasks (table, plots, HTML report)
    optimlab trajectories [...]       optimizer paths on a 2-D test function
    optimlab lr-find [...]            LR range test: a suggested learning rate for an optimizer on a task
    optimlab lr-sweep [...]           learning-rate sensitivity over a log grid (DeepOBS protocol)
    optimlab tasks [--json]           the lab's tasks
    optimlab optimizers [--json]      the registry: names, defaults, capabilities
"""

from __future__ import annotations

import argparse
import sys

from . import compare as _compare
from . import lr_find as _lr_find
from . import lr_sweep as _lr_sweep
from . import optimizers as _optimizers
from . import tasks as _tasks
from . import trajectories as _trajectories

SUBCOMMANDS = {"compare": _compare, "trajectories": _trajectories, "tasks": _tasks, "optimizers": _optimizers,
               "lr-find": _lr_find, "lr-sweep": _lr_sweep}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optimlab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return SUBCOMMANDS[args.command].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
