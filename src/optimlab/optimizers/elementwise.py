"""The modern elementwise optimizers: Lion, signSGD / Signum, AdaBelief, Yogi, Adan, ADOPT,
AdEMAMix and MADGRAD.

Each is a short chain of transforms whose every step is elementwise, so with ``compile=True``
it runs as one compiled kernel over flat buffers (see :mod:`optimlab._flat`). Formulations and
defaults follow optax (core or ``optax.contrib``) unless a class's docstring says otherwise.

The momentum-based ones take ``cautious=True`` (Liang et al. 2024, see
:mod:`optimlab.transforms.cautious`): update entries whose sign disagrees with the gradient are
dropped and the rest rescaled by ``n / (kept + 1)`` per tensor, before decoupled weight decay.
A cautious chain counts entries per tensor, so it runs on the eager multi-tensor path.

Default learning rates are chosen so that the lab's tasks reach their targets with the registry
defaults (checked on ``digits-cnn``); each class says why its default is what it is.
"""

from __future__ import annotations

from ..core import check_beta, check_betas, check_int, check_nonneg, check_positive
from ..registry import register
from ..transforms.cautious import cautious
from ..transforms.dual_averaging import scale_by_madgrad
from ..transforms.moments import (adopt_clip_lambda, scale_by_ademamix, scale_by_adan, scale_by_adopt,
                                  scale_by_belief, scale_by_yogi)
from ..transforms.orthogonal import ema_momentum
from ..transforms.regularize import add_decayed_weights
from ..transforms.sign import scale_by_lion, scale_by_sign
from ._base import Optimizer

__all__ = ["Lion", "SignSGD", "Signum", "AdaBelief", "Yogi", "Adan", "ADOPT", "AdEMAMix", "MADGRAD"]


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be True or False)")


class _Family(Optimizer):
    """Shared bookkeeping: the ``cautious`` flag and both kinds of weight decay."""

    def check_group(self, group):
        super().check_group(group)
        if "cautious" in group:
            check_bool("cautious", group["cautious"])

    def cautious(self, group):
        return [cautious(maximize=bool(group["maximize"]))] if group.get("cautious") else []

    def decoupled(self, group, direction):
        """``direction``, then the cautious mask, then AdamW's ``u <- u + wd p`` (so that
        ``p <- p - lr (u + wd p)``)."""
        chain = list(direction) + self.cautious(group)
        if group["weight_decay"] != 0:
            chain.append(add_decayed_weights("weight_decay", group["decay_mask"]))
        return chain

    def coupled(self, group, direction):
        """``g <- g + wd p`` (torch's ``weight_decay``), ``direction``, the cautious mask."""
        return self.weight_decay(group) + list(direction) + self.cautious(group)


@register("lion")
class Lion(_Family):
    """Lion, EvoLved Sign Momentum (Chen et al., "Symbolic Discovery of Optimization
    Algorithms", NeurIPS 2023), optax's ``lion``::

        u_t = sign(b1 m_{t-1} + (1 - b1) g_t),    m_t = b2 m_{t-1} + (1 - b2) g_t
        p  <- p - lr (u_t + weight_decay p)

    Every entry moves by exactly ``lr`` (plus decay), so Lion wants a learning rate 3-10x smaller
    than AdamW's and a weight decay 3-10x larger for the same ``lr * weight_decay``.

    Defaults: betas and ``weight_decay=1e-3`` are optax's. ``lr=3e-4``: the paper's 1e-4 (with
    its 10x weight decay) is tuned for long runs; on the lab's short budgets it stops short
    (``digits-cnn``, 800 steps: 86 % test accuracy, target 95 % missed), while 3e-4 -- AdamW's
    default 1e-3 / 3 -- reaches it in about 520 steps.
    The decay is lr-scaled (optax, pytorch_optimizer, the paper's pseudo-code); pytorch_optimizer's
    ``Lion`` defaults to ``lr=1e-4, weight_decay=0``.

    Example: ``optimlab.Lion(model.parameters(), lr=3e-4, weight_decay=1e-2, cautious=True)``
    """

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.99), weight_decay=1e-3, *, cautious=False, maximize=False,
                 foreach=None, **options):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, cautious=cautious, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"])

    def core(self, group):
        return self.decoupled(group, [scale_by_lion()])


@register("signsgd")
class SignSGD(_Family):
    """signSGD (Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems",
    ICML 2018), optax's ``sign_sgd``::

        p <- p - lr sign(g + weight_decay p)

    ``weight_decay`` is coupled L2 (optax has none; Bernstein et al.'s code adds it to the
    gradient). Default ``lr=2e-3``: a sign step moves every entry by ``lr``; without momentum
    the noisy mini-batch signs cancel part of the progress, and at 1e-3 ``digits-cnn`` reaches
    its target only in the budget's last epoch (2e-3: by 70 % of it).

    Example: ``optimlab.SignSGD(model.parameters(), lr=2e-3)``
    """

    low_precision = ("param_rounding",)  # its state holds no gradient moments

    def __init__(self, params, lr=2e-3, weight_decay=0.0, *, maximize=False, foreach=None, **options):
        defaults = dict(lr=lr, weight_decay=weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults, **options)

    def core(self, group):
        return self.weight_decay(group) + [scale_by_sign()]


@register("signum")
class Signum(_Family):
    """Signum, signSGD with momentum (Bernstein et al. 2018), optax's ``signum``::

        g <- g + weight_decay p
        m <- momentum m + (1 - momentum) g            (m_0 = 0; no bias correction: only its sign counts)
        p <- p - lr sign(m)

    ``weight_decay`` is coupled, as in the authors' code (optax has none). Default ``lr=1e-3``:
    as for :class:`SignSGD`, every entry moves by ``lr`` per step.

    Example: ``optimlab.Signum(model.parameters(), lr=1e-3, momentum=0.9, cautious=True)``
    """

    def __init__(self, params, lr=1e-3, momentum=0.9, weight_decay=0.0, *, cautious=False, maximize=False,
                 foreach=None, **options):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, cautious=cautious, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_beta("momentum", group["momentum"])

    def core(self, group):
        return self.coupled(group, [ema_momentum(), scale_by_sign()])


@register("adabelief")
class AdaBelief(_Family):
    """AdaBelief (Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
    Observed Gradients", NeurIPS 2020), optax's ``adabelief``::

        m <- b1 m + (1 - b1) g,   s <- b2 s + (1 - b2) (g - m)^2 + eps
        p <- p - lr ((m / bc1) / (sqrt(s / bc2) + eps) + weight_decay p)

    ``eps`` (1e-16) serves both as optax's ``eps_root`` (inside ``s``) and its ``eps``, as in the
    authors' code. Weight decay is decoupled by default (the authors' ``weight_decouple=True``);
    ``decoupled_weight_decay=False`` adds it to the gradient instead. Unlike the authors' code
    and pytorch_optimizer there is no ``rectify`` (RAdam) or AMSGrad option. Default
    ``lr=1e-3``: the paper's and Adam's.

    Example: ``optimlab.AdaBelief(model.parameters(), lr=1e-3, weight_decay=1e-2)``
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0,
                 decoupled_weight_decay=True, *, cautious=False, maximize=False, foreach=None, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, cautious=cautious, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"])
        check_nonneg("eps", group["eps"])

    def core(self, group):
        wd = self.decoupled if group["decoupled_weight_decay"] else self.coupled
        return wd(group, [scale_by_belief()])


@register("yogi")
class Yogi(_Family):
    """Yogi (Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018), optax's
    ``yogi``::

        g <- g + weight_decay p
        m <- b1 m + (1 - b1) g,   v <- v - (1 - b2) sign(v - g^2) g^2     (m_0 = v_0 = initial_accumulator_value)
        p <- p - lr (m / bc1) / (sqrt(v / bc2) + eps)

    Both moments start at ``initial_accumulator_value`` and are bias-corrected (optax; the paper
    starts ``m`` at 0). ``weight_decay`` is coupled L2 (the paper has none). Default ``lr=1e-2``:
    the paper's recommendation (Yogi's ``eps=1e-3`` damps small-gradient steps, so it tolerates a
    larger lr than Adam).

    Example: ``optimlab.Yogi(model.parameters(), lr=1e-2)``
    """

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.0,
                 initial_accumulator_value=1e-6, *, cautious=False, maximize=False, foreach=None, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, cautious=cautious, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"])
        check_nonneg("eps", group["eps"])
        check_positive("initial_accumulator_value", group["initial_accumulator_value"])

    def core(self, group):
        return self.coupled(group, [scale_by_yogi()])


@register("adan")
class Adan(_Family):
    """Adan, adaptive Nesterov momentum (Xie et al., TPAMI 2024), as in the paper's Algorithm 1
    and the authors' code, with ``d = g_t - g_{t-1}`` (0 at the first step)::

        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) d,   n <- b3 n + (1 - b3) (g + b2 d)^2
        p <- p - lr ((m / bc1 + b2 v / bc2) / (sqrt(n / bc3) + eps) + weight_decay p)

    Differs from optax's ``adan``, which weights ``d`` by ``1 - b2`` (0.08) instead of ``b2``
    (0.92) in ``n`` and in the update -- against its own documented equations (optax pull
    request #1715) -- and adds ``eps_root=1e-8`` inside the square root (the authors' code has
    none). Weight decay is decoupled (optax; the authors' ``no_prox=True`` variant); the authors'
    default ``no_prox=False`` and pytorch_optimizer's default ``weight_decouple=False`` apply it
    proximally instead, ``p <- p / (1 + lr weight_decay)`` after the step. Neither clips gradients
    by default (both have ``max_grad_norm=0``). Defaults: optax's
    betas and ``weight_decay=0``; ``lr=3e-3`` rather than the authors' code's 1e-3: Adan's
    slow first moment (``b1=0.98``) makes 1e-3 reach the ``digits-cnn`` target only near the
    end of its budget, and the paper reports Adan tolerating larger learning rates than Adam.

    Example: ``optimlab.Adan(model.parameters(), lr=3e-3, weight_decay=0.02)``
    """

    def __init__(self, params, lr=3e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0, *, cautious=False,
                 maximize=False, foreach=None, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, cautious=cautious, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"], n=3)
        check_nonneg("eps", group["eps"])

    def core(self, group):
        return self.decoupled(group, [scale_by_adan()])


@register("adopt")
class ADOPT(_Family):
    """ADOPT (Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any beta2 with the
    Optimal Rate", NeurIPS 2024), optax's ``contrib.adopt``: normalise by the *previous* second
    moment, clip, then average. The first step only records ``v_1 = g_1^2`` (no move)::

        x <- clip(g / max(sqrt(v), eps), -c_t, c_t),   c_t = clip_lambda(t - 1)
        m <- b1 m + (1 - b1) x,   v <- b2 v + (1 - b2) g^2
        p <- p - lr m

    ``clip_lambda`` maps the number of completed updates to the threshold (default ``t ** 0.25``,
    optax's; ``None`` disables clipping). The authors' code evaluates it at the new step
    count, i.e. one step later. ``weight_decay`` is coupled L2 by default (the authors'
    ``decouple=False``); ``decoupled_weight_decay=True`` makes it AdamW's. Default ``lr=1e-3``:
    the paper's and the authors' code's.

    Example: ``optimlab.ADOPT(model.parameters(), lr=1e-3, betas=(0.9, 0.9999))``
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, clip_lambda=adopt_clip_lambda,
                 weight_decay=0.0, decoupled_weight_decay=False, *, cautious=False, maximize=False, foreach=None,
                 **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, clip_lambda=clip_lambda, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, cautious=cautious, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"])
        check_nonneg("eps", group["eps"])
        if group["clip_lambda"] is not None and not callable(group["clip_lambda"]):
            raise ValueError(f"Invalid clip_lambda: {group['clip_lambda']!r} (must be a function of the step "
                             "count returning the clipping threshold, or None for no clipping)")

    def core(self, group):
        direction = [scale_by_adopt(clip=group["clip_lambda"] is not None)]
        wd = self.decoupled if group["decoupled_weight_decay"] else self.coupled
        return wd(group, direction)


@register("ademamix")
class AdEMAMix(_Family):
    """AdEMAMix (Pagliardini et al., "The AdEMAMix Optimizer: Better, Faster, Older", ICLR 2025),
    optax's ``contrib.ademamix``: Adam with a second, slow momentum mixed in::

        m1 <- b1 m1 + (1 - b1) g,   m2 <- b3 m2 + (1 - b3) g,   v <- b2 v + (1 - b2) g^2
        p  <- p - lr ((m1 / bc1 + alpha m2) / (sqrt(v / bc2) + eps) + weight_decay p)

    ``t_alpha_beta3`` (steps, default None: off) turns on the paper's warm-up of ``alpha``
    (linear) and ``b3`` (so that the slow average's horizon grows linearly), which the paper
    recommends for large ``alpha``/``b3``; optax expresses it by passing schedules. Defaults:
    optax's (``alpha=5``, decoupled ``weight_decay=0``), ``lr=1e-3`` as Adam's.

    Example: ``optimlab.AdEMAMix(model.parameters(), lr=1e-3, t_alpha_beta3=10_000)``
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, t_alpha_beta3=None, eps=1e-8,
                 weight_decay=0.0, *, cautious=False, maximize=False, foreach=None, **options):
        defaults = dict(lr=lr, betas=betas, alpha=alpha, t_alpha_beta3=t_alpha_beta3, eps=eps,
                        weight_decay=weight_decay, cautious=cautious, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults, **options)

    def check_group(self, group):
        super().check_group(group)
        check_betas("betas", group["betas"], n=3)
        check_nonneg("alpha", group["alpha"])
        check_nonneg("eps", group["eps"])
        if group["t_alpha_beta3"] is not None:
            check_int("t_alpha_beta3", group["t_alpha_beta3"], minimum=1)

    def core(self, group):
        return self.decoupled(group, [scale_by_ademamix()])


@register("madgrad")
class MADGRAD(_Family):
    """MADGRAD (Defazio & Jelassi, JMLR 2022), optax's ``contrib.madgrad`` and the authors'
    code: dual averaging from the initial point ``x0`` with a cube-root adaptive scale::

        g <- g + weight_decay p
        lamb = (lr + eps) sqrt(t),   G <- G + lamb g^2,   s <- s + lamb g
        z = x0 - s / (G^(1/3) + eps),   p <- momentum p + (1 - momentum) z

    The learning rate weighs the sums, so it is not a final scale: ``l1`` and
    ``decoupled_decay`` options act unscaled (as for Rprop). Default ``lr=1e-2``: the authors'
    (MADGRAD's steps are ~lr^(2/3)-sized, so its lr is larger than Adam's).

    Example: ``optimlab.MADGRAD(model.parameters(), lr=1e-2, momentum=0.9)``
    """

    def __init__(self, params, lr=1e-2, momentum=0.9, weight_decay=0.0, eps=1e-6, *, maximize=False, foreach=None,
                 **options):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, lr_key=None, **options)

    def check_group(self, group):
        super().check_group(group)
        check_beta("momentum", group["momentum"])
        check_nonneg("eps", group["eps"])

    def core(self, group):
        return self.weight_decay(group) + [scale_by_madgrad()]
