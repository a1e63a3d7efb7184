"""``optimlab tasks``: the lab's tasks with their metric, target and default budget."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("tasks", help="list the lab's tasks",
                       description="The lab's tasks: data, model, metric and target, default budget and optimizer.")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from ..lab.tasks import TASKS

    rows = [t.describe() for t in TASKS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        bs = "full batch" if r["batch_size"] is None else f"batch {r['batch_size']}"
        print(f"{r['name']:<22} {r['description']}")
        # targets are defined on the validation set (what selection and time-to-target read)
        print(f"{'':<22} target {r['metric'].replace('test ', 'validation ', 1)} "
              f"{'>=' if r['higher_is_better'] else '<='} {r['target']:g}; "
              f"{r['epochs']} epochs, {bs}; default {r['default_optimizer']}")
    return 0
