"""The lab's protocol: every optimizer gets the same declared tuning budget, chosen on
validation, then judged on fresh seeds (Choi et al. 2019; Schmidt et al. 2021 "Descending
through a Crowded Valley"; Dahl et al. 2023 AlgoPerf).

1. **One-shot**: each optimizer string as given, with the optimizer's own defaults for the rest
   (its registry default learning rate, never a task's tuned one), on the evaluation seeds.
2. **Tuning**: ``trials`` configurations per optimizer, the same scrambled Halton points in
   [0, 1)^d mapped into each optimizer's declared search space
   (:meth:`optimlab.registry.OptimizerSpec.space`: log-uniform ``lr`` always, and -- when asked
   for in ``tune`` -- ``momentum`` (β1), ``weight_decay``, ``eps``, and the learning-rate
   ``schedule``: constant or warmup + cosine), trained on the *tuning seeds* (1000, 1001, ...,
   never an evaluation seed). Options fixed in the string stay fixed unless tuned.
3. **Selection on validation**: per optimizer the trial with the best mean best-validation
   metric (:func:`optimlab.lab.analysis.select`; failed seeds rank last). The test set never
   chooses.
4. **Evaluation**: the chosen configuration on the evaluation seeds 0 .. seeds-1; the test
   metric is read at the best-validation checkpoint and at the end (the runner records both).
5. **Regularization sweep** (optional): the evaluated configuration again with one option set
   to each value of ``sweep`` (``weight_decay``, ``l1`` ...), to show the generalization gap.

Each record carries ``phase`` (``"one-shot"``, ``"tuning"``, ``"tuned"``, ``"sweep"``) and
``base`` (the optimizer string); tuned records also ``trials``, ``chosen_trial`` and the
``searched`` dimensions. An optimizer is its own row: nothing is pooled by family.

Example::

    >>> records = tune_and_evaluate(["digits-mlp"], ["sgd:momentum=0.9", "adam"], Protocol(trials=8),
    ...                             "runs/mine/records.jsonl")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .. import registry
from ..registry import Dim
from .runner import SCHEDULES, RunSpec, parse_optimizer, run_all, spec_task
from .tasks import Task, get_task

__all__ = ["Protocol", "DIMENSIONS", "TUNING_SEED_BASE", "search_space", "trial_configs", "one_shot_hyper",
           "protocol_specs", "choose", "evaluation_specs", "tune_and_evaluate", "parse_sweep"]

DIMENSIONS = ("lr", "momentum", "weight_decay", "eps", "schedule")
TUNING_SEED_BASE = 1000  # tuning seeds are 1000, 1001, ...: never an evaluation seed
_SCHEDULE = Dim(choices=SCHEDULES)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The budget every optimizer gets. ``trials=0``: no tuning (one-shot rows only). ``tune``:
    the dimensions searched (see :data:`DIMENSIONS`); ``lr`` always is. ``sweep``:
    ``(option, values)`` for the regularization sweep."""

    trials: int = 8
    tune: tuple[str, ...] = ("lr",)
    tuning_seeds: int = 1
    seeds: int = 5
    one_shot: bool = True
    sweep: tuple[str, tuple[float, ...]] | None = None
    sample_seed: int = 0  # the scrambling of the Halton sequence

    def __post_init__(self):
        for name in ("trials", "tuning_seeds", "seeds"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "trials" else 1):
                raise ValueError(f"Invalid {name}: {v!r} (a whole number, at least {0 if name == 'trials' else 1})")
        bad = [d for d in self.tune if d not in DIMENSIONS]
        if bad:
            raise ValueError(f"Invalid tune: {', '.join(bad)} (choose from {', '.join(DIMENSIONS)})")
        if "lr" not in self.tune:  # the learning rate is always searched
            object.__setattr__(self, "tune", ("lr", *self.tune))
        if self.sweep is not None and self.sweep[0] in self.tune:
            raise ValueError(f"{self.sweep[0]} is both tuned and swept: sweep it, or tune it, not both")
        if not self.one_shot and not self.trials:
            raise ValueError("nothing to run: no one-shot rows and no tuning trials")

    @property
    def eval_seeds(self) -> list[int]:
        return list(range(self.seeds))

    @property
    def tuning_seed_list(self) -> list[int]:
        return list(range(TUNING_SEED_BASE, TUNING_SEED_BASE + self.tuning_seeds))


def parse_sweep(text: str) -> tuple[str, tuple[float, ...]]:
    """``"weight_decay=0,1e-4,1e-3"`` -> ``("weight_decay", (0.0, 1e-4, 1e-3))``."""
    key, eq, values = text.partition("=")
    key = key.strip()
    if not eq or not key or not values.strip():
        raise ValueError(f"sweep {text!r} is not option=v1,v2,...: write e.g. weight_decay=0,1e-4,1e-3,1e-2")
    if key == "dropout":
        raise ValueError("sweep dropout: the lab's task models have no dropout to set; sweep an optimizer "
                         "option instead, e.g. weight_decay=0,1e-4,1e-3 or l1=0,1e-5,1e-4")
    out = []
    for v in values.split(","):
        try:
            out.append(float(v))
        except ValueError:
            raise ValueError(f"sweep {text!r}: {v.strip()!r} is not a number") from None
    if len(out) < 2 or len(set(out)) != len(out):
        raise ValueError(f"sweep {text!r}: give at least two different values")
    return key, tuple(out)


def search_space(text: str, tune: Sequence[str]) -> dict[str, Dim]:
    """The dimensions searched for optimizer ``text``: those of ``tune`` its registry space
    has (SGD has no ``eps``), and ``schedule`` when asked for."""
    name, _ = parse_optimizer(text)
    space = registry._spec(name).space()
    out = {d: space[d] for d in tune if d in space}
    if "schedule" in tune:
        out["schedule"] = _SCHEDULE
    return out


def one_shot_hyper(text: str) -> dict[str, Any]:
    """The string's options, with the optimizer's own default learning rate made explicit (so
    a task's tuned rate for its favourite optimizer never gives it a head start)."""
    name, hyper = parse_optimizer(text)
    lr = registry._spec(name).defaults.get("lr")
    if "lr" not in hyper and isinstance(lr, (int, float)) and not isinstance(lr, bool):
        hyper["lr"] = lr
    return hyper


def trial_configs(text: str, protocol: Protocol) -> list[tuple[dict[str, Any], str | None]]:
    """``protocol.trials`` configurations ``(hyper, schedule)`` for ``text``: scrambled Halton
    points (one sequence per number of dimensions, so optimizers with the same dimensions get
    the same points) mapped into its search space."""
    name, _ = parse_optimizer(text)
    base = one_shot_hyper(text)
    defaults = registry._spec(name).defaults
    space = search_space(text, protocol.tune)
    dims = sorted(space, key=DIMENSIONS.index)
    if not dims:
        raise ValueError(f"{text}: nothing to tune ({name} has none of {', '.join(protocol.tune)}); "
                         "use --trials 0 for it as given")
    from scipy.stats import qmc  # here: scipy.stats takes ~1 s to import, and the CLI imports this module

    points = qmc.Halton(d=max(len(dims), 1), scramble=True, seed=protocol.sample_seed).random(protocol.trials)
    out = []
    for u in points:
        hyper, schedule = dict(base), None
        for dim, x in zip(dims, u):
            v = space[dim].at(float(x))
            if dim == "schedule":
                schedule = v
            elif dim == "momentum" and "betas" in defaults:
                betas = tuple(hyper.get("betas", defaults["betas"]))
                hyper["betas"] = (v, *betas[1:])
            else:
                hyper[dim] = v
        out.append((hyper, schedule))
    return out


def _spec(task, text, hyper, seed, epochs, batch_size, label, schedule=None, **tags) -> RunSpec:
    name, _ = parse_optimizer(text)
    return RunSpec(task, name, tuple(sorted(hyper.items())), seed, epochs, batch_size, label, schedule,
                   tuple(sorted(dict(tags, base=text).items())))


def protocol_specs(tasks: Sequence[str | Task], optimizers: Sequence[str], protocol: Protocol,
                   epochs: int | None = None, batch_size: int | None | str = "task") -> list[RunSpec]:
    """The runs that need no result of another: one-shot rows on the evaluation seeds and the
    tuning trials on the tuning seeds."""
    specs = []
    for task in map(spec_task, tasks):
        for text in optimizers:
            if protocol.one_shot:
                specs += [_spec(task, text, one_shot_hyper(text), s, epochs, batch_size, text, phase="one-shot")
                          for s in protocol.eval_seeds]
            for i, (hyper, schedule) in enumerate(trial_configs(text, protocol) if protocol.trials else []):
                specs += [_spec(task, text, hyper, s, epochs, batch_size, f"{text} trial {i}", schedule, phase="tuning",
                                trial=i) for s in protocol.tuning_seed_list]
    return specs


def choose(records: list[dict[str, Any]], task: str, text: str) -> dict[str, Any] | None:
    """The tuning trial of ``text`` on ``task`` with the best mean validation result (its
    summary row, with ``hyper`` and ``schedule``); None when no trial ran."""
    from .analysis import select, summarize

    mine = [r for r in records if r.get("phase") == "tuning" and r.get("base") == text and r["task"] == task]
    if not mine:
        return None
    rows = summarize(mine)
    first = {}
    for r in mine:
        first.setdefault(r["label"], r)
    order = {label: i for i, label in enumerate(sorted(first, key=lambda lb: first[lb]["trial"]))}
    for row in rows:
        row["order"] = order[row["label"]]  # ties go to the earlier trial, whatever order runs finished in
    best = select(rows, rows[0]["optimizer"])
    rec = first[best["label"]]
    hyper = {k: tuple(v) if isinstance(v, list) else v for k, v in rec["hyper"].items()}  # JSON made betas a list
    return dict(best, hyper=hyper, schedule=rec.get("schedule"), trial=rec["trial"], trials=len(rows))


def evaluation_specs(records: list[dict[str, Any]], tasks: Sequence[str | Task], optimizers: Sequence[str],
                     protocol: Protocol, epochs: int | None = None,
                     batch_size: int | None | str = "task") -> tuple[list[RunSpec], dict[tuple[str, str], dict]]:
    """The runs that follow the tuning: each optimizer's chosen configuration on the
    evaluation seeds, and the sweep around it (around the one-shot configuration without
    tuning). Returns the specs and the choices by ``(task name, optimizer string)``."""
    specs, chosen = [], {}
    for task in map(spec_task, tasks):
        name = get_task(task).name
        for text in optimizers:
            pick = choose(records, name, text) if protocol.trials else None
            searched = sorted(search_space(text, protocol.tune), key=DIMENSIONS.index)
            if pick is not None:
                chosen[(name, text)] = pick
                tags = dict(trials=pick["trials"], chosen_trial=pick["trial"], searched=tuple(searched))
                specs += [_spec(task, text, pick["hyper"], s, epochs, batch_size, f"{text} tuned", pick["schedule"],
                                phase="tuned", **tags) for s in protocol.eval_seeds]
                base_hyper, schedule, prefix = pick["hyper"], pick["schedule"], f"{text} tuned"
            elif protocol.trials:
                continue  # no trial ran: nothing to evaluate or sweep
            else:
                base_hyper, schedule, prefix = one_shot_hyper(text), None, text
            if protocol.sweep is not None:
                key, values = protocol.sweep
                specs += [_spec(task, text, dict(base_hyper, **{key: v}), s, epochs, batch_size, f"{prefix} {key}={v:g}",
                                schedule, phase="sweep", sweep_key=key, sweep_value=v)
                          for v in values for s in protocol.eval_seeds]
    return specs, chosen


def tune_and_evaluate(tasks: Sequence[str | Task] | str | Task, optimizers: Sequence[str], protocol: Protocol,
                      path: str, *, epochs: int | None = None, batch_size: int | None | str = "task",
                      **run_kw: Any) -> list[dict[str, Any]]:
    """Run the whole protocol, recording every run in ``path`` (JSON Lines; a rerun does only
    what is missing) and return the records of every phase. ``run_kw`` go to :func:`run_all`
    (``workers``, ``progress``, ``checkpoint_dir``, ...)."""
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    first = protocol_specs(tasks, optimizers, protocol, epochs, batch_size)
    records = run_all(first, path, **run_kw)
    second, _ = evaluation_specs(records, tasks, optimizers, protocol, epochs, batch_size)
    return records + run_all(second, path, **run_kw)
