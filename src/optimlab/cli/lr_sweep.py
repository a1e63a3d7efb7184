"""``optimlab lr-sweep``: learning-rate sensitivity (DeepOBS protocol): per optimizer a short run
at every rate of a log grid from 1e-5 to 1e2; prints each optimizer's best rate and its
too-small / good / too-large regions, writes the records and the plot of loss against rate.

    optimlab lr-sweep --task digits-mlp --optimizers sgd,adam
    optimlab lr-sweep --task breast-cancer-logreg --optimizers sgd:momentum=0.9,adam --per-decade 4 --json
"""

from __future__ import annotations

import json
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("lr-sweep", help="learning-rate sensitivity: short runs over a log grid of rates",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="digits-mlp", help="task name (default digits-mlp); see `optimlab tasks`")
    p.add_argument("--optimizers", default="sgd,adam", help="comma-separated optimizers with options but no lr "
                                                           "(default sgd,adam), e.g. sgd:momentum=0.9,adam")
    p.add_argument("--per-decade", type=int, default=5,
                   help="grid points per factor of 10 (default 5: DeepOBS's 36 rates)")
    p.add_argument("--lo", type=float, default=1e-5, help="smallest rate (default 1e-5)")
    p.add_argument("--hi", type=float, default=1e2, help="largest rate (default 1e2)")
    p.add_argument("--lrs", help="explicit comma-separated rates instead of the grid")
    p.add_argument("--epochs", type=int, help="epochs per run (default: a quarter of the task's budget)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per rate (default 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=int, help="mini-batch size (default: the task's)")
    g.add_argument("--full-batch", action="store_true", help="full-batch gradient descent")
    p.add_argument("--good", type=float, default=0.9,
                   help="'good': the loss fell by at least this fraction of the best run's drop (default 0.9)")
    p.add_argument("--out", default="runs/lr-sweep", help="output folder (default runs/lr-sweep)")
    p.add_argument("--workers", type=int, help="parallel runs (default: number of cores)")
    p.add_argument("--json", action="store_true", help="print best_lr, regions and the grid as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _span(span) -> str:
    if span is None:
        return "none"
    return f"{span[0]:g}" if span[0] == span[1] else f"{span[0]:g} .. {span[1]:g}"


def run(args) -> int:
    from ..lab.sweep import lr_sweep
    from .compare import split_optimizers

    batch = None if args.full_batch else (args.batch_size if args.batch_size is not None else "task")
    os.makedirs(args.out, exist_ok=True)
    records = os.path.join(args.out, "records.jsonl")
    try:
        lrs = [float(v) for v in args.lrs.split(",") if v.strip()] if args.lrs else None
        result = lr_sweep(args.task, split_optimizers(args.optimizers), lrs, per_decade=args.per_decade, lo=args.lo,
                          hi=args.hi, epochs=args.epochs, seeds=args.seeds, batch_size=batch, workers=args.workers,
                          path=records, good=args.good, progress=not (args.quiet or args.json))
    except (KeyError, ValueError) as e:
        print(f"optimlab lr-sweep: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    png = os.path.join(args.out, f"{args.task}-lr-sweep.png")
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
