"""``optimlab compare``: train several optimizers on tasks over seeds, print the table, write
the JSON Lines records, the PNG plots and the HTML report.

    optimlab compare                                   # classic optimizers on digits-cnn, 3 seeds
    optimlab compare --task mnist1d-mlp --optimizers sgd:lr=0.1,momentum=0.9,adam:lr=1e-3 --seeds 5
    optimlab compare --task digits-mlp --full-batch --epochs 200 --json
"""

from __future__ import annotations

import json
import os
import sys

DEFAULT_TASK = "digits-cnn"
DEFAULT_OPTIMIZERS = "sgd:lr=0.05,sgd:lr=0.05,momentum=0.9,rmsprop:lr=1e-3,adam:lr=3e-3"


def split_optimizers(text: str) -> list[str]:
    """``"sgd:lr=0.1,momentum=0.9,adam"`` -> ``["sgd:lr=0.1,momentum=0.9", "adam"]``: a
    comma-separated item with ``=`` but no ``:`` continues the previous optimizer."""
    out: list[str] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" in item and ":" not in item and out:
            out[-1] += ("," if ":" in out[-1] else ":") + item
        else:
            out.append(item)
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare optimizers on tasks over several seeds",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--task", action="append", help=f"task name (repeatable; default {DEFAULT_TASK}); see `optimlab tasks`")
    p.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS,
                   help="comma-separated optimizers with options, e.g. sgd:lr=0.1,momentum=0.9,adam:lr=1e-3 "
                        f"(default {DEFAULT_OPTIMIZERS})")
    p.add_argument("--lr", choices=["auto"], help="auto: each optimizer given without lr= gets the LR finder's "
                                                  "suggestion on the task (see `optimlab lr-find`)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per optimizer (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the task's budget)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=int, help="mini-batch size (1 = per-example SGD; default: the task's)")
    g.add_argument("--full-batch", action="store_true", help="full-batch gradient descent (one step per epoch)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--workers", type=int, help="parallel runs (default: number of cores)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def summary_json(rows, verdicts, report: str, records_path: str) -> dict:
    out: dict = {"report": report, "records": records_path, "tasks": {}}
    for v in verdicts:
        out["tasks"][v["task"]] = {"verdict": v["verdict"], "evidence": v["text"], "optimizers": {}}
    for r in rows:
        out["tasks"][r["task"]]["optimizers"][r["label"]] = {
            "metric": r["metric"], "final_test_metric": r["test_metric"], "test_metric_sd": r["test_metric_sd"],
            "best_val_metric": r["best_val_metric"], "final_train_loss": r["final_train_loss"],
            "steps_to_target": r["steps_to_target"], "seconds_to_target": r["seconds_to_target"],
            "reached_target": f"{r['reached']}/{r['runs']}", "diverged": r["diverged"], "failed": r["errors"],
            "seeds": r["runs"], "messages": r["messages"]}
    return out


def run(args) -> int:
    from ..lab import grid, run_all
    from ..lab.analysis import format_table, summarize, verdict
    from ..lab.report import write_report

    tasks = args.task or [DEFAULT_TASK]
    batch = None if args.full_batch else (args.batch_size if args.batch_size is not None else "task")
    try:
        if args.lr == "auto":
            from .lr_find import found_lrs

            log = sys.stderr if args.json else sys.stdout
            specs = [s for t in tasks for s in grid([t], found_lrs(t, split_optimizers(args.optimizers), batch, log),
                                                    seeds=args.seeds, epochs=args.epochs, batch_size=batch)]
        else:
            specs = grid(tasks, split_optimizers(args.optimizers), seeds=args.seeds, epochs=args.epochs, batch_size=batch)
    except (KeyError, ValueError) as e:
        print(f"optimlab compare: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    records_path = os.path.join(args.out, "records.jsonl")
    log = sys.stderr if args.json else sys.stdout
    print(f"{len(specs)} runs ({len(tasks)} task(s) x {len(specs) // len(tasks) // args.seeds} optimizer(s) x "
          f"{args.seeds} seed(s)); records: {records_path}", file=log, flush=True)
    records = run_all(specs, records_path, workers=args.workers, progress=not (args.quiet or args.json))
    rows = summarize(records)
    verdicts = [verdict(rows, t) for t in tasks]
    report = write_report(records, os.path.join(args.out, "report.html"), pngs_dir=args.out)
    if args.json:
        print(json.dumps(summary_json(rows, verdicts, report, records_path), indent=2))
        return 0
    print(format_table(rows))
    for v in verdicts:
        print(f"\n{v['task']}: \"Adam converges faster and generalizes better than SGD/GD\" — {v['verdict']}.")
        for t in v["text"]:
            print(f"  {t}")
    print(f"\nreport: {report}\nplots:  {args.out}/*.png")
    return 0
