"""Learning-rate-free Adam: D-Adaptation (Defazio & Mishchenko, "Learning-Rate-Free Learning by
D-Adaptation", ICML 2023) and Prodigy (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
Parameter-Free Learner", ICML 2024). The step size is ``d * lr``: ``lr`` is a multiplier (1 by
default, or a schedule) and ``d``, an estimate of the distance to the solution, grows from
``d0`` as the gradients reveal it. The formulations are optax's (``optax.contrib.prodigy``,
``optax.contrib.dadapt_adamw``) and, for Prodigy, also the authors' (prodigyopt 1.1.2,
``prodigyopt/prodigy.py``), so they agree numerically.

With ``bc = sqrt(1 - b2^t) / (1 - b1^t)`` (1 without bias correction) and ``dlr = d lr bc``:

Prodigy (``s``, ``p0`` = the parameters at the first step, ``b3`` defaults to ``sqrt(b2)``)::

    m <- b1 m + (1 - b1) d g,     v <- b2 v + (1 - b2) d^2 g^2
    s <- b3 s + (d / d0) dlr g                      (safeguard_warmup: (d / d0) d g)
    N <- b3 N + (d / d0) dlr <g, p0 - p>
    d' = max(d, d_coef N / |s|_1)
    p <- p - dlr (m / (sqrt(v) + d' eps) + weight_decay p)

D-Adapt Adam (``sb2 = sqrt(b2)``)::

    N <- sb2 N + (1 - sb2) dlr <g, s / (sqrt(v) + eps)>       (s and v before this step)
    m <- b1 m + (1 - b1) dlr g,   v <- b2 v + (1 - b2) g^2,   s <- sb2 s + (1 - sb2) dlr g
    p <- p - m / (sqrt(v) + eps) - dlr weight_decay p
    d <- max(d, N / ((1 - sb2) |s|_1))

Everything uses the ``d`` of the start of the step (``dlr`` included), except Prodigy's
``d' eps`` in the denominator, which takes the new estimate: prodigyopt and optax both update
``d`` before they form the step. ``N`` and ``|s|_1`` are sums over all parameters of a param
group, so these transforms need the optimizer around them (:class:`optimlab.Prodigy`,
:class:`optimlab.DAdaptAdam`): it keeps ``d`` and ``N`` in the param group, hands each bucket a
place for its partial sums (``group["_d_sums"]``, a dict with lists ``"num"`` of
``(coefficient, [0-d tensors])`` and ``"den"`` of 0-d tensors) and updates ``d`` once the
group's buckets are done. ``d'`` is therefore known only after every bucket has moved: the
transform steps with ``d eps`` and, on the steps where ``d`` moved, the optimizer then corrects
the denominators (:func:`reprice_eps_`)::

    p <- p + dlr m (1 / (sqrt(v) + d eps) - 1 / (sqrt(v) + d' eps))
       = p + dlr (d' - d) eps m / ((sqrt(v) + d eps)(sqrt(v) + d' eps))

one eager pass over the group's tensors on the steps where ``d`` grows (none once it has
settled), exact up to rounding.

With ``compile=True`` they run in the compiled flat kernel (``layerwise``: the sums are over the
bucket's rows, padding excluded, see :class:`optimlab.core.Segments`); the kernel returns its
partial sums, which the engine appends to ``group["_d_sums"]`` like the eager path's. With a
``decay_mask`` they stay eager: selecting the decay per tensor in this kernel crashes Inductor
2.13's CPU code generator (a KeyError in its outer-loop fusion), with ``torch.where`` and with a
product alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..core import Transform, axpy_, scale_

__all__ = ["scale_by_prodigy", "scale_by_dadapt_adam", "reprice_eps_"]


def _zeros(p):
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _bias_correction(group, step: int, on: bool) -> float:
    b1, b2 = (float(b) for b in group["betas"])
    return math.sqrt(1.0 - b2**step) / (1.0 - b1**step) if on else 1.0


def _sums(xs: list) -> list:
    """Each tensor's sum, as 0-d tensors (no host sync)."""
    return [x.sum() for x in xs]


def _decayed(u, new, wd):
    """On the flat path: ``new + wd * p`` (unmasked: a masked chain stays eager, see the module
    docstring)."""
    return new + u.params[0] * wd


def _add_decay(u, new: list, mask, wd) -> None:
    """``new <- new + wd * p`` on the parameters ``mask`` keeps."""
    idx = u.select(mask)
    axpy_([new[i] for i in idx], wd, [u.params[i] for i in idx])


@dataclasses.dataclass(frozen=True)
class scale_by_prodigy(Transform):
    """Prodigy's step (see the module docstring), ``weight_decay`` included when ``decouple``,
    taken with ``d eps`` in the denominator (the optimizer moves it to ``d' eps`` with
    :func:`reprice_eps_` once the group's ``d'`` is known). State: ``exp_avg``, ``exp_avg_sq``,
    ``s``, ``p0`` (like p). Reads ``d``, ``d0``, ``lr``, ``betas``, ``beta3``, ``eps``,
    ``weight_decay`` and adds its partial sums to ``group["_d_sums"]``. Use with ``lr_key=None``:
    the update is the whole step."""

    bias_correction: bool = True
    safeguard_warmup: bool = False
    decouple: bool = False
    mask: Any = None
    hyperparameters = ("lr", "betas", "beta3", "eps", "weight_decay", "d0")
    moment_state = {"exp_avg": False, "exp_avg_sq": True}
    elementwise = False
    layerwise = True

    def init(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_sq": _zeros(p), "s": _zeros(p),
                "p0": p.detach().clone(memory_format=torch.preserve_format)}

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group["betas"])
        b3 = prodigy_beta3(group)
        d, d0 = float(group["d"]), float(group["d0"])
        dlr = prodigy_dlr(group, d, step, self.bias_correction)
        return {"b1": b1, "(1-b1)d": (1.0 - b1) * d, "b2": b2, "(1-b2)d^2": (1.0 - b2) * d * d, "b3": b3,
                "s_coef": d / d0 * (d if self.safeguard_warmup else dlr), "num_coef": d / d0 * dlr,
                "d*eps": d * group["eps"], "dlr": dlr, "wd": group["weight_decay"], "sums": group["_d_sums"]}

    def update(self, u, s):
        if u.segments is not None:  # the flat compiled path
            self._flat(u, s)
            return
        g, p = u.updates, u.params
        m, v, sk, p0 = (u.state[k] for k in ("exp_avg", "exp_avg_sq", "s", "p0"))
        moved = torch._foreach_sub(p0, p)
        torch._foreach_mul_(moved, g)
        s["sums"]["num"].append((s["num_coef"], _sums(moved)))
        del moved
        scale_(m, s["b1"])
        axpy_(m, s["(1-b1)d"], g)
        scale_(v, s["b2"])
        axpy_(v, s["(1-b2)d^2"], torch._foreach_mul(g, g))
        scale_(sk, s["b3"])
        axpy_(sk, s["s_coef"], g)
        s["sums"]["den"].extend(torch._foreach_norm(sk, 1))
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, s["d*eps"])
        new = torch._foreach_div(m, denom)
        if self.decouple:
            _add_decay(u, new, self.mask, s["wd"])
        scale_(new, s["dlr"])
        u.replace(new, fresh=True)

    def _flat(self, u, s):
        (g,), (p,) = u.updates, u.params
        m, v, sk, p0 = (u.state[k][0] for k in ("exp_avg", "exp_avg_sq", "s", "p0"))
        s["sums"]["num"].append((1.0, [u.segments.total((p0 - p) * g) * s["num_coef"]]))
        m.mul_(s["b1"]).add_(g * s["(1-b1)d"])
        v.mul_(s["b2"]).add_(g * g * s["(1-b2)d^2"])
        sk.mul_(s["b3"]).add_(g * s["s_coef"])
        s["sums"]["den"].append(u.segments.total(sk.abs()))
        new = m / (v.sqrt() + s["d*eps"])
        if self.decouple:
            new = _decayed(u, new, s["wd"])
        u.replace([new * s["dlr"]], fresh=True)


def reprice_eps_(params: list, m: list, v: list, dlr: float, eps_old: float, eps_new: float) -> None:
    """Move a step taken as ``p - dlr m / (sqrt(v) + eps_old)`` to ``p - dlr m / (sqrt(v) + eps_new)``,
    in place: ``p <- p + dlr (eps_new - eps_old) m / ((sqrt(v) + eps_old)(sqrt(v) + eps_new))``
    (the difference of the two reciprocals, written without cancellation). Prodigy's
    ``eps_old = d eps``, ``eps_new = d' eps``. One temporary: the product of the denominators is
    formed in place as ``v + (eps_old + eps_new) sqrt(v) + eps_old eps_new`` (positive terms);
    a second, fresh buffer costs as much as the rest of the pass on a CPU."""
    if not params or eps_new == eps_old:
        return
    denom = torch._foreach_sqrt(v)
    torch._foreach_mul_(denom, eps_old + eps_new)
    torch._foreach_add_(denom, v)
    torch._foreach_add_(denom, eps_old * eps_new)
    torch._foreach_addcdiv_(params, m, denom, value=dlr * (eps_new - eps_old))


def prodigy_dlr(group, d: float, step: int, bias_correction: bool) -> float:
    """Prodigy's step size ``dlr = d lr bc`` at ``step`` (``bc`` as in the module docstring)."""
    return d * float(group["lr"]) * _bias_correction(group, step, bias_correction)


def prodigy_beta3(group) -> float:
    """Prodigy's ``beta3``: the group's, or ``sqrt(betas[1])`` when it is None."""
    b3 = group["beta3"]
    return math.sqrt(float(group["betas"][1])) if b3 is None else float(b3)


@dataclasses.dataclass(frozen=True)
class scale_by_dadapt_adam(Transform):
    """D-Adapt Adam's step (see the module docstring), ``weight_decay`` included when
    ``decouple``. State: ``exp_avg``, ``exp_avg_sq``, ``s`` (like p). Reads ``d``, ``lr``,
    ``betas``, ``eps``, ``weight_decay`` and adds its partial sums to ``group["_d_sums"]``.
    Use with ``lr_key=None``: the update is the whole step."""

    bias_correction: bool = True
    decouple: bool = False
    mask: Any = None
    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    moment_state = {"exp_avg": False, "exp_avg_sq": True}
    elementwise = False
    layerwise = True

    def init(self, p, group):
        return {"exp_avg": _zeros(p), "exp_avg_sq": _zeros(p), "s": _zeros(p)}

    def scalars(self, group, step, host):
        b1, b2 = (float(b) for b in group["betas"])
        sb2 = math.sqrt(b2)
        dlr = float(group["d"]) * float(group["lr"]) * _bias_correction(group, step, self.bias_correction)
        return {"b1": b1, "(1-b1)dlr": (1.0 - b1) * dlr, "b2": b2, "1-b2": 1.0 - b2, "sb2": sb2,
                "(1-sb2)dlr": (1.0 - sb2) * dlr, "eps": group["eps"], "dlr": dlr,
                "wd*dlr": group["weight_decay"] * dlr, "sums": group["_d_sums"]}

    def update(self, u, s):
        if u.segments is not None:  # the flat compiled path
            self._flat(u, s)
            return
        g = u.updates
        m, v, sk = (u.state[k] for k in ("exp_avg", "exp_avg_sq", "s"))
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, s["eps"])
        weighted = torch._foreach_div(sk, denom)  # s / (sqrt(v) + eps), before this step's moments
        del denom
        torch._foreach_mul_(weighted, g)
        s["sums"]["num"].append((s["dlr"], _sums(weighted)))
        del weighted
        scale_(m, s["b1"])
        axpy_(m, s["(1-b1)dlr"], g)
        scale_(v, s["b2"])
        axpy_(v, s["1-b2"], torch._foreach_mul(g, g))
        scale_(sk, s["sb2"])
        axpy_(sk, s["(1-sb2)dlr"], g)
        s["sums"]["den"].extend(torch._foreach_norm(sk, 1))
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, s["eps"])
        new = torch._foreach_div(m, denom)
        if self.decouple:
            _add_decay(u, new, self.mask, s["wd*dlr"])
        u.replace(new, fresh=True)

    def _flat(self, u, s):
        (g,) = u.updates
        m, v, sk = (u.state[k][0] for k in ("exp_avg", "exp_avg_sq", "s"))
        s["sums"]["num"].append((1.0, [u.segments.total(sk / (v.sqrt() + s["eps"]) * g) * s["dlr"]]))
        m.mul_(s["b1"]).add_(g * s["(1-b1)dlr"])
        v.mul_(s["b2"]).add_(g * g * s["1-b2"])
        sk.mul_(s["sb2"]).add_(g * s["(1-sb2)dlr"])
        s["sums"]["den"].append(u.segments.total(sk.abs()))
        new = m / (v.sqrt() + s["eps"])
        if self.decouple:
            new = _decayed(u, new, s["wd*dlr"])
        u.replace([new], fresh=True)
