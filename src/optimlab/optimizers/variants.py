"""NAdam, RAdam, Rprop and ASGD (torch.optim's signatures and numbers).

NAdam (Dozat 2016): Adam with Nesterov momentum and the momentum schedule
``mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay))``, ``P_t = mu_1 ... mu_t``:

    p <- p - lr * ((1 - mu_t) / (1 - P_t) g + mu_{t+1} / (1 - P_t mu_{t+1}) m) / (sqrt(v / bc2) + eps)

RAdam (Liu et al. 2020): Adam's step times the variance rectifier ``r_t`` once ``rho_t > 5``,
the bias-corrected momentum ``m / bc1`` before.

Both take ``weight_decay`` as coupled L2 (``g <- g + wd p``) or, with
``decoupled_weight_decay=True``, as AdamW's decay (``p <- p - lr wd p``).

Rprop (Riedmiller & Braun 1993): per-entry step sizes grown by ``etas[1]`` while the gradient
keeps its sign, shrunk by ``etas[0]`` when it flips, clamped to ``step_sizes``;
``p <- p - sign(g) * step_size``. ``lr`` is only the initial step size.

ASGD (Polyak & Juditsky 1992): ``p <- (1 - lambd eta_t) p - eta_t g`` with
``eta_{t+1} = lr / (1 + lambd lr t)^alpha``, and the average ``ax`` of the iterates after ``t0``.

Example::

    >>> opt = optimlab.RAdam(model.parameters(), lr=1e-3, weight_decay=0.01, decoupled_weight_decay=True)
"""

from __future__ import annotations

from ..core import check_betas, check_nonneg, check_positive
from ..registry import register
from ..transforms.adam_variants import scale_by_nadam, scale_by_radam
from ..transforms.regularize import add_decayed_weights
from ..transforms.rprop_asgd import polyak_average, scale_by_asgd, scale_by_rprop
from ._base import Optimizer

__all__ = ["NAdam", "RAdam", "Rprop", "ASGD"]


class _AdamVariant(Optimizer):
    """Shared by NAdam and RAdam: Adam's checks and its two kinds of weight decay."""

    def check_group(self, group):
        super().check_group(group)
        check_nonneg("eps", group["eps"])
        check_betas("betas", group["betas"])

    def with_decay(self, group, scale):
        if not group["decoupled_weight_decay"]:
            return self.weight_decay(group) + [scale]
        if group["weight_decay"] != 0:
            return [scale, add_decayed_weights("weight_decay", group["decay_mask"])]
        return [scale]


@register("nadam", torch_name="NAdam")
class NAdam(_AdamVariant):
    """Adam with Nesterov momentum (Dozat 2016).

    Example: ``optimlab.NAdam(model.parameters(), lr=2e-3, momentum_decay=4e-3)``
    """

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, foreach=foreach, maximize=maximize,
                        capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_nonneg("momentum_decay", group["momentum_decay"])

    def core(self, group):
        return self.with_decay(group, scale_by_nadam())


@register("radam", torch_name="RAdam")
class RAdam(_AdamVariant):
    """Rectified Adam (Liu et al. 2020).

    Example: ``optimlab.RAdam(model.parameters(), lr=1e-3)``
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False,
                 *, foreach=None, maximize=False, capturable=False, differentiable=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, foreach=foreach, maximize=maximize,
                        capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, **options)

    def core(self, group):
        return self.with_decay(group, scale_by_radam())


@register("rprop", torch_name="Rprop")
class Rprop(Optimizer):
    """Resilient backpropagation (Riedmiller & Braun 1993): sign steps with adaptive sizes.

    Example: ``optimlab.Rprop(model.parameters(), lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50))``
    """

    low_precision = ("param_rounding",)  # its state holds no gradient moments

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, capturable=False,
                 foreach=None, maximize=False, differentiable=False, **options):
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, lr_key=None, **options)

    def check_group(self, group):
        super().check_group(group)
        for key in ("etas", "step_sizes"):
            if not isinstance(group[key], (tuple, list)) or len(group[key]) != 2:
                raise ValueError(f"Invalid {key}: {group[key]!r} (expected a tuple of 2 numbers)")
        eta_minus, eta_plus = group["etas"]
        if not 0.0 < eta_minus < 1.0 < eta_plus:
            raise ValueError(f"Invalid eta values: {eta_minus}, {eta_plus} (need 0 < etas[0] < 1 < etas[1])")
        s_min, s_max = group["step_sizes"]
        check_nonneg("step_sizes[0]", s_min)
        if not s_min <= s_max:
            raise ValueError(f"Invalid step_sizes: {group['step_sizes']!r} (need step_sizes[0] <= step_sizes[1])")

    def core(self, group):
        return [scale_by_rprop()]


@register("asgd", torch_name="ASGD")
class ASGD(Optimizer):
    """Averaged SGD with a decaying step size (Polyak & Juditsky 1992); the average is
    ``optimizer.state[p]["ax"]``.

    Example: ``optimlab.ASGD(model.parameters(), lr=0.01, t0=100)``
    """

    low_precision = ("param_rounding",)  # its state holds no gradient moments

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0, foreach=None,
                 maximize=False, differentiable=False, capturable=False, **options):
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)
        super().__init__(params, defaults, lr_key=None, **options)

    def check_group(self, group):
        super().check_group(group)
        check_nonneg("lambd", group["lambd"])
        check_nonneg("alpha", group["alpha"])
        check_nonneg("t0", group["t0"])

    def core(self, group):
        return self.weight_decay(group) + [scale_by_asgd(), polyak_average()]
