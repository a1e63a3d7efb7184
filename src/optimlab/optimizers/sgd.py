"""Gradient descent with momentum (torch.optim.SGD's signature and numbers).

    g <- g + weight_decay * p
    b <- momentum * b + (1 - dampening) * g         (b <- g on the first step)
    u <- g + momentum * b  (nesterov)   or   u <- b
    p <- p - lr * u

Example::

    >>> opt = optimlab.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
"""

from __future__ import annotations

import torch

from ..core import check_nonneg
from ..transforms.momentum import trace
from ..registry import Dim, register
from ._base import Optimizer, fused_parts, kernel_lr

__all__ = ["SGD"]


@register("sgd", torch_name="SGD", search_space={"lr": Dim(1e-3, 1.0)})  # the default 1e-3 is its floor
class SGD(Optimizer):
    state_step = False  # torch keeps no step count for SGD
    densify_sparse_gradients = True

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, **options):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_nonneg("momentum", group["momentum"])
        check_nonneg("dampening", group["dampening"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"Nesterov momentum requires a momentum and zero dampening (got momentum="
                f"{group['momentum']}, dampening={group['dampening']}); set momentum > 0, dampening=0"
            )

    def native(self, group):
        """torch's fused SGD kernel when the group is plain SGD (torch's rule for the first step:
        the momentum buffer starts as the gradient)."""
        if type(self).core is not SGD.core or not self.plain(group):
            return None

        def step(params, grads, states, count):  # as torch's _fused_sgd, per device and dtype
            parts = fused_parts(params, grads, states, move_steps=False)  # (SGD keeps no step count)
            if parts is None:
                return False
            momentum = group["momentum"]
            # count None: every parameter has stepped before; the caller advances the counts.
            # torch's rule for the first step: the momentum buffer starts as the gradient
            first = momentum != 0 and count is not None and count == 0
            bufs = []
            if momentum != 0 and not first:
                bufs = [st.get("momentum_buffer") for st in states]
                if any(b is None for b in bufs):  # momentum switched on: buffers start as the gradient
                    first = all(b is None for b in bufs)
                    if not first:
                        return False
                elif not all(b.is_contiguous() for b in bufs):
                    return False
            for ps, gs, sts in parts:
                if first:
                    bufs = [torch.empty_like(g) for g in gs]
                elif momentum != 0 and len(parts) > 1:
                    bufs = [st["momentum_buffer"] for st in sts]
                torch._fused_sgd_(ps, gs, bufs, weight_decay=group["weight_decay"], momentum=momentum,
                                  lr=kernel_lr(group["lr"], ps[0].device), dampening=group["dampening"],
                                  nesterov=group["nesterov"], maximize=group["maximize"], is_first_step=first,
                                  grad_scale=None, found_inf=None)
                if first:
                    for st, buf in zip(sts, bufs):
                        st["momentum_buffer"] = buf
            if count is not None:
                self._set_steps(params, states, count + 1)
            return True

        return step

    def core(self, group):
        chain = self.weight_decay(group)
        if group["momentum"] != 0:
            chain.append(trace(nesterov=group["nesterov"]))
        return chain
