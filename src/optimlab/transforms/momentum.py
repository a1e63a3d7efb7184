"""Momentum: heavy-ball and Nesterov, with dampening (torch.optim.SGD's formulation).

    b_t = mu * b_{t-1} + (1 - dampening) * g_t      (b_1 = g_1)
    u_t = g_t + mu * b_t   (Nesterov)   or   u_t = b_t
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import Transform, axpy_

__all__ = ["trace"]


@dataclasses.dataclass(frozen=True)
class trace(Transform):
    """Heavy-ball / Nesterov momentum with dampening. State: ``momentum_buffer`` (like p)."""

    nesterov: bool = False
    #: torch's SGD starts the buffer at the first (undamped) gradient; RMSprop does not (it adds
    #: to whatever buffer is there, zeros or one loaded into the state)
    start_from_grad: bool = True
    momentum_key: str = "momentum"
    dampening_key: str = "dampening"
    hyperparameters = ("momentum", "dampening", "nesterov")
    moment_state = {"momentum_buffer": False}

    def init(self, p, group):
        return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        mu = group[self.momentum_key]
        if isinstance(step, torch.Tensor) and self.start_from_grad:  # a traced step: no Python branch
            first = step == 1
            damp = 1.0 - group.get(self.dampening_key, 0.0)
            return {"mu": mu, "keep": torch.where(first, 0.0, mu), "add": torch.where(first, 1.0, damp)}
        first = self.start_from_grad and step == 1  # torch's SGD: the buffer starts at the first gradient
        return {
            "mu": mu,
            "keep": 0.0 if first else mu,
            "add": 1.0 if first else 1.0 - group.get(self.dampening_key, 0.0),
        }

    def update(self, u, s):
        bufs = u.state["momentum_buffer"]
        torch._foreach_mul_(bufs, s["keep"])
        axpy_(bufs, s["add"], u.updates)
        if self.nesterov:
            ups = u.mutable()
            axpy_(ups, s["mu"], bufs)
        else:
            u.replace(bufs)
