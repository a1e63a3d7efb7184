"""``optimlab compare``: train several optimizers on tasks over seeds, print the table, write
the JSON Lines records, the PNG plots, the HTML report and ``run.json`` (the configuration,
command line, versions and hardware) in a folder of its own.

    optimlab compare                                   # classic optimizers on digits-cnn, 3 seeds
    optimlab compare --task mnist1d-mlp --optimizers 'sgd:lr=0.1,momentum=0.9,adam:lr=1e-3,betas=(0.9,0.99)' --seeds 5
    optimlab compare --task digits-mlp --full-batch --epochs 200 --json
    optimlab compare --out runs/mine                   # again after Ctrl-C: finishes the missing runs
    optimlab compare --task my_pkg.tasks:make_task --optimizers sgd:lr=0.1,adam   # your own model and data
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
import time

from ..lab.runner import split_optimizers
from ._common import environment, fail, help_texts, positive_int, writable_dir

DEFAULT_TASK = "digits-cnn"
DEFAULT_OPTIMIZERS = "sgd:lr=0.05,sgd:lr=0.05,momentum=0.9,rmsprop:lr=1e-3,adam:lr=3e-3"
NOTE_WIDTH = 72  # the table's note column; longer notes are listed in full below the table


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare optimizers on tasks over several seeds", **help_texts(__doc__))
    p.add_argument("--task", action="append", metavar="TASK",
                   help=f"task name (repeatable; default {DEFAULT_TASK}; see `optimlab tasks`), or your own: "
                        "module:function, a function returning optimlab.lab.Task.from_data(...), importable from "
                        "the current folder or PYTHONPATH")
    p.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, metavar="SPECS",
                   help="comma-separated optimizers, each NAME or NAME:key=value,key=value; tuples in brackets "
                        "(quoted for the shell), e.g. 'sgd:lr=0.1,momentum=0.9,adam:lr=1e-3,betas=(0.9,0.99)'; "
                        "names: `optimlab optimizers` "
                        f"(default {DEFAULT_OPTIMIZERS})")
    p.add_argument("--lr", choices=["auto"], help="auto: each optimizer given without lr= gets the LR finder's "
                                                  "suggestion on the task (see `optimlab lr-find`)")
    p.add_argument("--seeds", type=positive_int, default=3, metavar="N",
                   help="seeds per optimizer, 0..N-1 (default 3)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="epochs per run (default: the task's budget)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="mini-batch size (1 = per-example SGD; default: the task's)")
    g.add_argument("--full-batch", action="store_true", help="full-batch gradient descent (one step per epoch)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default runs/compare/TASK-YYYYmmdd-HHMMSS, a new one each time); "
                        "an existing one is resumed: only the runs it lacks are trained")
    p.add_argument("--workers", type=positive_int, metavar="N", help="parallel runs (default: number of cores)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary on stdout (progress still goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def summary_json(rows, verdicts, report: str, records_path: str, notes=None, out: str | None = None) -> dict:
    out_: dict = {"out": out, "report": report, "records": records_path,
                  "run": os.path.join(out, "run.json") if out else None, "tasks": {}}
    for v in verdicts:
        out_["tasks"][v["task"]] = {"verdict": v["verdict"], "evidence": v["text"], "optimizers": {}}
    for r in rows:
        out_["tasks"][r["task"]]["optimizers"][r["label"]] = {
            "metric": r["metric"], "final_test_metric": r["test_metric"], "test_metric_sd": r["test_metric_sd"],
            "best_val_metric": r["best_val_metric"], "final_train_loss": r["final_train_loss"],
            "steps_to_target": r["steps_to_target"], "seconds_to_target": r["seconds_to_target"],
            "reached_target": f"{r['reached']}/{r['runs']}", "diverged": r["diverged"], "failed": r["errors"],
            "seeds": r["runs"], "messages": r["messages"], "notes": (notes or {}).get((r["task"], r["label"]), [])}
    return out_


def _default_out(tasks: list[str]) -> str:
    """``runs/compare/<task>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3`` ... if that exists."""
    from .lr_find import slug

    base = os.path.join("runs", "compare", f"{'+'.join(map(slug, tasks))}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def _write_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=repr)
    os.replace(tmp, path)


def _configuration(args, tasks, optimizers, out, workers) -> dict:
    """What ``run.json`` and the report record: how to run the comparison again, and on what."""
    from ..lab.tasks import get_task

    argv = list(getattr(args, "argv", sys.argv[1:]))
    env = environment()
    # the pool runs each in one thread (runner._init_worker); a single process uses torch's default
    env["hardware"]["threads_per_run"] = 1 if workers > 1 else env["hardware"]["torch_threads"]
    budget = {}
    for t in tasks:
        task = get_task(t)
        bs = None if args.full_batch else (args.batch_size or task.batch_size)
        budget[t] = {"epochs": args.epochs or task.epochs, "batch_size": "full" if bs is None else bs}
    return {"command": shlex.join(["optimlab", *argv]), "argv": argv, "out": out, "tasks": tasks,
            "optimizers": optimizers, "seeds": list(range(args.seeds)), "budget": budget, "lr": args.lr,
            "workers": workers, **env}


def _with_notes(table: str, rows, notes) -> tuple[str, list[str]]:
    """The table with a ``note`` column (each row's first note), and the notes that did not
    fit in it (a row's further seeds, or text cut short) to list below."""
    lines = table.split("\n")
    fits = len(lines) == len(rows) + 2 and all(r["label"] in line for r, line in zip(rows, lines[2:]))
    below = []
    if not notes or not fits:
        return table, [f"{r['task']} {r['label']}: {n}" for r in rows for n in notes.get((r["task"], r["label"]), [])]
    cells = []
    for r in rows:
        ns = notes.get((r["task"], r["label"]), [])
        cell = ns[0] if ns else ""
        if len(cell) > NOTE_WIDTH or len(ns) > 1:
            cell = (cell[:NOTE_WIDTH - 1] + "…" if len(cell) > NOTE_WIDTH else cell) + \
                (f" (+{len(ns) - 1} more)" if len(ns) > 1 else "")
            below += [f"{r['task']} {r['label']}: {n}" for n in ns]
        cells.append(cell)
    width = max(len(c) for c in cells + ["note"])
    out = [lines[0] + "  note", lines[1] + "  " + "-" * width] + [line + "  " + c for line, c in zip(lines[2:], cells)]
    return "\n".join(out), below


def run(args) -> int:
    from ..lab.runner import check_optimizer, resolve_start_method
    from ..lab.tasks import get_task

    tasks = list(dict.fromkeys(args.task or [DEFAULT_TASK]))
    batch = None if args.full_batch else (args.batch_size if args.batch_size is not None else "task")
    # everything a user can get wrong is checked here, before any training
    try:
        names: dict[str, str] = {}
        for t in tasks:
            name = get_task(t).name
            if name in names:
                raise ValueError(f"tasks {names[name]!r} and {t!r} are both named {name!r}: give them different names")
            names[name] = t
        optimizers = split_optimizers(args.optimizers)
        for t in tasks:
            for text in optimizers:
                check_optimizer(text, t)
        resolve_start_method()  # a bad $OPTIMLAB_START_METHOD
        out = writable_dir(args.out if args.out is not None else _default_out(tasks))
    except (KeyError, ValueError) as e:
        return fail("compare", e)

    try:
        return _compare(args, tasks, optimizers, batch, out)
    except KeyboardInterrupt as e:
        return _interrupted(args, out, e)


def _interrupted(args, out: str, e: KeyboardInterrupt) -> int:
    """Ctrl-C: record it in ``run.json`` and say what is saved and how to finish."""
    from ..lab.runner import Interrupted, load_records

    run_json = os.path.join(out, "run.json")
    try:
        with open(run_json) as f:
            config = json.load(f)
    except (OSError, ValueError):
        print("\ninterrupted before any run started", file=sys.stderr)
        return 130
    if isinstance(e, Interrupted):
        saved, total = e.saved, e.total
    else:  # after the runs (report) or before them (--lr auto): count what is recorded
        total = config["runs"]["total"]
        saved = sum(r.get("error") is None for r in load_records(os.path.join(out, "records.jsonl")))
    _write_json(dict(config, status="interrupted", runs={"total": total, "saved": saved}), run_json)
    again = "run the same command again to finish" if args.out is not None else \
        f"run it again with --out {shlex.quote(out)} to finish"
    print(f"\ninterrupted: {saved}/{total} runs saved in {out}; {again}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"interrupted": True, "saved": saved, "total": total, "out": out}, indent=2))
    return 130


def _compare(args, tasks: list[str], optimizers: list[str], batch, out: str) -> int:
    from ..lab import grid, run_all
    from ..lab.analysis import format_table, summarize, verdict
    from ..lab.report import write_report
    from ..lab.runner import load_records, row_notes
    from ..lab.tasks import get_task

    log = sys.stderr  # progress and status: stdout is the table, or pure JSON with --json
    try:
        if args.lr == "auto":
            from .lr_find import found_lrs

            per_task = {t: found_lrs(t, optimizers, batch, log) for t in tasks}
        else:
            per_task = {t: optimizers for t in tasks}
    except (KeyError, ValueError) as e:
        return fail("compare", e)
    specs = [s for t in tasks for s in grid([t], per_task[t], seeds=args.seeds, epochs=args.epochs, batch_size=batch)]

    records_path = os.path.join(out, "records.jsonl")
    run_json = os.path.join(out, "run.json")
    workers = min(args.workers or os.cpu_count() or 1, len(specs))
    config = _configuration(args, tasks, per_task, out, workers)
    config["started"] = datetime.datetime.now().isoformat(timespec="seconds")
    keys = {s.key for s in specs}
    already = sum(r.get("error") is None and r["key"] in keys for r in load_records(records_path))
    _write_json(dict(config, status="running", runs={"total": len(specs), "saved": already}), run_json)
    print(f"{len(specs)} runs ({len(tasks)} task(s) x {len(optimizers)} optimizer(s) x {args.seeds} seed(s)) "
          f"in {out}" + (f"; resuming: {already} already recorded" if already else ""), file=log, flush=True)

    records = run_all(specs, records_path, workers=args.workers, progress=not args.quiet,
                      checkpoint_dir=os.path.join(out, "checkpoints"))  # Ctrl-C: Interrupted, see run()

    rows = summarize(records)
    verdicts = [verdict(rows, get_task(t).name) for t in tasks]  # records name a module:function task by its name
    notes = row_notes(records)
    config["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    try:
        os.rmdir(os.path.join(out, "checkpoints"))  # left only if some run failed mid-way
    except OSError:
        pass
    report = write_report(records, os.path.join(out, "report.html"), pngs_dir=out, config=config)
    failed = sum(bool(r.get("error")) for r in records)
    _write_json(dict(config, status="done", runs={"total": len(specs), "saved": len(records), "failed": failed}),
                run_json)
    status = 1 if records and failed == len(records) else 0
    if status:
        print(f"optimlab compare: every run failed; see the notes ({records_path} has the tracebacks)", file=log)
    if args.json:
        print(json.dumps(summary_json(rows, verdicts, report, records_path, notes, out), indent=2))
        return status
    table, below = _with_notes(format_table(rows), rows, notes)
    print(table)
    if below:
        print("\nnotes:\n" + "\n".join(f"  {n}" for n in below))
    for v in verdicts:
        print(f"\n{v['task']}: \"Adam converges faster and generalizes better than SGD/GD\" — {v['verdict']}.")
        for t in v["text"]:
            print(f"  {t}")
    print(f"\nreport: {report}\nplots:  {out}/*.png\nrun:    {run_json} (configuration, command, versions)")
    return status
