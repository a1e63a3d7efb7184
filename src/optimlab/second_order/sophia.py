"""Sophia-H: a diagonal-Hessian method (Liu et al., ICLR 2024).

    every k steps:  h <- b2 h + (1 - b2) (z * H z),   z Rademacher   (Hutchinson's estimate)
    m <- b1 m + (1 - b1) g
    p <- p - lr * weight_decay * p                                   (decoupled)
    p <- p - lr * clip(m / max(rho h, eps), -1, 1)

Each refresh costs one Hessian-vector product: a second backward pass when the closure lets the
optimizer differentiate twice (it returns the loss without calling ``backward``, or calls
``loss.backward(create_graph=True)``), otherwise -- torch's usual closure, whose ``backward()``
frees the graph -- central differences of the gradient, two more closure calls (a warning says
so, once; see :mod:`optimlab.second_order.base`). The
Rademacher draws come from the optimizer's own seeded generator, saved in ``state_dict``, so a
resumed run follows the same trajectory. Defaults follow the paper's Sophia-H settings
(b1 = 0.965, b2 = 0.99, rho = 0.04, k = 10, weight decay 0.1); its lr is model-specific
(theirs, for GPT-2, is ~1e-4 .. 6e-4) -- 1e-3 here suits the lab's small models.

Example::

    >>> opt = optimlab.SophiaH(model.parameters(), lr=1e-3)
    >>> opt.step(lambda: loss_fn(model(x), y))
"""

from __future__ import annotations

import time
import warnings

import torch

from ..core import check_betas, check_int, check_nonneg, check_positive
from ..optimizers._base import Optimizer
from ..registry import register
from ..transforms.regularize import add_decayed_weights
from ..transforms.sophia import scale_by_sophia
from .base import Cost
from .closures import FD_WARNING, call_closure, fd_hvp, user_stacklevel
from .hessian import hutchinson_diag

__all__ = ["SophiaH"]


@register("sophia-h", needs_closure=True, second_order=True)
class SophiaH(Optimizer):
    """Sophia-H: clipped momentum preconditioned by a Hutchinson estimate of diag(H)."""

    #: closures should leave differentiation to the optimizer (see optimlab.train.step_on_batch)
    needs_hessian = True

    def __init__(self, params, lr=1e-3, betas=(0.965, 0.99), rho=0.04, eps=1e-12, weight_decay=0.1, *,
                 update_period=10, seed=0, **options):
        defaults = dict(lr=lr, betas=betas, rho=rho, eps=eps, weight_decay=weight_decay)
        check_int("update_period", update_period, minimum=1)
        super().__init__(params, defaults, **options)
        self.update_period = update_period
        self.seed = seed
        self.cost = Cost()
        self._calls = 0
        self._generator = None
        self._warned_fd = False

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"])
        check_nonneg("rho", group["rho"])
        check_positive("eps", group["eps"])

    def core(self, group):
        chain = [scale_by_sophia()]
        if group["weight_decay"] != 0:
            chain.append(add_decayed_weights("weight_decay", group["decay_mask"]))
        return chain

    def _rng(self, device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise RuntimeError(
                "SophiaH re-estimates the Hessian diagonal every update_period steps, so step() needs a "
                "closure: opt.step(lambda: loss_fn(model(x), y)) (or one that calls "
                "loss.backward(create_graph=True); one that calls loss.backward() costs 2 more evaluations "
                "per refresh)"
            )
        groups = [(g, [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]
        params = [p for _, ps in groups for p in ps]
        refresh = self._calls % self.update_period == 0
        t0 = time.perf_counter()
        loss, grads = call_closure(closure, params, refresh, "SophiaH")
        self.cost.function_evals += 1
        if refresh:
            fd = None
            if not any(g.requires_grad for g in grads):  # the closure's backward freed the graph
                if not self._warned_fd:
                    self._warned_fd = True
                    warnings.warn(FD_WARNING.format(who="SophiaH"), UserWarning, stacklevel=user_stacklevel())
                fd = lambda zs: fd_hvp(closure, params, zs, "SophiaH")  # noqa: E731
                self.cost.function_evals += 2
            est = hutchinson_diag(grads, params, samples=1, generator=self._rng(params[0].device), hvp=fd)
            i = 0
            for group, ps in groups:
                b2 = float(group["betas"][1])
                for p in ps:
                    st = self.state[p]
                    if "hessian" not in st:
                        st["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["hessian"].mul_(b2).add_(est[i].detach(), alpha=1 - b2)
                    i += 1
            self.cost.hvps += 1
        for p, g in zip(params, grads):
            p.grad = g.detach()
        self._calls += 1
        super().step()
        self.cost.steps += 1
        self.cost.seconds += time.perf_counter() - t0
        return loss

    def state_dict(self):
        sd = super().state_dict()
        sd["sophia"] = {"calls": self._calls, "cost": self.cost.counts(),  # no wall-clock seconds
                        "rng": None if self._generator is None else self._generator.get_state()}
        return sd

    def load_state_dict(self, state_dict):
        extra = state_dict.get("sophia", {})
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "sophia"})
        self._calls = extra.get("calls", 0)
        self.cost = Cost(**{k: v for k, v in extra.get("cost", {}).items() if k != "seconds"})
        if extra.get("rng") is not None:
            p0 = self.param_groups[0]["params"][0]
            self._rng(p0.device).set_state(extra["rng"])
