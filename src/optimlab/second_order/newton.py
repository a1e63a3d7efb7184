"""Newton's method with an exact Hessian, and Hessian-free Newton (truncated conjugate gradient).

One Newton iteration per ``step(closure)``:

    solve (H + lambda I) d = -g          (Newton: Cholesky of the dense Hessian;
                                          NewtonCG: conjugate gradient on Hessian-vector products)
    x <- x + t lr d                      (t from the line search, starting at 1)

``damping`` (lambda) is Levenberg-Marquardt's: 0 gives the pure Newton step; with
``adaptive_damping=True`` it follows the ratio rho of the actual to the predicted decrease
(lambda *= 3/2 if rho < 1/4, lambda *= 2/3 if rho > 3/4; Martens 2010, sec. 4.1). Where H + lambda I
is not positive definite, Newton raises lambda until it is (the modified Newton step); NewtonCG
stops CG at the first direction of negative curvature (steepest descent if that is the first one).

NewtonCG's CG stops at ``||r|| <= min(0.5, sqrt(||g||)) ||g||`` (Eisenstat-Walker forcing: inexact
far from the optimum, superlinear near it; Nocedal & Wright Algorithm 7.1) or after
``max_cg_iter`` products.

Exact Newton forms the n x n Hessian: it refuses a model whose Hessian would not fit (see
:func:`optimlab.second_order.check_dense_cost`) unless ``force=True``.

Any closure works (see :mod:`optimlab.second_order.base`). With one that returns the loss, or
calls ``loss.backward(create_graph=True)``, Hessian-vector products are exact (double backward);
with torch's usual ``loss.backward()``, which frees the graph, they are central differences of
the gradient, two closure calls each (a warning says so, once): NewtonCG's CG pays two calls
per product, Newton ``2 n`` per Hessian.

Martens, "Deep learning via Hessian-free optimization", ICML 2010. Nocedal & Wright, *Numerical
Optimization*, 2nd ed., chapters 3 and 7.

Example::

    >>> opt = optimlab.Newton(model.parameters())
    >>> def closure():
    ...     return loss_fn(model(x), y)          # no backward: the optimizer differentiates (exactly)
    >>> for _ in range(10):
    ...     opt.step(closure)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import check_int, check_nonneg
from ..registry import register
from .base import ClosureOptimizer, Curvature, check_tolerance

__all__ = ["Newton", "NewtonCG"]


class _NewtonBase(ClosureOptimizer):
    needs_hessian = True

    def check_group(self, group):
        super().check_group(group)
        check_nonneg("damping", group["damping"])
        check_tolerance("tolerance_grad", group["tolerance_grad"])

    def _damping(self) -> float:
        return self._state.get("damping", self.param_groups[0]["damping"])

    def _search_or_step(self, closure, f: float, g: Tensor, d: Tensor):
        """Take the step along ``d`` (line search or plain), return the new loss if known."""
        group = self.param_groups[0]
        d = d * self._per_coordinate("lr", masked=False)
        if group["line_search_fn"] is None:
            self._add_params(1.0, d)
            return None, d
        res = self._line_search(group["line_search_fn"], closure, f, g, d, 1.0)
        return res.f, res.t * d

    def _adapt(self, f_old: float, f_new: float | None, predicted: float, lam: float) -> None:
        """Levenberg-Marquardt's update of the damping from the reduction ratio."""
        if not self.param_groups[0]["adaptive_damping"] or f_new is None or predicted >= 0:
            return
        rho = (f_new - f_old) / predicted
        if rho < 0.25:
            lam = max(lam * 1.5, 1e-8)
        elif rho > 0.75:
            lam = lam * (2.0 / 3.0)
        self._state["damping"] = lam


@register("newton", needs_closure=True, second_order=True)
class Newton(_NewtonBase):
    """Newton's method with the exact Hessian, Levenberg-Marquardt damping and a line search."""

    def __init__(self, params, lr=1.0, damping=0.0, adaptive_damping=False, line_search_fn="backtracking",
                 tolerance_grad=1e-12, max_memory=None, force=False, **options):
        defaults = dict(lr=lr, damping=damping, adaptive_damping=adaptive_damping, line_search_fn=line_search_fn,
                        tolerance_grad=tolerance_grad)
        super().__init__(params, defaults, options)
        if not force:
            self._check_dense_cost(max_memory, "NewtonCG (Hessian-free: Hessian-vector products only) or LBFGS")

    def _step(self, closure):
        f, g, curvature = self._evaluate(closure, graph=True)
        if g.abs().max() <= self.param_groups[0]["tolerance_grad"]:
            return f
        h = curvature.dense()  # H + L2
        n = h.shape[0]
        lam = self._damping()
        scale = float(h.diagonal().abs().max().clamp_min(1e-12))
        eye = torch.eye(n, dtype=h.dtype, device=h.device)
        for _ in range(80):  # raise the damping until H + lam I is positive definite
            chol, info = torch.linalg.cholesky_ex(h + lam * eye)
            if int(info) == 0:
                break
            lam = max(2 * lam, 1e-10 * scale)
        else:
            raise RuntimeError(f"Newton: H + lambda I is not positive definite even at lambda={lam:.3g}; "
                               "the Hessian has non-finite entries?")
        d = torch.cholesky_solve(-g.unsqueeze(1), chol).squeeze(1)
        predicted = float(g.dot(d) + 0.5 * d.dot(h @ d))
        f_new, step = self._search_or_step(closure, f, g, d)
        if f_new is not None and step is not None:
            predicted = float(g.dot(step) + 0.5 * step.dot(h @ step))
        self._adapt(f, f_new, predicted, lam)
        return f


@register("newton-cg", needs_closure=True, second_order=True)
class NewtonCG(_NewtonBase):
    """Hessian-free Newton: truncated conjugate gradient on Hessian-vector products."""

    def __init__(self, params, lr=1.0, damping=0.0, adaptive_damping=False, max_cg_iter=250,
                 line_search_fn="backtracking", tolerance_grad=1e-12, **options):
        defaults = dict(lr=lr, damping=damping, adaptive_damping=adaptive_damping, max_cg_iter=max_cg_iter,
                        line_search_fn=line_search_fn, tolerance_grad=tolerance_grad)
        super().__init__(params, defaults, options)

    def check_group(self, group):
        super().check_group(group)
        check_int("max_cg_iter", group["max_cg_iter"], minimum=1)

    def _cg(self, curvature: Curvature, g: Tensor, lam: float):
        """Truncated CG for ``(H + lam I) d = -g``; returns ``d`` and ``d' (H + lam I) d``."""
        g_norm = float(g.norm())
        tol = min(0.5, math.sqrt(g_norm)) * g_norm
        d = torch.zeros_like(g)
        r = g.clone()  # residual of (H + lam I) d + g
        p = -r
        rr = float(r.dot(r))
        dhd = 0.0
        for i in range(self.param_groups[0]["max_cg_iter"]):
            hp = curvature.hvp(p) + lam * p
            php = float(p.dot(hp))
            if php <= 0:  # negative curvature: stop here (steepest descent if nothing yet)
                if i == 0:
                    return -g, float(g.dot(curvature.hvp(g) + lam * g))
                break
            alpha = rr / php
            dhd += alpha * alpha * php  # the CG directions are (H + lam I)-conjugate
            d.add_(p, alpha=alpha)
            r.add_(hp, alpha=alpha)
            rr_new = float(r.dot(r))
            if math.sqrt(rr_new) <= tol:
                break
            p.mul_(rr_new / rr).sub_(r)
            rr = rr_new
        return d, dhd

    def _step(self, closure):
        f, g, curvature = self._evaluate(closure, graph=True)
        if g.abs().max() <= self.param_groups[0]["tolerance_grad"]:
            return f
        lam = self._damping()
        d, dhd = self._cg(curvature, g, lam)
        f_new, step = self._search_or_step(closure, f, g, d)
        s = float(step.norm() / d.norm()) if float(d.norm()) > 0 else 1.0  # the step taken, in units of d
        self._adapt(f, f_new, s * float(g.dot(d)) + 0.5 * s * s * dhd, lam)
        return f
