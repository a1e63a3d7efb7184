"""``optimlab trajectories``: paths of several optimizers on a 2-D test function, as a plot.

    optimlab trajectories --function rosenbrock --optimizers sgd:lr=1e-3,momentum=0.9,adam:lr=0.05
    optimlab trajectories --function himmelblau --steps 200 --json
"""

from __future__ import annotations

import json
import math
import os

from ._common import fail, help_texts, positive_int, writable_dir


def add_parser(sub) -> None:
    from ..lab.tasks import TEST_FUNCTIONS
    from ..lab.trajectories import DEFAULT_TRAJECTORY_OPTIMIZERS

    default = ",".join(DEFAULT_TRAJECTORY_OPTIMIZERS)
    p = sub.add_parser("trajectories", help="plot optimizer paths on a 2-D test function", **help_texts(__doc__))
    p.add_argument("--function", default="rosenbrock", choices=list(TEST_FUNCTIONS),
                   help="the test function (default rosenbrock): " + ", ".join(TEST_FUNCTIONS))
    p.add_argument("--optimizers", default=default, metavar="SPECS",
                   help="comma-separated optimizers with options, e.g. sgd:lr=1e-3,momentum=0.9,adam:lr=0.05 "
                        f"(default {default})")
    p.add_argument("--steps", type=positive_int, default=500, metavar="N", help="optimizer steps (default 500)")
    p.add_argument("--out", default="runs/trajectories", metavar="DIR",
                   help="folder for the plot (default runs/trajectories)")
    p.add_argument("--json", action="store_true", help="print each optimizer's end point and f - f* as JSON")


def run(args) -> int:
    import torch

    from .. import plots
    from ..lab.runner import check_optimizer, split_optimizers
    from ..lab.tasks import TEST_FUNCTIONS
    from ..lab.trajectories import trajectories

    try:
        optimizers = split_optimizers(args.optimizers)
        for text in optimizers:
            check_optimizer(text, args.function)
        writable_dir(args.out)
        paths = trajectories(args.function, optimizers, steps=args.steps)
    except (KeyError, ValueError) as e:
        return fail("trajectories", e)
    tf = TEST_FUNCTIONS[args.function]
    fig = plots.trajectories(tf, paths)
    png = os.path.join(args.out, f"{args.function}.png")
    fig.savefig(png, dpi=120)
    ends = {}
    for k, v in paths.items():
        gap = float(tf.f(torch.tensor(v[-1])) - tf.f_min)
        ends[k] = {"end": v[-1].tolist(), "steps": len(v) - 1, "f_minus_fmin": gap if math.isfinite(gap) else None}
    if args.json:
        print(json.dumps({"plot": png, "function": args.function, "optimizers": ends}, indent=2))
    else:
        for k, e in ends.items():
            gap = "-" if e["f_minus_fmin"] is None else f"{e['f_minus_fmin']:.3g}"
            stop = f"  (diverged after {e['steps']} steps)" if e["steps"] < args.steps else ""
            print(f"{k:<32} end ({e['end'][0]:.4f}, {e['end'][1]:.4f})  f - f* = {gap}{stop}")
        print(f"plot: {png}")
    return 0
