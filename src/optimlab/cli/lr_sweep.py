"""``optimlab lr-sweep``: learning-rate sensitivity (DeepOBS protocol): per optimizer a short run
at every rate of a log grid from 1e-5 to 1e2; prints each optimizer's best rate and its
too-small / good / too-large regions, writes the records and the plot of loss against rate.

    optimlab lr-sweep --task digits-mlp --optimizers sgd,adam
    optimlab lr-sweep --task breast-cancer-logreg --optimizers sgd:momentum=0.9,adam --per-decade 4 --json
    optimlab lr-sweep --task my_pkg.tasks:make_task --optimizers sgd,adam --per-decade 2
"""

from __future__ import annotations

import json
import os
import sys

from ._common import (add_executor_arguments, add_task_argument, executor_from_args, fail, fraction, help_texts,
                      positive_float, positive_int, writable_dir)


def add_parser(sub) -> None:
    p = sub.add_parser("lr-sweep", help="learning-rate sensitivity: short runs over a log grid of rates",
                       **help_texts(__doc__))
    add_task_argument(p)
    p.add_argument("--optimizers", default="sgd,adam", metavar="SPECS",
                   help="comma-separated optimizers with options but no lr (default sgd,adam), "
                        "e.g. 'sgd:momentum=0.9,adam:betas=(0.9,0.99)'")
    p.add_argument("--per-decade", type=positive_int, default=5, metavar="N",
                   help="grid points per factor of 10 (default 5: DeepOBS's 36 rates)")
    p.add_argument("--lo", type=positive_float, default=1e-5, metavar="LR", help="smallest rate (default 1e-5)")
    p.add_argument("--hi", type=positive_float, default=1e2, metavar="LR", help="largest rate (default 1e2)")
    p.add_argument("--lrs", metavar="LR,LR,...", help="explicit comma-separated rates instead of the grid")
    p.add_argument("--epochs", type=positive_int, metavar="N",
                   help="epochs per run (default: a quarter of the task's budget)")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N", help="seeds per rate (default 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=positive_int, metavar="N", help="mini-batch size (default: the task's)")
    g.add_argument("--full-batch", action="store_true", help="full-batch gradient descent")
    p.add_argument("--good", type=fraction, default=0.9, metavar="FRACTION",
                   help="'good': the loss fell by at least this fraction of the best run's drop (default 0.9)")
    p.add_argument("--out", default="runs/lr-sweep", metavar="DIR", help="output folder (default runs/lr-sweep)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="parallel runs (default: number of cores)")
    add_executor_arguments(p)
    p.add_argument("--json", action="store_true",
                   help="print best_lr, regions and the grid as JSON on stdout (progress still goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _span(span) -> str:
    if span is None:
        return "none"
    return f"{span[0]:g}" if span[0] == span[1] else f"{span[0]:g} .. {span[1]:g}"


def _rates(text: str) -> list[float]:
    try:
        lrs = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lrs {text!r} is not a list of numbers: write e.g. --lrs 1e-3,1e-2,0.1") from None
    bad = [v for v in lrs if not 0 < v < float("inf")]
    if not lrs or bad:
        raise ValueError(f"--lrs {text!r}: every rate must be a number above 0, e.g. --lrs 1e-3,1e-2,0.1")
    return lrs


def run(args) -> int:
    from ..lab.runner import Interrupted, check_optimizer, resolve_start_method, split_optimizers
    from ..lab.sweep import lr_sweep
    from .lr_find import slug

    batch = None if args.full_batch else (args.batch_size if args.batch_size is not None else "task")
    try:
        lrs = _rates(args.lrs) if args.lrs else None
        if lrs is None and args.hi <= args.lo:
            raise ValueError(f"--hi {args.hi:g} is not above --lo {args.lo:g}")
        optimizers = split_optimizers(args.optimizers)
        for text in optimizers:
            if "lr" in check_optimizer(text, args.task, without_lr=True)[1]:
                raise ValueError(f"the sweep sets the learning rate: drop lr= from {text!r}")
        resolve_start_method()  # a bad $OPTIMLAB_START_METHOD
        executor = executor_from_args(args)  # --ray-address without --executor ray; Ray not installed
        writable_dir(args.out)
    except (KeyError, ValueError) as e:
        return fail("lr-sweep", e)
    records = os.path.join(args.out, "records.jsonl")
    try:
        result = lr_sweep(args.task, optimizers, lrs, per_decade=args.per_decade, lo=args.lo,
                          hi=args.hi, epochs=args.epochs, seeds=args.seeds, batch_size=batch, workers=args.workers,
                          path=records, good=args.good, progress=not args.quiet, executor=executor)
    except (KeyError, ValueError, ConnectionError) as e:
        return fail("lr-sweep", e)
    except Interrupted as e:
        print(f"\ninterrupted: {e.saved}/{e.total} runs saved in {args.out}; run the same command again to finish",
              file=sys.stderr)
        return 130
    png = os.path.join(args.out, f"{slug(args.task)}-lr-sweep.png")
    result.plot().savefig(png, dpi=120)
    if args.json:
        print(json.dumps(dict(result.as_dict(), plot=png), indent=2))
        return 0
    for opt, rows in result.rows.items():
        print(f"\n{args.task}, {opt} ({result.epochs} epochs, {rows[0]['budget_steps']} steps per run)")
        print(f"  {'lr':>9}  {'final loss':>10}  {'best loss':>10}  {'steps':>6}  region")
        for r in rows:
            flag = " (diverged, stopped early)" if r["stopped_early"] else " (diverged)" if r["diverged"] else ""
            print(f"  {r['lr']:>9g}  {_fmt(r['final_loss']):>10}  {_fmt(r['best_loss']):>10}  {r['steps']:>6}  "
                  f"{r['region']}{flag}")
        reg = result.regions[opt]
        best = result.best_lr[opt]
        print(f"  best lr {best:g}" if best is not None else "  no rate trained without diverging", end="")
        print("; " + "; ".join(f"{name}: {_span(reg[name])}" for name in ("too small", "good", "too large")))
    print(f"\nrecords: {records}\nplot:    {png}")
    return 0
