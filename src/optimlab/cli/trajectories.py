"""``optimlab trajectories``: paths of several optimizers on a 2-D test function, as a plot.

    optimlab trajectories --function rosenbrock --optimizers sgd:lr=1e-3,momentum=0.9,adam:lr=0.05
"""

from __future__ import annotations

import json
import os
import sys

from .compare import split_optimizers


def add_parser(sub) -> None:
    from ..lab.trajectories import DEFAULT_TRAJECTORY_OPTIMIZERS

    p = sub.add_parser("trajectories", help="plot optimizer paths on a 2-D test function")
    p.add_argument("--function", default="rosenbrock", help="rosenbrock, beale, rastrigin, himmelblau, styblinski-tang")
    p.add_argument("--optimizers", default=",".join(DEFAULT_TRAJECTORY_OPTIMIZERS))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--out", default="runs/trajectories")
    p.add_argument("--json", action="store_true", help="print the end points as JSON")


def run(args) -> int:
    from .. import plots
    from ..lab.tasks import TEST_FUNCTIONS
    from ..lab.trajectories import trajectories

    try:
        paths = trajectories(args.function, split_optimizers(args.optimizers), steps=args.steps)
    except (KeyError, ValueError) as e:
        print(f"optimlab trajectories: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    tf = TEST_FUNCTIONS[args.function]
    fig = plots.trajectories(tf, paths)
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, f"{args.function}.png")
    fig.savefig(png, dpi=120)
    ends = {k: {"end": v[-1].tolist(), "steps": len(v) - 1, "f_minus_fmin": float(tf.f(__import__("torch").tensor(v[-1])) - tf.f_min)}
            for k, v in paths.items()}
    if args.json:
        print(json.dumps({"plot": png, "function": args.function, "optimizers": ends}, indent=2))
    else:
        for k, e in ends.items():
            print(f"{k:<32} end ({e['end'][0]:.4f}, {e['end'][1]:.4f})  f - f* = {e['f_minus_fmin']:.3g}")
        print(f"plot: {png}")
    return 0
