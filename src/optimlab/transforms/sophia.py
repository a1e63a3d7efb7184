"""Sophia's clipped, curvature-scaled momentum (Liu et al., "Sophia: A Scalable Stochastic
Second-order Optimizer for Language Model Pre-training", ICLR 2024).

    m_t = b1 m_{t-1} + (1 - b1) g_t
    u_t = clip(m_t / max(rho h_t, eps), -1, 1)

``h_t`` (state ``hessian``) is the exponential moving average of a diagonal Hessian estimate,
kept up to date by the optimizer (:class:`optimlab.SophiaH` refreshes it every k steps with
Hutchinson's estimator); this transform only reads it. Clipping bounds every coordinate's step
by the learning rate where the curvature is tiny or negative.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import Transform, axpy_, scale_

__all__ = ["scale_by_sophia"]


@dataclasses.dataclass(frozen=True)
class scale_by_sophia(Transform):
    """State: ``exp_avg`` (m) and ``hessian`` (h), shaped like the parameter."""

    hyperparameters = ("betas", "rho", "eps")
    moment_state = {"exp_avg": False, "hessian": False}

    def init(self, p, group):
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "hessian": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        b1 = float(group["betas"][0])
        return {"b1": b1, "1-b1": 1.0 - b1, "rho": group["rho"], "eps": group["eps"]}

    def update(self, u, s):
        m = u.state["exp_avg"]
        scale_(m, s["b1"])
        axpy_(m, s["1-b1"], u.updates)
        denom = torch._foreach_mul(u.state["hessian"], s["rho"])
        torch._foreach_clamp_min_(denom, s["eps"])
        new = torch._foreach_div(m, denom)
        torch._foreach_clamp_min_(new, -1.0)
        torch._foreach_clamp_max_(new, 1.0)
        u.replace(new, fresh=True)
