"""Prodigy and D-Adapt Adam: Adam without a learning rate to tune. The step size is ``d * lr``,
``lr`` a multiplier (1.0, or a schedule treating 1.0 as its peak) and ``d`` estimated on the fly
from the gradients, growing from ``d0``.

Prodigy (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
ICML 2024) and D-Adaptation (Defazio & Mishchenko, "Learning-Rate-Free Learning by
D-Adaptation", ICML 2023); the update rules are in :mod:`optimlab.transforms.lr_free`.

**optax's formulation and defaults** (``optax.contrib.prodigy``, ``optax.contrib.dadapt_adamw``):
Adam's bias correction is on (``use_bias_correction=True``; the reference implementations,
prodigyopt and dadaptation, default to False), weight decay is decoupled (``decouple=True``:
``p <- p - d lr bc weight_decay p``; ``decouple=False`` adds ``weight_decay * p`` to the gradient,
as the references' option does), the step uses the ``d`` of the start of the step -- except
Prodigy's ``d eps`` term of the denominator, which takes the new ``d`` (as prodigyopt and optax
do) -- and ``d <- max(d, estimate)``. From the reference implementations: ``growth_rate``
(``d`` grows by at most this factor per step; inf by default, as optax), Prodigy's
``safeguard_warmup`` and ``d_coef``; ``d`` stays put on a step with ``lr == 0`` or with an
all-zero ``s`` (where optax would divide by zero).

``d`` is estimated **per param group**, from the sums over that group's parameters (each group is
adapted as its own problem; the references share one ``d`` across groups and require equal
``lr``): to match them, keep the parameters in one group (``decay_mask`` excludes biases from
decay without a second group). ``d`` and its companions live in the param group (Prodigy:
``d``, ``d_max``, ``d_numerator``; D-Adapt: ``d``, ``numerator_weighted``), so
``optimizer.param_groups[0]["d"]`` shows the estimate and ``state_dict()`` carries it exactly.
Each step reads two sums back to the host once per group (one device sync).

optimlab options: clipping, ``l2``, ``decay_mask`` (applies to ``weight_decay``),
``independent_decay``, ``accumulate_steps``, ``skip_nonfinite`` and ``maximize`` work as
everywhere; ``decoupled_decay`` and ``l1`` are refused (they would be scaled by ``lr``, a
multiplier here, not by the step size ``d * lr``: use ``weight_decay``). With ``compile=True``
each bucket is one compiled kernel that also returns its partial sums (25 M parameters,
2 threads, same run: Prodigy 200 -> 50 ms per step, DAdaptAdam 217 -> 43 ms); with a
``decay_mask`` they stay eager (see :mod:`optimlab.transforms.lr_free`). On the steps where its
``d`` grows, Prodigy adds one eager pass that moves the ``d eps`` term to the new ``d`` (see
there; 4.2 M parameters, 1 thread: about 25 ms, against 27 ms for the compiled step).

Example::

    >>> opt = optimlab.Prodigy(model.parameters(), weight_decay=0.01)          # lr=1.0
    >>> opt = optimlab.DAdaptAdam(model.named_parameters(), weight_decay=0.01, decay_mask="no_bias_norm")
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import _dist
from ..core import check_beta, check_betas, check_nonneg, check_positive
from ..registry import register
from ..transforms.lr_free import prodigy_beta3, prodigy_dlr, reprice_eps_, scale_by_dadapt_adam, scale_by_prodigy
from ._base import Optimizer

__all__ = ["Prodigy", "DAdaptAdam"]


def _total(parts: list, process_group) -> float:
    """``sum(coefficient * t)`` over ``[(coefficient, [0-d tensors]), ...]``, in float64, with a
    single read back to the host; summed over the ranks where the tensors are shards (a DTensor's
    partial sums, or ZeRO's partition with ``process_group``: see :mod:`optimlab._dist`)."""
    vals = [t * c if c != 1.0 else t for c, ts in parts for t in ts]
    return _dist.total(vals, vals, process_group).item()


class _LearningRateFree(Optimizer):
    """The per-group estimate ``d``: each group's buckets add their partial sums, then
    :meth:`update_d` moves ``d`` once per group and step."""

    #: the group entries holding the estimate and its history (None until the group is added)
    estimate_keys: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict[str, Any], **options: Any) -> None:
        super().__init__(params, {**defaults, **dict.fromkeys(self.estimate_keys)}, lr_key=None, **options)

    def initial_estimate(self, group: dict) -> dict[str, float]:  # pragma: no cover - interface
        raise NotImplementedError

    def check_group(self, group):
        super().check_group(group)
        for key in ("decoupled_decay", "l1"):
            if group[key] != 0:
                raise ValueError(
                    f"{type(self).__name__} does not support the option {key}={group[key]}: it would be scaled by "
                    "lr, a multiplier of the adapted step size d * lr here; use weight_decay")
        check_betas("betas", group["betas"])
        check_nonneg("eps", group["eps"])
        check_positive("d0", group["d0"])
        if not group["growth_rate"] >= 1:
            raise ValueError(f"Invalid growth_rate: {group['growth_rate']} (must be >= 1: d may grow by at most "
                             "this factor per step; inf for no limit)")
        if group["d"] is None:  # a new group starts from d0
            group.update(self.initial_estimate(group))

    def _step_group(self, group):
        stepped = [p for p in group["params"] if self._grad(p) is not None]
        d = group["d"]
        sums = self._step_info["_d_sums"] = {"num": [], "den": []}
        try:
            super()._step_group(group)
        finally:
            del self._step_info["_d_sums"]
        pg = self.process_group
        if pg is not None:  # every rank of ZeRO's partition adds its share (none, too)
            count = torch.tensor(float(len(sums["den"])))
            if _total([(1.0, [count])], pg) > 0:  # some rank's parameters had gradients
                self.update_d(group, _total(sums["num"], pg), _total([(1.0, sums["den"])], pg))
                self.after_d(group, stepped, d)
        elif sums["den"]:  # empty when no parameter had a gradient: nothing moved, nor does d
            self.update_d(group, _total(sums["num"], None), _total([(1.0, sums["den"])], None))
            self.after_d(group, stepped, d)

    def update_d(self, group: dict, numerator: float, s_l1: float) -> None:  # pragma: no cover
        raise NotImplementedError

    def after_d(self, group: dict, params: list, d: float) -> None:
        """Finish the step of ``params`` (those that had a gradient) once ``group["d"]`` has moved
        on from ``d``: nothing to do unless the step depends on the new estimate."""


@register("prodigy")
class Prodigy(_LearningRateFree):
    """Prodigy: D-Adaptation's Adam with a faster-growing estimate of the step size.

    See the module docstring and :mod:`optimlab.transforms.lr_free` for the rule; optax's
    ``prodigy`` formulation and defaults. Example: ``optimlab.Prodigy(model.parameters())``.
    """

    estimate_keys = ("d", "d_max", "d_numerator")

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0, decouple=True,
                 use_bias_correction=True, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf, *,
                 foreach=None, maximize=False, **options):
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup, d0=d0,
                        d_coef=d_coef, growth_rate=growth_rate, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, **options)

    def initial_estimate(self, group):
        return {"d": group["d0"], "d_max": group["d0"], "d_numerator": 0.0}

    def check_group(self, group):
        super().check_group(group)
        if group["beta3"] is not None:
            check_beta("beta3", group["beta3"])
        check_positive("d_coef", group["d_coef"])

    def core(self, group):
        decouple = bool(group["decouple"])
        coupled = [] if decouple else self.weight_decay(group)
        return coupled + [scale_by_prodigy(bias_correction=bool(group["use_bias_correction"]),
                                           safeguard_warmup=bool(group["safeguard_warmup"]),
                                           decouple=decouple and group["weight_decay"] != 0,
                                           mask=group["decay_mask"])]

    def update_d(self, group, numerator, s_l1):
        numerator += prodigy_beta3(group) * group["d_numerator"]
        group["d_numerator"] = numerator
        if group["lr"] > 0 and s_l1 > 0:
            d, d_hat = group["d"], group["d_coef"] * numerator / s_l1
            if d == group["d0"]:  # the first estimate is taken whatever growth_rate says (as prodigyopt)
                d = max(d, d_hat)
            group["d_max"] = max(group["d_max"], d_hat)
            group["d"] = min(group["d_max"], d * group["growth_rate"])

    def after_d(self, group, params, d):
        """The step was taken with ``d eps`` in the denominator; move it to ``d' eps`` (see
        :mod:`optimlab.transforms.lr_free`), per step count (the bias correction differs)."""
        d_new, eps = group["d"], group["eps"]
        if d_new == d or eps == 0:
            return
        by_step: dict[int, list] = {}
        for p in params:  # state["step"] may be a 0-d tensor, as torch.optim keeps it
            by_step.setdefault(int(self.state[p]["step"]), []).append(p)
        for step, ps in by_step.items():
            dlr = prodigy_dlr(group, d, step, bool(group["use_bias_correction"]))
            states = [self.state[p] for p in ps]
            reprice_eps_(ps, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states], dlr,
                         d * eps, d_new * eps)


@register("dadapt-adam")
class DAdaptAdam(_LearningRateFree):
    """D-Adapt Adam: Adam whose step size ``d * lr`` comes from a running lower bound on the
    distance to the solution.

    See the module docstring and :mod:`optimlab.transforms.lr_free` for the rule; optax's
    ``dadapt_adamw`` formulation and defaults. Example: ``optimlab.DAdaptAdam(model.parameters())``.
    """

    estimate_keys = ("d", "numerator_weighted")

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decouple=True,
                 use_bias_correction=True, d0=1e-6, growth_rate=math.inf, *, foreach=None, maximize=False, **options):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, d0=d0, growth_rate=growth_rate, foreach=foreach,
                        maximize=maximize)
        super().__init__(params, defaults, **options)

    def initial_estimate(self, group):
        return {"d": group["d0"], "numerator_weighted": 0.0}

    def core(self, group):
        decouple = bool(group["decouple"])
        coupled = [] if decouple else self.weight_decay(group)
        return coupled + [scale_by_dadapt_adam(bias_correction=bool(group["use_bias_correction"]),
                                               decouple=decouple and group["weight_decay"] != 0,
                                               mask=group["decay_mask"])]

    def update_d(self, group, numerator, s_l1):
        sb2 = math.sqrt(float(group["betas"][1]))
        weighted = group["numerator_weighted"] = sb2 * group["numerator_weighted"] + (1.0 - sb2) * numerator
        if group["lr"] > 0 and s_l1 > 0:
            d = group["d"]
            group["d"] = max(d, min(weighted / ((1.0 - sb2) * s_l1), d * group["growth_rate"]))
