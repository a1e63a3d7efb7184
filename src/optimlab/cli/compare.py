"""``optimlab compare``: compare optimizers on tasks with the same tuning budget each -- every
optimizer as given (one-shot) and tuned (the best of N quasi-random trials on validation, run
on fresh seeds) -- print the table with 95% intervals and the verdict, and write the JSON Lines
records, the PNG plots, the HTML report and ``run.json`` (the configuration, command line,
versions and hardware) in a folder of its own.

    optimlab compare                                   # SGD with momentum vs Adam on digits-cnn: one-shot and tuned
    optimlab compare --task mnist1d-mlp --optimizers 'sgd:momentum=0.9,adam:betas=(0.9,0.99)' --trials 16
    optimlab compare --tune lr,momentum,weight_decay,eps,schedule --trials 16   # a larger search space
    optimlab compare --sweep weight_decay=0,1e-4,1e-3,1e-2                      # the generalization gap vs decay
    optimlab compare --trials 0 --optimizers sgd:lr=0.1,adam:lr=1e-3 --seeds 3  # no tuning: as given only
    optimlab compare --task digits-mlp --full-batch --epochs 200 --json
    optimlab compare --out runs/mine                   # again after Ctrl-C: finishes the missing runs
    optimlab compare --task my_pkg.tasks:make_task --optimizers sgd:lr=0.1,adam   # your own model and data
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import sys
import time

from ..lab.runner import split_optimizers
from ..lab.tuning import DIMENSIONS
from ._common import (add_executor_arguments, environment, executor_from_args, fail, help_texts, positive_int,
                      writable_dir)

DEFAULT_TASK = "digits-cnn"
# one string per optimizer: each gets the same tuning budget (two SGD strings against one Adam would not)
DEFAULT_OPTIMIZERS = "sgd:momentum=0.9,adam"
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
                                                  "suggestion on the task (see `optimlab lr-find`; a 400-step "
                                                  "range test where 100 steps find none, else its default lr, "
                                                  "said so)")
    p.add_argument("--seeds", type=positive_int, default=5, metavar="N",
                   help="evaluation seeds per optimizer and protocol, 0..N-1 (default 5)")
    p.add_argument("--trials", type=_trials, default=8, metavar="N",
                   help="tuning trials per optimizer: quasi-random points of its search space (`optimlab optimizers "
                        "--json` shows them), chosen on validation (default 8; 0: no tuning, the optimizers as given)")
    p.add_argument("--tune", default="lr", metavar="DIMS",
                   help=f"what the trials search, comma-separated, from {', '.join(DIMENSIONS)} (lr always; "
                        "momentum is beta1 for Adam-like optimizers; schedule: constant or warmup + cosine); 'all' "
                        "for every one (default lr)")
    p.add_argument("--tuning-seeds", type=positive_int, default=1, metavar="N",
                   help="seeds per tuning trial (1000, 1001, ...: never an evaluation seed; default 1)")
    p.add_argument("--sweep", metavar="OPTION=V1,V2,...",
                   help="regularization sweep on each evaluated configuration, to show the generalization gap, "
                        "e.g. weight_decay=0,1e-4,1e-3,1e-2 or l1=0,1e-5,1e-4")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="epochs per run (default: the task's budget)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="mini-batch size (1 = per-example SGD; default: the task's)")
    g.add_argument("--full-batch", action="store_true", help="full-batch gradient descent (one step per epoch)")
    p.add_argument("--out", metavar="DIR",
                   help="output folder (default runs/compare/TASK-YYYYmmdd-HHMMSS, a new one each time); "
                        "an existing one is resumed: only the runs it lacks are trained")
    p.add_argument("--workers", type=positive_int, metavar="N", help="parallel runs (default: number of cores)")
    add_executor_arguments(p)
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary on stdout (progress still goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _trials(text: str) -> int:
    """A whole number >= 0 (``--trials 0``: no tuning)."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: give 0 (no tuning) or more trials, e.g. 8")
    return v


def _protocol(args):
    """The tuning protocol from the arguments (``ValueError`` naming the bad value)."""
    from ..lab.tuning import Protocol, parse_sweep

    tune = tuple(DIMENSIONS) if args.tune.strip() == "all" else tuple(t.strip() for t in args.tune.split(",") if t.strip())
    sweep = parse_sweep(args.sweep) if args.sweep else None
    try:
        return Protocol(trials=args.trials, tune=tune, tuning_seeds=args.tuning_seeds, seeds=args.seeds, sweep=sweep)
    except ValueError as e:
        raise ValueError(f"--tune / --sweep: {e}") from None


def summary_json(rows, verdicts, report: str, records_path: str, notes=None, out: str | None = None) -> dict:
    """What ``--json`` prints: per task the verdict of each protocol (tuned first), and per row
    (one-shot, tuned, sweep) the numbers with their 95% intervals and the generalization gap."""
    from ..lab.analysis import sweep_lines, sweep_trends, tuning_lines

    out_: dict = {"out": out, "report": report, "records": records_path,
                  "run": os.path.join(out, "run.json") if out else None, "tasks": {}}
    for v in verdicts:
        t = out_["tasks"].setdefault(v["task"], {"verdict": v["verdict"], "evidence": v["text"], "verdicts": {},
                                                 "optimizers": {}})
        t["verdicts"][v.get("phase") or "all"] = {
            "verdict": v["verdict"], "faster": v["faster"], "generalizes_better": v["generalizes_better"],
            "gap": v["gap_status"], "evidence": v["text"]}
    for r in rows:
        if r.get("phase") == "tuning":
            continue
        out_["tasks"][r["task"]]["optimizers"][r["label"]] = {
            "protocol": r.get("phase"), "optimizer": r["optimizer"], "hyper": r.get("hyper"),
            "schedule": r.get("schedule"), "trials": r.get("trials"), "metric": r["metric"],
            "final_test_metric": r["test_metric"], "test_metric_sd": r["test_metric_sd"],
            "test_metric_ci": r["test_metric_ci"], "test_metric_at_best_val": r["test_metric_at_best_val"],
            "test_metric_at_best_val_ci": r["test_metric_at_best_val_ci"], "best_val_metric": r["best_val_metric"],
            "final_train_loss": r["final_train_loss"], "final_train_eval_loss": r["final_train_eval_loss"],
            "final_val_loss": r["final_val_loss"], "generalization_gap": r["generalization_gap"],
            "generalization_gap_ci": r["generalization_gap_ci"], "metric_gap": r["metric_gap"],
            "steps_to_target": r["steps_to_target"], "seconds_to_target": r["seconds_to_target"],
            "reached_target": f"{r['reached']}/{r['runs']}", "diverged": r["diverged"], "failed": r["errors"],
            "seeds": r["runs"], "messages": r["messages"], "notes": (notes or {}).get((r["task"], r["label"]), [])}
    for task, t in out_["tasks"].items():
        mine = [r for r in rows if r["task"] == task]
        t["tuning"], t["sweep"] = tuning_lines(mine), sweep_lines(mine)
        t["sweep_trends"] = [
            {"optimizer": tr["base"], "option": tr["key"], "gap": tr["status"],
             "gap_change": dataclasses.asdict(tr["gap_change"]),
             "values": [{"value": r["sweep_value"], "test_metric_at_best_val": r["test_metric_at_best_val"],
                         "test_metric": r["test_metric"], "generalization_gap": r["generalization_gap"],
                         "generalization_gap_ci": r["generalization_gap_ci"]} for r in tr["rows"]]}
            for tr in sweep_trends(mine)]
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
    env["hardware"]["threads_per_run"] = 1 if workers > 1 or args.executor == "ray" else env["hardware"]["torch_threads"]
    budget = {}
    for t in tasks:
        task = get_task(t)
        bs = None if args.full_batch else (args.batch_size or task.batch_size)
        budget[t] = {"epochs": args.epochs or task.epochs, "batch_size": "full" if bs is None else bs}
    protocol = _protocol(args)
    return {"command": shlex.join(["optimlab", *argv]), "argv": argv, "out": out, "tasks": tasks,
            "optimizers": optimizers, "seeds": protocol.eval_seeds, "budget": budget, "lr": args.lr,
            "protocol": {"trials": protocol.trials, "tune": list(protocol.tune),
                         "tuning_seeds": protocol.tuning_seed_list if protocol.trials else [],
                         "sweep": list(protocol.sweep) if protocol.sweep else None},
            "workers": workers, "executor": args.executor, "ray_address": args.ray_address, **env}


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
    from ..lab.tuning import trial_configs

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
        protocol = _protocol(args)
        for t in tasks:
            for text in optimizers:
                check_optimizer(text, t)
                if protocol.trials:
                    trial_configs(text, protocol)  # something to search
                for v in (protocol.sweep[1] if protocol.sweep else ()):
                    check_optimizer(f"{text}{',' if ':' in text else ':'}{protocol.sweep[0]}={v!r}", t)
        resolve_start_method()  # a bad $OPTIMLAB_START_METHOD
        executor_from_args(args)  # --ray-address without --executor ray; Ray not installed
        out = writable_dir(args.out if args.out is not None else _default_out(tasks))
    except (KeyError, ValueError) as e:
        return fail("compare", e)

    try:
        return _compare(args, tasks, optimizers, batch, out)
    except KeyboardInterrupt as e:
        return _interrupted(args, out, e)
    except ConnectionError as e:  # --executor ray: the cluster cannot be reached
        return fail("compare", e)


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
    from ..lab import run_all
    from ..lab.analysis import format_table, summarize, sweep_lines, table_order, tuning_lines, verdict
    from ..lab.report import write_report
    from ..lab.runner import Interrupted, load_records, row_notes
    from ..lab.tasks import get_task
    from ..lab.tuning import evaluation_specs, protocol_specs, search_space

    log = sys.stderr  # progress and status: stdout is the table, or pure JSON with --json
    try:
        if args.lr == "auto":
            from .lr_find import found_lrs

            per_task = {t: found_lrs(t, optimizers, batch, log) for t in tasks}
        else:
            per_task = {t: optimizers for t in tasks}
    except (KeyError, ValueError) as e:
        return fail("compare", e)
    protocol = _protocol(args)
    first = [s for t in tasks for s in protocol_specs([t], per_task[t], protocol, args.epochs, batch)]
    # the evaluation runs follow the tuning: their number is known, their configurations not yet
    n_sweep = len(protocol.sweep[1]) if protocol.sweep else 0
    n_second = sum(len(per_task[t]) for t in tasks) * args.seeds * ((1 if protocol.trials else 0) + n_sweep)
    total = len(first) + n_second

    records_path = os.path.join(out, "records.jsonl")
    run_json = os.path.join(out, "run.json")
    workers = min(args.workers or os.cpu_count() or 1, total)
    config = _configuration(args, tasks, per_task, out, workers)
    config["started"] = datetime.datetime.now().isoformat(timespec="seconds")
    keys = {s.key for s in first}
    recorded = [r for r in load_records(records_path) if r.get("error") is None]
    already = sum(r["key"] in keys or r.get("phase") in ("tuned", "sweep") for r in recorded)
    _write_json(dict(config, status="running", runs={"total": total, "saved": already}), run_json)
    plan = (f"per optimizer {protocol.trials} tuning trials x {protocol.tuning_seeds} seed(s), then " if protocol.trials
            else "")
    searched = "; ".join(f"{text}: {', '.join(search_space(text, protocol.tune)) or 'nothing'}" for text in optimizers)
    print(f"{total} runs in {out}: {plan}one-shot{' and tuned' if protocol.trials else ''} on {args.seeds} seed(s)"
          + (f", sweep {protocol.sweep[0]} over {n_sweep} values" if n_sweep else "")
          + (f" (searched: {searched})" if protocol.trials else "")
          + (f"; resuming: {already} already recorded" if already else ""), file=log, flush=True)

    run_kw = dict(workers=args.workers, progress=not args.quiet, checkpoint_dir=os.path.join(out, "checkpoints"),
                  executor=executor_from_args(args))
    try:  # Ctrl-C: Interrupted, see run(); counted over both stages
        records = run_all(first, records_path, **run_kw)
    except Interrupted as e:
        raise Interrupted(e.saved, total, e.path) from None
    second = [s for t in tasks for s in evaluation_specs(records, [t], per_task[t], protocol, args.epochs, batch)[0]]
    try:
        records += run_all(second, records_path, **run_kw)
    except Interrupted as e:
        raise Interrupted(len(records) + e.saved, total, e.path) from None

    rows = summarize(records)
    shown = [r for r in rows if r.get("phase") != "tuning"]  # the trials are summarized in tuning_lines
    phases = ["tuned", "one-shot"] if protocol.trials else ["one-shot"]
    # records name a module:function task by its name
    verdicts = [verdict(rows, get_task(t).name, phase) for t in tasks for phase in phases]
    notes = row_notes([r for r in records if r.get("phase") != "tuning"])
    config["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    try:
        os.rmdir(os.path.join(out, "checkpoints"))  # left only if some run failed mid-way
    except OSError:
        pass
    report = write_report(records, os.path.join(out, "report.html"), pngs_dir=out, config=config)
    failed = sum(bool(r.get("error")) for r in records)
    _write_json(dict(config, status="done", runs={"total": total, "saved": len(records), "failed": failed}),
                run_json)
    status = 1 if records and failed == len(records) else 0
    if status:
        print(f"optimlab compare: every run failed; see the notes ({records_path} has the tracebacks)", file=log)
    if args.json:
        print(json.dumps(summary_json(rows, verdicts, report, records_path, notes, out), indent=2))
        return status
    table, below = _with_notes(format_table(shown), table_order(shown), notes)
    print(table)
    if below:
        print("\nnotes:\n" + "\n".join(f"  {n}" for n in below))
    for title, lines in (("tuning", tuning_lines(shown)), ("regularization sweep", sweep_lines(shown))):
        if lines:
            print(f"\n{title}:\n" + "\n".join(f"  {n}" for n in lines))
    for v in verdicts:
        which = f" ({v['phase']})" if v.get("phase") else ""
        print(f"\n{v['task']}{which}: \"Adam converges faster and generalizes better than SGD/GD\" — {v['verdict']}.")
        for t in v["text"]:
            print(f"  {t}")
    print(f"\nreport: {report}\nplots:  {out}/*.png\nrun:    {run_json} (configuration, command, versions)")
    return status
