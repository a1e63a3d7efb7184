"""Sign-based steps (Rprop) and averaged SGD with a decaying step size (ASGD).

Rprop (Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning: The
RPROP Algorithm", ICNN 1993), the variant without weight backtracking that torch.optim uses.
Per entry, with ``d = g_t * g_{t-1}`` (``g_{t-1}`` is the stored ``prev``):

    s_t = clamp(s_{t-1} * (eta_plus if d > 0, eta_minus if d < 0, 1 if d = 0), s_min, s_max)
    g_t <- 0 where d < 0          (no step after a sign change; it is also what ``prev`` keeps)
    u_t = sign(g_t) * s_t         (applied as it is: Rprop has no learning rate; ``lr`` is s_0)

ASGD (Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
Control Optim. 1992), torch.optim's schedule: step t uses the step size ``eta`` computed after
step t-1 (``eta_1 = lr``) and the averaging weight ``mu`` computed after step t-1 (``mu_1 = 1``):

    u_t = eta_t (g_t + lambd p)                       (so p <- (1 - lambd eta_t) p - eta_t g_t)
    ax  <- ax + mu_t (p - ax)                         (after the step; ax <- p while mu_t = 1)
    eta_{t+1} = lr / (1 + lambd lr t)^alpha,   mu_{t+1} = 1 / max(1, t - t0)

so a new ``lr`` (or ``lambd``, ``alpha``, ``t0``) set before step t takes effect from step t+1.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import Transform, axpy, axpy_, scale_, stored_like_torch, traced_host

__all__ = ["scale_by_rprop", "scale_by_asgd", "polyak_average"]


@dataclasses.dataclass(frozen=True)
class scale_by_rprop(Transform):
    """Rprop's per-entry step sizes driven by gradient sign agreement. State: ``prev`` (the
    last gradient used), ``step_size`` (initialised to the group's ``lr``), both like p."""

    lr_key: str = "lr"
    etas_key: str = "etas"
    step_sizes_key: str = "step_sizes"
    hyperparameters = ("lr", "etas", "step_sizes")

    def init(self, p, group):
        lr = float(group[self.lr_key])
        # a complex entry is two real ones (torch's rule): both parts start at lr
        start = complex(lr, lr) if p.is_complex() else lr
        return {
            "prev": torch.zeros_like(p, memory_format=torch.preserve_format),
            "step_size": torch.full_like(p, start, memory_format=torch.preserve_format),
        }

    def scalars(self, group, step, host):
        (eta_minus, eta_plus), (s_min, s_max) = group[self.etas_key], group[self.step_sizes_key]
        return {"eta-": eta_minus, "eta+": eta_plus, "min": s_min, "max": s_max}

    def update(self, u, s):
        new = []
        for g, prev, size in zip(u.updates, u.state["prev"], u.state["step_size"]):
            d = g * prev
            factor = torch.where(d > 0, s["eta+"], torch.where(d < 0, s["eta-"], torch.ones_like(d)))
            size.mul_(factor).clamp_(s["min"], s["max"])
            prev.copy_(torch.where(d < 0, 0.0, g))
            new.append(prev.sign().mul_(size))
        u.replace(new, fresh=True)


@dataclasses.dataclass(frozen=True)
class scale_by_asgd(Transform):
    """ASGD's step: ``u <- eta (u + lambd p)`` with torch's decaying ``eta`` (see the module
    docstring). State: ``eta`` (host-side float)."""

    lr_key: str = "lr"
    lambd_key: str = "lambd"
    alpha_key: str = "alpha"
    hyperparameters = ("lr", "lambd", "alpha")
    host_keys = ("eta",)
    traces_host = True

    def init(self, p, group):
        return {"eta": stored_like_torch(float(group[self.lr_key]))}

    def scalars(self, group, step, host):
        traced = traced_host(host, "eta")
        if traced is not None:  # torch.compile(opt.step): the state's tensor, in place (lr may be a tensor)
            lr, lambd, eta = group[self.lr_key], group[self.lambd_key], traced.clone()
            traced.copy_(lr / (1.0 + lambd * lr * step) ** group[self.alpha_key])
            return {"eta": eta, "lambd": lambd}
        lr, lambd = float(group[self.lr_key]), group[self.lambd_key]
        eta = float(host["eta"])
        host["eta"] = stored_like_torch(lr / (1.0 + lambd * lr * step) ** group[self.alpha_key])
        return {"eta": eta, "lambd": lambd}

    def update(self, u, s):
        u.replace_ratio(axpy(u.updates, s["lambd"], u.params), None, s["eta"])


@dataclasses.dataclass(frozen=True)
class polyak_average(Transform):
    """Iterate averaging after the step, ``ax <- ax + mu (p - ax)``, starting once
    ``t > t0`` (``mu = 1 / max(1, t - t0)``, applied one step late as in torch). State: ``ax``
    (like p), ``mu`` (host-side float)."""

    t0_key: str = "t0"
    hyperparameters = ("t0",)
    host_keys = ("mu",)
    traces_host = True
    has_after = True

    def init(self, p, group):
        return {"ax": torch.zeros_like(p, memory_format=torch.preserve_format), "mu": 1.0}

    def scalars(self, group, step, host):
        traced = traced_host(host, "mu")
        if traced is not None:  # torch.compile(opt.step): the state's tensor, in place
            mu = traced.clone()
            traced.copy_(1.0 / (step - group[self.t0_key]).clamp_min(1.0))
            return {"keep": 1.0 - mu, "mu": mu}
        mu = float(host["mu"])
        host["mu"] = stored_like_torch(1.0 / max(1.0, step - group[self.t0_key]))
        return {"keep": 1.0 - mu, "mu": mu}

    def update(self, u, s):
        pass

    def after(self, u, s):
        ax = u.state["ax"]
        if isinstance(s["mu"], float) and s["mu"] == 1.0:  # not averaging yet (t <= t0): torch's copy,
            for a, p in zip(ax, u.params):                # one pass (and no 0 * inf from an old ax);
                a.copy_(p)                                # per tensor: copy_ has a derivative
            return
        scale_(ax, s["keep"])
        axpy_(ax, s["mu"], u.params)
