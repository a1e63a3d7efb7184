"""Adam and AdamW (torch.optim's signatures and numbers).

    g <- g + weight_decay * p                        (Adam, coupled L2)
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2     (AMSGrad: v <- max(v_max, v))
    u <- (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    p <- p - lr * (u + weight_decay * p)             (AdamW, decoupled; Loshchilov & Hutter 2019)

Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.

Example::

    >>> opt = optimlab.AdamW(model.named_parameters(), lr=3e-4, decay_mask="no_bias_norm")
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import check_betas, check_nonneg
from ..transforms.adam import scale_by_adam
from ..transforms.regularize import add_decayed_weights
from ..registry import register
from ._base import Optimizer, fused_parts, kernel_lr, state_column

__all__ = ["Adam", "AdamW"]


@register("adam", torch_name="Adam")
class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        foreach=foreach, maximize=maximize, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_nonneg("eps", group["eps"])
        check_betas("betas", group["betas"])
        b1, b2 = group["betas"]
        if isinstance(b1, Tensor) != isinstance(b2, Tensor):
            raise ValueError(f"betas must be either both floats or both Tensors (got {group['betas']!r})")
        # torch's rule, kept so code written against torch sees the same error: its foreach
        # kernels cannot take tensor hyperparameters unless capturable
        if group["foreach"] and not group["capturable"]:
            for key, value in (("lr", group["lr"]), ("betas[0]", b1)):
                if isinstance(value, Tensor):
                    raise ValueError(f"{key} as a Tensor is not supported for capturable=False and "
                                     "foreach=True; pass a float, or foreach=None")

    def native(self, group):
        """torch's fused Adam/AdamW kernel (one pass over memory) when the group is plain Adam.
        The kernel is called as torch's ``_fused_adam`` calls it, once per device and dtype
        (:func:`fused_parts`), and the group's values are read at each call."""
        if type(self).core is not Adam.core or not self.plain(group):
            return None

        def step(params, grads, states, _):
            parts = fused_parts(params, grads, states)
            if parts is None:
                return False
            amsgrad = group["amsgrad"]
            calls = []
            for ps, gs, sts in parts:  # (every part checked before any is stepped)
                exp_avgs, exp_avg_sqs = state_column(sts, "exp_avg"), state_column(sts, "exp_avg_sq")
                maxs = state_column(sts, "max_exp_avg_sq") if amsgrad else []
                if exp_avgs is None or exp_avg_sqs is None or maxs is None:
                    return False
                calls.append((ps, gs, sts, exp_avgs, exp_avg_sqs, maxs))
            b1, b2 = group["betas"]
            kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
            for ps, gs, sts, exp_avgs, exp_avg_sqs, maxs in calls:
                kernel(ps, gs, exp_avgs, exp_avg_sqs, maxs, self._advance_steps(group, sts), amsgrad=amsgrad,
                       lr=kernel_lr(group["lr"], ps[0].device),
                       beta1=float(b1), beta2=float(b2), weight_decay=group["weight_decay"], eps=group["eps"],
                       maximize=group["maximize"], grad_scale=None, found_inf=None)
            return True

        return step

    def core(self, group):
        if group["decoupled_weight_decay"]:
            chain = [scale_by_adam(amsgrad=group["amsgrad"])]
            if group["weight_decay"] != 0:
                chain.append(add_decayed_weights("weight_decay", group["decay_mask"]))
            return chain
        return self.weight_decay(group) + [scale_by_adam(amsgrad=group["amsgrad"])]


@register("adamw", torch_name="AdamW")
class AdamW(Adam):
    """Adam with decoupled weight decay (``Adam(..., decoupled_weight_decay=True)``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None, **options):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, **options)

    def _tidy_state(self):
        for group in self.param_groups:  # as torch's AdamW: a loaded Adam state_dict stays AdamW
            group["decoupled_weight_decay"] = True
        super()._tidy_state()
