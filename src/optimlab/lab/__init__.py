"""The lab: tasks with real data, a runner that compares optimizers fairly, and reports."""

from .runner import RunSpec, grid, load_records, parse_optimizer, run_all, run_one
from .tasks import TASKS, Task, get_task, task_names

__all__ = ["RunSpec", "grid", "load_records", "parse_optimizer", "run_all", "run_one", "TASKS", "Task", "get_task",
           "task_names"]
