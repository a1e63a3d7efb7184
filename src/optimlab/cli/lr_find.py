"""``optimlab lr-find``: the LR range test on a task for one optimizer, over seeds; prints every
rule's suggestion and writes the plot of loss against learning rate.

    optimlab lr-find --task digits-mlp --optimizer adam
    optimlab lr-find --task breast-cancer-logreg --optimizer sgd:momentum=0.9 --seeds 3 --json
    optimlab lr-find --task my_pkg.tasks:make_task --optimizer adam      # your own model and data
"""

from __future__ import annotations

import json
import os
import re
import sys

from ._common import add_task_argument, fail, help_texts, positive_float, positive_int, unit_interval, writable_dir


def add_parser(sub) -> None:
    from ..lr_finder import DEFAULT_RULE, RULES

    p = sub.add_parser("lr-find", help="LR range test: suggest a learning rate for an optimizer on a task",
                       **help_texts(__doc__))
    add_task_argument(p)
    p.add_argument("--optimizer", default="adam", metavar="SPEC",
                   help="registry name with options but no lr, e.g. sgd:momentum=0.9 or 'adam:betas=(0.9,0.99)' "
                        "(default adam); names: `optimlab optimizers`")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="range tests with seeds 0..N-1; the spread is reported (default 1)")
    p.add_argument("--start", type=positive_float, default=1e-7, metavar="LR",
                   help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=positive_float, default=100.0, metavar="LR",
                   help="last learning rate, if it does not diverge first (default 100)")
    p.add_argument("--steps", type=positive_int, default=100, metavar="N",
                   help="mini-batches in the sweep (default 100)")
    p.add_argument("--mode", choices=["exp", "linear"], default="exp", help="how the rate grows (default exp)")
    p.add_argument("--smooth", type=unit_interval, default=0.9, metavar="BETA",
                   help="EMA factor of the loss smoothing, 0 for none (default 0.9)")
    p.add_argument("--rule", choices=list(RULES), default=DEFAULT_RULE,
                   help=f"rule for suggested_lr (default {DEFAULT_RULE})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=positive_int, metavar="N", help="mini-batch size (default: the task's)")
    g.add_argument("--full-batch", action="store_true", help="the whole training set every step")
    p.add_argument("--out", default="runs/lr-find", metavar="DIR", help="folder for the plot (default runs/lr-find)")
    p.add_argument("--json", action="store_true", help="print the suggestions as JSON on stdout")


def slug(text: str) -> str:
    """A file-name-safe form of an optimizer or task string: ``sgd:momentum=0.9`` -> ``sgd-momentum-0.9``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


#: range-test lengths ``--lr auto`` tries in turn: a slow starter (SGD with momentum on
#: digits-cnn) shows no 3 % drop in 100 steps and finds its rate in 400
AUTO_STEPS = (100, 400)


def found_lrs(task: str, optimizers: list[str], batch_size="task", log=sys.stderr) -> list[str]:
    """``optimizers`` with ``lr=`` added where none is given: the LR finder's suggestion on
    ``task`` (a range test of 100 steps, then of 400 if that found none), else the optimizer's
    default ``lr`` -- said so. What was chosen, and why, is printed to ``log``. Used by
    ``optimlab compare --lr auto``."""
    from .. import registry
    from ..lab import parse_optimizer
    from ..lab.sweep import lr_find_task

    out = []
    for text in optimizers:
        name, hyper = parse_optimizer(text)
        if "lr" in hyper:
            out.append(text)
            continue
        for steps in AUTO_STEPS:
            found = lr_find_task(task, text, batch_size=batch_size, steps=steps)
            if found.suggested_lr is not None:
                break
        if found.suggested_lr is not None:
            lr = float(f"{found.suggested_lr:.3g}")
            how = f"LR finder, {found.rule}, {steps}-step range test"
        else:
            lr = registry._spec(name).default_lr
            if lr is None:
                raise ValueError(f"the LR finder found no learning rate for {text!r} on {task} and the optimizer has "
                                 "no default lr; give one (lr=...)")
            how = (f"its default: the LR finder found none in {AUTO_STEPS[-1]} steps -- see `optimlab lr-find "
                   f"--task {task} --optimizer {text}`")
        print(f"{task}: {text} lr={lr:g} ({how})", file=log, flush=True)
        out.append(f"{text}{',' if ':' in text else ':'}lr={lr:g}")
    return out


def run(args) -> int:
    from ..lab.runner import check_optimizer
    from ..lab.sweep import lr_find_task
    from ..lr_finder import MIN_DROP

    batch = None if args.full_batch else (args.batch_size if args.batch_size is not None else "task")
    try:
        if args.end <= args.start:
            raise ValueError(f"--end {args.end:g} is not above --start {args.start:g}: the sweep grows the rate")
        check_optimizer(args.optimizer, args.task, without_lr=True)
        writable_dir(args.out)
    except (KeyError, ValueError) as e:
        return fail("lr-find", e)
    try:
        found = lr_find_task(args.task, args.optimizer, seeds=args.seeds, start=args.start, end=args.end,
                             steps=args.steps, mode=args.mode, smooth=args.smooth, batch_size=batch, rule=args.rule)
    except (KeyError, ValueError) as e:
        return fail("lr-find", e)
    png = os.path.join(args.out, f"{slug(args.task)}-{slug(args.optimizer)}.png")
    found.plot().savefig(png, dpi=120)
    if args.json:
        print(json.dumps(dict(found.as_dict(), plot=png), indent=2))
        return 0 if found.suggested_lr is not None else 1
    if found.suggested_lr is None:
        print(f"{args.task}, {args.optimizer}: no suggestion -- the smoothed loss never fell by "
              f"{MIN_DROP:.0%} before the sweep ended (flat, then diverging); try more --steps or a smaller --end")
        print(f"plot: {png}")
        return 1
    seeds = f"; spread over {args.seeds} seeds {found.spread[found.rule]:.2g}x" if args.seeds > 1 else ""
    print(f"{args.task}, {args.optimizer}: suggested lr {found.suggested_lr:.3g} ({found.rule}{seeds})")
    for rule, lr in found.suggestions.items():
        mark = "  <- suggested_lr" if rule == found.rule else ""
        print(f"  {rule:<18} {lr:.3g}{mark}" if lr is not None else f"  {rule:<18} -")
    stops = [f"{r.diverged_at:.3g}" for r in found.results if r.diverged_at is not None]
    if stops:
        print(f"  the loss diverged (sweep stopped) at lr {', '.join(stops)}")
    else:
        print(f"  the loss did not diverge up to lr {args.end:g}: raise --end to see where it does")
    print(f"plot: {png}")
    return 0
