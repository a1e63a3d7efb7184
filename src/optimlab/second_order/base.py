"""What the closure-based second-order optimizers share: the flat view of all parameters, the
evaluation of the closure (with the gradient's graph when curvature is needed), the L2 and decay
options, line searches along a direction, and the cost counters.

Closures. Like torch.optim.LBFGS, ``step(closure)`` calls the closure, which re-evaluates the
model and returns the loss. A closure may

* call ``loss.backward()`` itself (torch's usual closure). The gradient is read from ``p.grad``
  as the closure leaves it, as torch's LBFGS reads it (a closure that does not zero the
  gradients accumulates them, in both). Methods that need curvature (Newton, NewtonCG,
  Sophia-H) then get Hessian-vector products by central differences of the gradient,
  ``H v ~ (g(x + h v) - g(x - h v)) / 2h``: two more closure calls each, with a warning once
  per optimizer; or
* call ``loss.backward(create_graph=True)``, or return the loss without calling ``backward``
  (the optimizer differentiates it, with the graph when it needs one): Hessian-vector products
  are then exact (double backward) and cost no closure calls. This is the simplest closure for
  every method here.

Complex parameters count as the pairs of their real and imaginary parts (as in torch's LBFGS).

``optimizer.cost`` counts what the steps cost: closure evaluations (those of finite-difference
products included), Hessian-vector products, dense Hessians, line-search failures, and the
seconds spent inside ``step``. ``state_dict()`` saves the counts under its ``"optimlab"`` key
(torch ignores it) but not the seconds, so a state_dict depends on the run alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core import as_mask, check_nonneg, check_positive
from ..diagnostics import Diagnosable
from .closures import FD_WARNING, call_closure, fd_hvp, user_stacklevel
from .hessian import check_dense_cost, flatten, hessian_from_grads, hvp_from_grads, real_view, unflatten
from .line_search import LINE_SEARCHES, LineSearchResult, backtracking, strong_wolfe

__all__ = ["ClosureOptimizer", "Cost", "Curvature", "call_closure", "check_tolerance", "scalar"]

_OPTION_DEFAULTS = {"weight_decay": 0.0, "decoupled_decay": 0.0, "l1": 0.0, "decay_mask": None}

def check_tolerance(name: str, value: Any) -> None:
    """A stopping tolerance: any real number; as in torch's LBFGS, ``-inf`` (or anything below
    the quantity it bounds) switches its test off."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a number; -inf switches this test off)")


def scalar(value: Any) -> float:
    """A hyperparameter as a Python float (torch takes 1-element tensors too, e.g. an lr of
    shape [1, 1])."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


@dataclasses.dataclass
class Cost:
    """What the optimizer's steps cost so far."""

    steps: int = 0
    function_evals: int = 0  # closure calls (finite-difference Hessian-vector products: 2 each)
    hvps: int = 0  # Hessian-vector products (a dense Hessian of n parameters counts n)
    hessians: int = 0  # dense Hessians formed
    line_search_failures: int = 0
    seconds: float = 0.0  # wall-clock time inside step(); not saved in state_dict

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def counts(self) -> dict[str, int]:
        """The deterministic part (everything but the seconds), as saved in ``state_dict``."""
        return {k: v for k, v in self.as_dict().items() if k != "seconds"}


class Curvature:
    """``H + L2`` at the point where the closure was just evaluated: products ``hvp(v)`` with
    flat vectors and the dense matrix ``dense()``. Exact (double backward) when the gradients
    carry their graph; by central differences of the gradient (:func:`fd_hvp`) when the
    closure's backward freed it. Counts what it costs in ``opt.cost``."""

    def __init__(self, opt: ClosureOptimizer, closure: Callable, grads: list[Tensor]) -> None:
        self.opt, self.closure, self.grads = opt, closure, grads
        self.exact = any(g.requires_grad for g in grads)

    def hvp(self, v: Tensor) -> Tensor:
        opt, params = self.opt, self.opt._params
        opt.cost.hvps += 1
        vs = unflatten(v, params)
        if self.exact:
            hv = flatten(hvp_from_grads(self.grads, params, vs))
        else:
            hv = flatten(fd_hvp(self.closure, params, vs, type(opt).__name__))
            opt.cost.function_evals += 2
        l2 = opt._l2()
        return hv if isinstance(l2, float) and l2 == 0.0 else hv + l2 * v

    def dense(self) -> Tensor:
        """The n x n matrix: n double-backward products (batched), or n finite-difference ones
        (2n closure calls), symmetrised."""
        opt = self.opt
        opt.cost.hessians += 1
        if not self.exact:
            eye = torch.eye(opt._numel(), dtype=opt._dtype, device=opt._params[0].device)
            h = torch.stack([self.hvp(e) for e in eye], 1)  # counts its n products; L2 included
            return 0.5 * (h + h.T)
        h = hessian_from_grads(self.grads, opt._params)
        opt.cost.hvps += h.shape[0]
        l2 = opt._l2()
        if not (isinstance(l2, float) and l2 == 0.0):
            h.diagonal().add_(l2)
        return h


class ClosureOptimizer(Diagnosable, torch.optim.Optimizer):
    """Base of the closure-based methods. Subclasses implement :meth:`_step` and extend
    :meth:`check_group`.

    Options every subclass accepts (per param group): ``weight_decay`` -- L2 added to the
    objective, ``f + weight_decay/2 ||p||^2``, so line searches and curvature see it exactly;
    ``decoupled_decay`` -- ``p <- p - lr * decoupled_decay * p`` after each step;
    ``decay_mask`` -- which parameters these apply to (as for every optimlab optimizer).
    ``l1`` is refused: these methods model a smooth objective, and a proximal step after a
    curvature-scaled step does not minimise ``f + l1 ||p||_1`` (that needs OWL-QN or proximal
    Newton, not implemented); the first-order optimizers take ``l1``.

    Several param groups share one flat vector (one Hessian / one curvature history); a group's
    ``lr`` relative to the first group's scales that group's coordinates of the step. As in
    torch, a group may carry keys the optimizer does not read (they are kept), and a parameter
    listed twice in a group gets torch's warning; it is then optimised once.
    """

    #: True when the method needs second derivatives (exact ones need a closure that keeps the graph)
    needs_hessian = False

    def __init__(self, params, defaults: dict[str, Any], options: dict[str, Any]) -> None:
        unknown = set(options) - set(_OPTION_DEFAULTS)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {sorted(unknown)}; "
                            f"its hyperparameters are {sorted(defaults)} plus {sorted(_OPTION_DEFAULTS)}")
        defaults = {**defaults, **_OPTION_DEFAULTS, **options}
        self.check_group({**defaults, "params": []})  # hyperparameters first, as torch checks them
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                            "but got a Tensor; wrap it in a list: [tensor]")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        super().__init__(params, defaults)
        self.cost = Cost()
        self.last_line_search: LineSearchResult | None = None
        self._warned_fd = False
        self._closure_loss = None

    def __getstate__(self) -> dict:
        # torch pickles (and deep-copies) only defaults, state and param_groups; the cost
        # counters go along too
        return {**super().__getstate__(), "cost": self.cost, "_warned_fd": self._warned_fd}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for name, value in (("cost", Cost()), ("last_line_search", None), ("_warned_fd", False),
                            ("_closure_loss", None)):
            self.__dict__.setdefault(name, value)

    # -- groups -------------------------------------------------------------------------------------
    def check_group(self, group: dict) -> None:
        check_positive("lr", group["lr"])
        for k in ("weight_decay", "decoupled_decay"):
            check_nonneg(k, group[k])
        if group["l1"] != 0:
            raise ValueError(
                f"Invalid l1: {group['l1']} ({type(self).__name__} models a smooth objective; a proximal L1 "
                "step after a curvature-scaled step does not minimise f + l1 |p|_1. Use a first-order "
                "optimizer with l1=..., e.g. optimlab.SGD(params, lr, l1=...)"
            )
        ls = group.get("line_search_fn", None)
        if "line_search_fn" in group and ls not in LINE_SEARCHES:
            raise ValueError(f"Invalid line_search_fn: {ls!r} (use one of {LINE_SEARCHES})")
        group["decay_mask"] = as_mask(group["decay_mask"])

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)  # warns, as torch does, about a parameter listed twice
        group = self.param_groups[-1]
        self._drop_duplicates(group)
        try:
            self.check_group(group)
            dtypes = {real_view(p).dtype for g in self.param_groups for p in g["params"]}
            devices = {p.device for g in self.param_groups for p in g["params"]}
            if len(dtypes) > 1 or len(devices) > 1:
                raise ValueError(f"{type(self).__name__} works on one flat vector of all parameters, which "
                                 f"must share a dtype (a complex one counts as its real dtype) and a device; "
                                 f"got {sorted(map(str, dtypes))} on {sorted(map(str, devices))}: move the model "
                                 "to one, e.g. model.to(torch.float64)")
        except Exception:
            self.param_groups.pop()
            raise

    @staticmethod
    def _drop_duplicates(group: dict) -> None:
        """Keep each parameter's first occurrence: in the one flat vector a parameter listed
        twice would be stepped twice."""
        seen: set[Tensor] = set()
        keep = [i for i, p in enumerate(group["params"]) if not (p in seen or seen.add(p))]
        if len(keep) < len(group["params"]):
            for key in ("params", "param_names"):
                if key in group:
                    group[key] = [group[key][i] for i in keep]

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads optimlab's state_dicts and torch's (torch.optim.LBFGS's into LBFGS): group keys
        it lacks get this optimizer's defaults, and the groups are checked as in ``__init__``."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("optimlab", None) or {}
        legacy = state_dict.pop("optimlab_cost", None)  # written before the "optimlab" key
        state_dict["param_groups"] = [{**{k: v for k, v in self.defaults.items() if k not in g}, **g}
                                      for g in state_dict["param_groups"]]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self.check_group(group)
        counts = extra.get("cost", legacy)
        if counts is not None:
            self.cost = Cost(**{k: v for k, v in counts.items() if k != "seconds"})

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["optimlab"] = {"cost": self.cost.counts()}
        return sd

    def _check_dense_cost(self, max_memory: int | None, alternatives: str) -> None:
        """Refuse (clearly) a model whose dense n x n matrices -- the matrix and two working
        copies -- would not fit; see :func:`optimlab.second_order.check_dense_cost`."""
        check_dense_cost(type(self).__name__, self._numel(), self._dtype, self._params[0].device, copies=3,
                         max_bytes=max_memory, alternatives=alternatives)

    # -- the flat vector (complex parameters by their real view) --------------------------------------
    @property
    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def _dtype(self) -> torch.dtype:
        return real_view(self._params[0]).dtype

    def _numel(self) -> int:
        return sum(real_view(p).numel() for p in self._params)

    @property
    def _state(self) -> dict:
        """Whole-optimizer state, kept (like torch's LBFGS) under the first parameter."""
        return self.state[self._params[0]]

    def _per_coordinate(self, key: str, masked: bool) -> Tensor | float:
        """A group hyperparameter as one value per flat coordinate (a float if it is the same
        everywhere)."""
        parts, values = [], set()
        for g in self.param_groups:
            names = g.get("param_names")
            for i, p in enumerate(g["params"]):
                v = scalar(g[key])
                if masked and g["decay_mask"] is not None and not g["decay_mask"](names[i] if names else None, p):
                    v = 0.0
                values.add(v)
                parts.append((real_view(p).numel(), v))
        if len(values) == 1:
            return values.pop()
        p0 = self._params[0]
        return torch.cat([torch.full((n,), v, dtype=self._dtype, device=p0.device) for n, v in parts])

    def _l2(self) -> Tensor | float:
        return self._per_coordinate("weight_decay", masked=True)

    def _lr_scale(self) -> Tensor | float:
        """Each coordinate's ``lr`` relative to the first group's (1.0 for one group)."""
        return self._per_coordinate("lr", masked=False) / scalar(self.param_groups[0]["lr"])

    def _flat_params(self) -> Tensor:
        return flatten([p.detach() for p in self._params])

    @torch.no_grad()
    def _set_params(self, flat: Tensor) -> None:
        params = [real_view(p) for p in self._params]
        for p, v in zip(params, unflatten(flat, params)):
            p.copy_(v)

    @torch.no_grad()
    def _add_params(self, t: float, d: Tensor) -> None:
        params = [real_view(p) for p in self._params]
        for p, v in zip(params, unflatten(d, params)):
            p.add_(v, alpha=t)

    # -- evaluating the closure -------------------------------------------------------------------------
    def _evaluate(self, closure: Callable, graph: bool = False):
        """Loss (float, with the L2 term) and flat gradient; with ``graph``, also the
        :class:`Curvature` there (exact if the closure kept the graph or left differentiation
        to us, by finite differences -- with a warning, once -- if its backward freed it)."""
        params = self._params
        loss, grads = call_closure(closure, params, graph, type(self).__name__)
        self.cost.function_evals += 1
        if self._closure_loss is None:
            self._closure_loss = loss  # what step() returns, as torch's step(closure) does
        f = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        flat_g = flatten([g.detach() for g in grads])
        l2 = self._l2()
        if not (isinstance(l2, float) and l2 == 0.0):
            x = self._flat_params()
            f += 0.5 * float((l2 * x * x).sum())
            flat_g = flat_g + l2 * x
        if not graph:
            return f, flat_g
        curvature = Curvature(self, closure, grads)
        if not curvature.exact and not self._warned_fd:
            self._warned_fd = True
            warnings.warn(FD_WARNING.format(who=type(self).__name__), UserWarning, stacklevel=user_stacklevel())
        return f, flat_g, curvature

    def _directional(self, closure: Callable, x0: Tensor, d: Tensor):
        """``phi(t) = f(x0 + t d)`` for the line searches: sets the parameters, evaluates."""

        def phi(t: float):
            self._set_params(x0)
            self._add_params(t, d)
            return self._evaluate(closure)

        return phi

    def _line_search(self, kind: str | None, closure: Callable, f0: float, g0: Tensor, d: Tensor, t0: float,
                     **kw) -> LineSearchResult:
        """Search along ``d`` from the current parameters and leave them at the accepted point.
        A failed search is reported (a warning, ``cost.line_search_failures``, and
        ``last_line_search``) and its best point is kept only if it lowers the loss. A search
        stopped by the caller's evaluation budget (``max_evals``, below the search's own
        limit) is not a failure (torch's LBFGS, which has such a budget, stops silently)."""
        x0 = self._flat_params()
        phi = self._directional(closure, x0, d)
        if kind == "strong_wolfe":
            res = strong_wolfe(phi, f0, g0, d, t0, **kw)
        else:
            res = backtracking(phi, f0, float(g0.dot(d)), t0, **kw)
        self.last_line_search = res
        if not res.success:
            if not res.out_of_evals or "max_evals" not in kw:
                self.cost.line_search_failures += 1
                warnings.warn(f"{type(self).__name__}: line search failed at step {self.cost.steps + 1}: "
                              f"{res.message}", RuntimeWarning, stacklevel=user_stacklevel())
            if not (res.f < f0):
                res = LineSearchResult(0.0, f0, g0, res.evals, False, res.message, res.out_of_evals)
        self._set_params(x0)
        self._add_params(res.t, d)
        return res

    # -- the step ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        """One step (see the class docstring); returns what the closure returned at the
        starting point (as torch's optimizers do; without the ``weight_decay`` term)."""
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__} re-evaluates the loss, so step() needs a closure: "
                "def closure(): optimizer.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); return loss"
                + ("  (Newton-type methods: with loss.backward(create_graph=True), or returning the loss "
                   "without calling backward, Hessian-vector products are exact and cost no extra closure "
                   "calls)" if self.needs_hessian else "")
            )
        t0 = time.perf_counter()
        x_before = self._flat_params()
        self._closure_loss = None
        try:
            self._step(closure)
        finally:
            loss, self._closure_loss = self._closure_loss, None
        self._after_step(x_before)
        self.cost.steps += 1
        self.cost.seconds += time.perf_counter() - t0
        return loss

    def _step(self, closure: Callable) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def _after_step(self, x_before: Tensor) -> None:
        """Decoupled decay, and gradients left detached."""
        for p in self._params:
            if p.grad is not None and p.grad.requires_grad:
                p.grad = p.grad.detach()
        for g in self.param_groups:
            names = g.get("param_names")
            for i, p in enumerate(g["params"]):
                if g["decay_mask"] is not None and not g["decay_mask"](names[i] if names else None, p):
                    continue
                if g["decoupled_decay"]:
                    p.mul_(1 - scalar(g["lr"]) * g["decoupled_decay"])
