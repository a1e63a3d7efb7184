"""A line search behind any optimizer: the inner optimizer proposes a step, the search scales it.

    d = x_proposed - x                 (the inner optimizer's step, e.g. SGD's -lr g)
    x <- x + t d,   t from Armijo backtracking (or strong Wolfe) starting at t = 1

With SGD inside this is stochastic Armijo line-search SGD (Vaswani et al., "Painless Stochastic
Gradient", NeurIPS 2019), without their step-size reset heuristics. The inner optimizer keeps
its own state (momentum, moments) and sees every gradient exactly once; the search only
re-evaluates the closure. ``t0 > 1`` lets the search try longer steps first.

Example::

    >>> opt = optimlab.LineSearch(optimlab.SGD(model.parameters(), lr=1.0), "backtracking")
    >>> opt.step(closure)                 # closure: zero_grad, loss, backward, return loss
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

from ..diagnostics import Diagnosable
from .base import ClosureOptimizer, Cost
from .closures import call_closure
from .hessian import flatten, unflatten
from .line_search import backtracking, strong_wolfe

__all__ = ["LineSearch"]


class LineSearch(Diagnosable, torch.optim.Optimizer):
    """Wraps ``optimizer``; ``step(closure)`` searches along the step it proposes."""

    def __init__(self, optimizer: torch.optim.Optimizer, line_search_fn: str = "backtracking", t0: float = 1.0,
                 c1: float = 1e-4, shrink: float = 0.5, max_evals: int = 20) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"LineSearch wraps a torch.optim.Optimizer instance, got {type(optimizer).__name__}")
        if isinstance(optimizer, ClosureOptimizer):
            raise TypeError(f"{type(optimizer).__name__} already searches along its steps; use its line_search_fn")
        if line_search_fn not in ("backtracking", "strong_wolfe"):
            raise ValueError(f"Invalid line_search_fn: {line_search_fn!r} (use 'backtracking' or 'strong_wolfe')")
        if not t0 > 0:
            raise ValueError(f"Invalid t0: {t0} (must be > 0)")
        self.optimizer = optimizer
        self.line_search_fn, self.t0, self.c1, self.shrink, self.max_evals = line_search_fn, t0, c1, shrink, max_evals
        self.cost = Cost()
        self.last_line_search = None
        # share the inner optimizer's groups and state, so schedulers and checkpoints see them
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state
        self.defaults = optimizer.defaults
        for hooks in ("step_pre", "step_post", "state_dict_pre", "state_dict_post", "load_state_dict_pre",
                      "load_state_dict_post"):
            setattr(self, f"_optimizer_{hooks}_hooks", OrderedDict())

    def __repr__(self) -> str:
        return f"LineSearch({self.line_search_fn}, {self.optimizer!r})"

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "cost": self.cost.counts()}  # no wall-clock seconds

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.cost = Cost(**{k: v for k, v in state_dict["cost"].items() if k != "seconds"})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        if closure is None:
            raise RuntimeError("LineSearch re-evaluates the loss along the step, so step() needs a closure")
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]

        def evaluate():
            for p in params:  # each evaluation's own gradient, whether or not the closure zeroes them
                p.grad = None
            return call_closure(closure, params, False, "LineSearch")

        loss, grads = evaluate()
        self.cost.function_evals += 1
        for p, g in zip(params, grads):
            p.grad = g
        f0 = float(loss)
        g0 = flatten(grads)
        x0 = flatten([p.detach() for p in params]).clone()
        self.optimizer.step()
        d = flatten([p.detach() for p in params]) - x0

        def phi(t):
            for p, v, dv in zip(params, unflatten(x0, params), unflatten(d, params)):
                p.copy_(v).add_(dv, alpha=t)
            f, gs = evaluate()
            self.cost.function_evals += 1
            return float(f), flatten(gs)

        if self.line_search_fn == "backtracking":
            res = backtracking(phi, f0, float(g0.dot(d)), self.t0, self.c1, self.shrink, self.max_evals)
        else:
            res = strong_wolfe(phi, f0, g0, d, self.t0, c1=self.c1, max_evals=self.max_evals)
        self.last_line_search = res
        t = res.t
        if not res.success:
            self.cost.line_search_failures += 1
            warnings.warn(f"LineSearch: {res.message}", RuntimeWarning, stacklevel=2)
            if not res.f < f0:
                t = 0.0
        for p, v, dv in zip(params, unflatten(x0, params), unflatten(d, params)):
            p.copy_(v).add_(dv, alpha=t)
        self.cost.steps += 1
        return loss
