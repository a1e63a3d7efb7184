"""Adagrad, RMSprop, Adadelta and Adamax (torch.optim's signatures and numbers).

Each first adds torch's coupled ``weight_decay`` (``g <- g + weight_decay * p``), then::

    Adagrad   s <- s + g^2;  u <- g / (sqrt(s) + eps) / (1 + (t - 1) lr_decay)
    RMSprop   v <- a v + (1 - a) g^2;  u <- g / (sqrt(v) + eps)     (centred: sqrt(v - m^2))
              b <- momentum b + u;  u <- b                          (momentum > 0)
    Adadelta  v <- rho v + (1 - rho) g^2;  u <- sqrt(d + eps) / sqrt(v + eps) g;
              d <- rho d + (1 - rho) u^2
    Adamax    m <- b1 m + (1 - b1) g;  n <- max(b2 n, |g| + eps);  u <- m / ((1 - b1^t) n)

and steps ``p <- p - lr * u``. See :mod:`optimlab.transforms.adagrad_rms` for the references.

Example::

    >>> opt = optimlab.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)
"""

from __future__ import annotations

import torch

from ..core import check_betas, check_nonneg, invalid
from ..registry import register
from ..transforms.adagrad_rms import scale_by_adadelta, scale_by_adamax, scale_by_inverse_time_decay, scale_by_rms, scale_by_rss
from ..transforms.momentum import trace
from ._base import Optimizer, fused_parts, kernel_lr, state_column

__all__ = ["Adagrad", "RMSprop", "Adadelta", "Adamax"]


def _check_unit(name, value):
    """A decay rate in [0, 1] (torch accepts both ends)."""
    check_nonneg(name, value)
    if value > 1:
        raise invalid(name, value, "must be in [0, 1]")


@register("adagrad", torch_name="Adagrad")
class Adagrad(Optimizer):
    """AdaGrad: per-coordinate steps scaled by the root of the sum of past squared gradients.

    Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization", JMLR 2011. ``initial_accumulator_value`` may differ per param group (torch
    uses the constructor's value for every group).

    >>> opt = optimlab.Adagrad(model.parameters(), lr=0.01, lr_decay=1e-4)
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None, **options):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, **options)

    densify_sparse_gradients = True

    def check_group(self, group):
        super().check_group(group)
        for key in ("lr_decay", "initial_accumulator_value", "eps"):
            check_nonneg(key, group[key])

    def _check_sparse(self, g, group):
        if group["weight_decay"] != 0:  # torch's rule: the decayed gradient would be dense
            raise RuntimeError("weight_decay option is not compatible with sparse gradients; "
                               "use weight_decay=0 with sparse embeddings")
        return g

    def native(self, group):
        """torch's fused Adagrad kernel when the group is plain Adagrad."""
        if type(self).core is not Adagrad.core or not self.plain(group):
            return None

        def step(params, grads, states, _):  # as torch's _fused_adagrad, per device and dtype
            parts = fused_parts(params, grads, states)
            if parts is None:
                return False
            sums = [state_column(sts, "sum") for _, _, sts in parts]
            if any(s is None for s in sums):
                return False
            for (ps, gs, sts), ss in zip(parts, sums):
                torch._fused_adagrad_(ps, gs, ss, self._advance_steps(group, sts),
                                      lr=kernel_lr(group["lr"], ps[0].device), lr_decay=group["lr_decay"],
                                      weight_decay=group["weight_decay"], eps=group["eps"],
                                      maximize=group["maximize"], grad_scale=None, found_inf=None)
            return True

        return step

    def core(self, group):
        chain = self.weight_decay(group) + [scale_by_rss()]
        if group["lr_decay"] != 0:
            chain.append(scale_by_inverse_time_decay())
        return chain


@register("rmsprop", torch_name="RMSprop")
class RMSprop(Optimizer):
    """RMSProp: steps scaled by the root of a moving average of squared gradients, optionally
    centred (divided by the moving standard deviation) and with heavy-ball momentum.

    Hinton, Neural Networks for Machine Learning, lecture 6e (2012); centred: Graves,
    "Generating Sequences With Recurrent Neural Networks" (2013).

    >>> opt = optimlab.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, centered=True)
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, **options):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
                        differentiable=differentiable)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        _check_unit("alpha", group["alpha"])
        check_nonneg("eps", group["eps"])
        check_nonneg("momentum", group["momentum"])

    def core(self, group):
        chain = self.weight_decay(group) + [scale_by_rms(centered=group["centered"])]
        if group["momentum"] != 0:
            chain.append(trace(start_from_grad=False))  # b <- momentum b + u, no dampening
        return chain


@register("adadelta", torch_name="Adadelta")
class Adadelta(Optimizer):
    """Adadelta: steps whose units match the parameters', the RMS of past updates over the RMS
    of past gradients.

    Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701 (2012).

    >>> opt = optimlab.Adadelta(model.parameters(), lr=1.0, rho=0.95)
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *, capturable=False,
                 maximize=False, differentiable=False, **options):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        capturable=capturable, maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        _check_unit("rho", group["rho"])
        check_nonneg("eps", group["eps"])

    def core(self, group):
        return self.weight_decay(group) + [scale_by_adadelta()]


@register("adamax", torch_name="Adamax")
class Adamax(Optimizer):
    """Adamax: Adam with the second moment replaced by an exponentially weighted infinity norm.

    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.1.

    >>> opt = optimlab.Adamax(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    """

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"])
        check_nonneg("eps", group["eps"])

    def core(self, group):
        return self.weight_decay(group) + [scale_by_adamax()]
