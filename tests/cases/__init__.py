"""The optimizer test table, one module per family (torch's ``optim_db`` idea).

Each module defines lists named:

* ``TORCH_CASES``: :class:`Case` entries compared step by step with torch.optim;
* ``CONVERGE``: ``{registry_name: {"quadratic": (kwargs, steps), "rosenbrock": (kwargs, steps)}}``
  settings under which the optimizer must converge on the quadratic and on Rosenbrock, the last
  quarter of the steps with the lr decaying to 0 (``"constant_lr": True`` keeps it constant);
* ``BAD``: ``{registry_name: [(kwargs, "arg name in message"), ...]}`` invalid hyperparameters.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any


@dataclasses.dataclass
class Case:
    """One configuration compared with torch.optim.

    ``kwargs`` go to both constructors; ``groups`` are per-group overrides (the model's
    parameters are split into ``len(groups)`` groups; ``model`` picks the net, see
    ``problems.make_model``); ``change`` is applied to every group's
    hyperparameters at step ``steps // 2`` (e.g. ``{"lr": 0.05}``); ``sparse_grads`` drops some
    parameters' gradients on some steps (they must be skipped like torch does).
    """

    name: str
    ours: str  # optimlab class name
    torch_cls: str  # torch.optim class name
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    groups: list[dict[str, Any]] = dataclasses.field(default_factory=lambda: [{}])
    change: dict[str, Any] | None = None
    steps: int = 60
    none_grads: bool = False
    ours_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # optimlab-only extras
    rtol64: float = 1e-10
    rtol32: float = 1e-5
    model: str = "tinynet"  # see tests/problems.make_model
    free32: bool = True  # False: float32 is only compared step-synced (chaotic float32 runs)

    def __str__(self) -> str:
        return self.name


def _modules():
    for info in pkgutil.iter_modules(__path__):
        yield importlib.import_module(f"{__name__}.{info.name}")


def torch_cases() -> list[Case]:
    return [c for m in _modules() for c in getattr(m, "TORCH_CASES", [])]


def converge() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for m in _modules():
        out.update(getattr(m, "CONVERGE", {}))
    return out


def bad() -> dict[str, list]:
    out: dict[str, list] = {}
    for m in _modules():
        for k, v in getattr(m, "BAD", {}).items():
            out.setdefault(k, []).extend(v)
    return out
