"""The lab: tasks with real data, a runner that compares optimizers fairly, and reports."""

from .executors import RayExecutor
from .runner import RunSpec, grid, load_records, parse_optimizer, run_all, run_one
from .sweep import LRFindSummary, SweepResult, log_grid, lr_find_task, lr_sweep
from .tasks import TASKS, Task, get_task, task_names
from .tuning import Protocol, tune_and_evaluate

__all__ = ["RunSpec", "grid", "load_records", "parse_optimizer", "run_all", "run_one", "TASKS", "Task", "get_task",
           "task_names", "lr_sweep", "lr_find_task", "log_grid", "SweepResult", "LRFindSummary", "RayExecutor",
           "Protocol", "tune_and_evaluate"]
