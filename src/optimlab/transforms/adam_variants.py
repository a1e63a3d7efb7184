"""Adam variants: Nesterov momentum (NAdam) and variance rectification (RAdam). Both keep Adam's
moments ``m_t``, ``v_t`` (state ``exp_avg``, ``exp_avg_sq``) and its bias corrections
``bc1 = 1 - b1^t``, ``bc2 = 1 - b2^t``.

NAdam (Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016), with torch's
momentum schedule ``mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay))``:

    P_t = mu_1 mu_2 ... mu_t                                          (state ``mu_product``)
    u_t = ((1 - mu_t) / (1 - P_t) g_t + mu_{t+1} / (1 - P_t mu_{t+1}) m_t) / (sqrt(v_t / bc2) + eps)

RAdam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020):

    rho_inf = 2 / (1 - b2) - 1,     rho_t = rho_inf - 2 t b2^t / bc2
    u_t = r_t (m_t / bc1) sqrt(bc2) / (sqrt(v_t) + eps)    if rho_t > 5, where
          r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    u_t = m_t / bc1                                         otherwise (early steps: SGD with momentum)
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..core import axpy_, stored_like_torch, traced_host
from .adam import scale_by_adam

__all__ = ["scale_by_nadam", "scale_by_radam"]


@dataclasses.dataclass(frozen=True)
class scale_by_nadam(scale_by_adam):
    """NAdam: Adam's moments with a Nesterov look-ahead on the first moment. State:
    ``exp_avg``, ``exp_avg_sq`` (like p), ``mu_product`` (host-side float)."""

    momentum_decay_key: str = "momentum_decay"
    hyperparameters = ("betas", "eps", "momentum_decay")
    host_keys = ("mu_product",)
    traces_host = True

    def init(self, p, group):
        return {**super().init(p, group), "mu_product": 1.0}

    def scalars(self, group, step, host):
        s = super().scalars(group, step, host)
        b1, psi = s["b1"], group[self.momentum_decay_key]
        mu, mu_next = (b1 * (1.0 - 0.5 * 0.96 ** (t * psi)) for t in (step, step + 1))
        traced = traced_host(host, "mu_product")
        if traced is not None:  # torch.compile(opt.step): the state's tensor, in place
            prod = traced.mul_(mu)
        elif isinstance(host["mu_product"], torch.Tensor):  # differentiable=True: the product stays on the graph
            prod = host["mu_product"] = host["mu_product"] * mu
        else:  # torch multiplies in the state's dtype: mu is rounded to it first
            prod = host["mu_product"] = stored_like_torch(float(host["mu_product"]) * stored_like_torch(mu))
        s["c_grad"] = (1.0 - mu) / (1.0 - prod)
        s["c_avg"] = mu_next / (1.0 - prod * mu_next)
        return s

    def update(self, u, s):
        denom = self.moments(u, s)
        new = torch._foreach_mul(u.updates, s["c_grad"])
        axpy_(new, s["c_avg"], u.state["exp_avg"])
        u.replace_ratio(new, denom)


@dataclasses.dataclass(frozen=True)
class scale_by_radam(scale_by_adam):
    """RAdam: Adam's update times the rectifier ``r_t`` once the variance estimate is
    tractable (``rho_t > 5``), the bias-corrected momentum before. State: ``exp_avg``,
    ``exp_avg_sq`` (like p).

    Only the scalars differ from Adam's: ``r_t / bc1`` scales the momentum, and RAdam's
    ``sqrt(bc2) / (sqrt(v) + eps)`` is Adam's denominator with ``eps / sqrt(bc2)``; in the early
    steps the denominator becomes ``0 * sqrt(v) + 1``.
    """

    hyperparameters = ("betas", "eps")

    def scalars(self, group, step, host):
        s = super().scalars(group, step, host)
        b2 = s["b2"]
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        if isinstance(step, torch.Tensor):  # a tensor step count (a traced step): no branch on its value
            # 1 - b2^t by expm1: in the step's float32, 1 - b2**t loses ~5 digits early on, which
            # the rectifier (near rho = 5) would amplify tenfold
            bc2 = -torch.expm1(step * math.log(b2))
            rho = rho_inf - 2.0 * step * (1.0 - bc2) / bc2
            on = rho > 5.0
            rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)).clamp_min(0.0).sqrt()
            s["1/bc1"] = torch.where(on, s["1/bc1"] * rect, s["1/bc1"])
            s["eps"] = torch.where(on, s["eps"] * s["1/sqrt(bc2)"], 1.0)
            s["1/sqrt(bc2)"] = torch.where(on, s["1/sqrt(bc2)"], 0.0)
            return s
        rho = rho_inf - 2.0 * step * b2**step / (1.0 - b2**step)
        if rho > 5.0:
            rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            s["1/bc1"] *= rect
            s["eps"] *= s["1/sqrt(bc2)"]
        else:
            s["1/sqrt(bc2)"], s["eps"] = 0.0, 1.0
        return s
