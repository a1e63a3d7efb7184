"""Quasi-Newton methods: BFGS (dense inverse-Hessian approximation) and L-BFGS (the last ``m``
curvature pairs).

Both run torch.optim.LBFGS's iteration, up to ``max_iter`` iterations per ``step(closure)``:

    d = -H g                                   (BFGS: the dense H; L-BFGS: the two-loop recursion)
    t = lr  (first iteration ever: min(1, 1/||g||_1) lr)
    x <- x + t d                               (or t from the line search)
    s = t d,  y = g_new - g;  if y's > 1e-10:  update H with (s, y)

The BFGS update of the inverse Hessian (Nocedal & Wright eq. 6.17) is

    H <- (I - rho s y') H (I - rho y s') + rho s s',     rho = 1 / y's,

with ``H_0 = (y's / y'y) I`` before the first update (eq. 6.20); L-BFGS applies the same
updates implicitly to ``H_0 = (y's / y'y) I`` of the latest pair (Algorithm 7.4). Iterations stop
at ``max_iter``, after ``max_eval`` closure evaluations, or when the gradient
(``tolerance_grad``), the step or the loss change (``tolerance_change``) is small.

``LBFGS`` is a drop-in for torch.optim.LBFGS: its arguments and defaults, its trajectory
(configured the same way), its count of closure calls (the strong Wolfe search gets what is left
of ``max_eval``), gradients read from ``p.grad`` as the closure leaves them, complex parameters
as real pairs, and its state_dict (torch's state names; one loads into the other and the run
continues). Beyond torch's it accepts several param groups (one curvature history over all
parameters; each group's lr scales its coordinates), ``line_search_fn="backtracking"``, the
L2 / decoupled-decay options, and closures that return the loss without calling ``backward``.
``BFGS`` defaults to one iteration per step with a strong Wolfe line search (and
``max_eval = 26 max_iter``: room for a full search in each iteration), and refuses models whose
n x n matrix would not fit (``force=True`` overrides).

Example::

    >>> opt = optimlab.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
    >>> def closure():
    ...     opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); return loss
    >>> opt.step(closure)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import check_int
from ..registry import register
from .base import ClosureOptimizer, check_tolerance, scalar

__all__ = ["BFGS", "LBFGS"]


class _QuasiNewton(ClosureOptimizer):
    #: the default ``max_eval`` as a function of ``max_iter``
    default_max_eval = staticmethod(lambda max_iter: max_iter * 5 // 4)  # torch's LBFGS

    def check_group(self, group):
        super().check_group(group)
        check_int("max_iter", group["max_iter"], minimum=1)
        if group["max_eval"] is None:
            group["max_eval"] = self.default_max_eval(group["max_iter"])
        check_int("max_eval", group["max_eval"], minimum=1)
        check_tolerance("tolerance_grad", group["tolerance_grad"])
        check_tolerance("tolerance_change", group["tolerance_change"])

    # subclasses: the curvature memory
    def _reset(self, st: dict) -> None:
        raise NotImplementedError

    def _remember(self, st: dict, s: Tensor, y: Tensor, ys: float) -> None:
        raise NotImplementedError

    def _direction(self, st: dict, g: Tensor) -> Tensor:
        raise NotImplementedError

    def _step(self, closure):
        group = self.param_groups[0]
        lr, max_iter, max_eval = scalar(group["lr"]), group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        search = group["line_search_fn"]
        st = self._state
        st.setdefault("func_evals", 0)
        st.setdefault("n_iter", 0)

        loss, g = self._evaluate(closure)
        orig_loss, evals = loss, 1
        st["func_evals"] += 1
        if g.abs().max() <= tol_grad:
            return orig_loss

        d, t = st.get("d"), st.get("t")
        prev_g, prev_loss = st.get("prev_flat_grad"), st.get("prev_loss")
        scale = self._lr_scale()
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            st["n_iter"] += 1
            if st["n_iter"] == 1:
                self._reset(st)
                d = -g
            else:
                y = g - prev_g
                s = d * t
                ys = y.dot(s)  # scalars stay tensors of the parameters' dtype, as in torch's LBFGS
                if ys > 1e-10:
                    self._remember(st, s, y, ys)
                d = self._direction(st, g)
            if not (isinstance(scale, float) and scale == 1.0):
                d = d * scale
            prev_g = g.clone(memory_format=torch.contiguous_format)
            prev_loss = loss
            t = min(1.0, 1.0 / g.abs().sum()) * lr if st["n_iter"] == 1 else lr
            t = float(t)
            gtd = float(g.dot(d))
            if gtd > -tol_change:  # not a descent direction (any more)
                break

            ls_evals = 0
            if search is not None:
                # the search may spend what is left of the step's max_eval (as in torch, whose
                # strong Wolfe search gets max_ls = max_eval - evaluations so far)
                budget = max_eval - evals if search == "strong_wolfe" else max(1, max_eval - evals)
                res = self._line_search(search, closure, loss, g, d, t, max_evals=budget)
                loss, g, t, ls_evals = res.f, res.g, res.t, res.evals
                if g is None:  # backtracking ends without a gradient: evaluate it
                    loss, g = self._evaluate(closure)
                    ls_evals += 1
                done = bool(g.abs().max() <= tol_grad)
            else:
                self._add_params(t, d)
                done = False
                if n_iter != max_iter:
                    loss, g = self._evaluate(closure)
                    ls_evals = 1
                    done = bool(g.abs().max() <= tol_grad)
            evals += ls_evals
            st["func_evals"] += ls_evals

            if n_iter == max_iter or evals >= max_eval or done:
                break
            if (d * t).abs().max() <= tol_change:
                break
            if abs(loss - prev_loss) < tol_change:
                break

        st.update(d=d, t=t, prev_flat_grad=prev_g, prev_loss=prev_loss)
        return orig_loss


    @torch.no_grad()
    def _after_step(self, x_before):
        """Decoupled decay moves the parameters after the iteration: fold that move into the last
        step ``s = t d``, so the next curvature pair describes where the iterates really went."""
        x_mid = self._flat_params()
        super()._after_step(x_before)
        st = self._state
        if st.get("d") is not None and st.get("t"):
            moved = self._flat_params() - x_mid
            if moved.any():
                st["d"] = st["d"] + moved / st["t"]


@register("lbfgs", torch_name="LBFGS", needs_closure=True, second_order=True)
class LBFGS(_QuasiNewton):
    """L-BFGS: quasi-Newton steps from the last ``history_size`` curvature pairs."""

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None, **options):
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size,
                        line_search_fn=line_search_fn)
        super().__init__(params, defaults, options)

    def check_group(self, group):
        super().check_group(group)
        check_int("history_size", group["history_size"], minimum=1)

    def _reset(self, st):
        st.update(old_dirs=[], old_stps=[], ro=[], H_diag=1)

    def _remember(self, st, s, y, ys):
        if len(st["old_dirs"]) == self.param_groups[0]["history_size"]:
            for k in ("old_dirs", "old_stps", "ro"):
                st[k].pop(0)
        st["old_dirs"].append(y)
        st["old_stps"].append(s)
        st["ro"].append(1.0 / ys)
        st["H_diag"] = ys / y.dot(y)

    def _direction(self, st, g):
        """The two-loop recursion: ``-H g`` without forming H (Nocedal & Wright Algorithm 7.4).
        The coefficients ``al`` stay 0-d tensors of the parameters' dtype, as in torch, and are
        kept in the state under torch's name (a state_dict then matches torch's key for key)."""
        ys_, ss_, ro = st["old_dirs"], st["old_stps"], st["ro"]
        al = st.setdefault("al", [None] * self.param_groups[0]["history_size"])
        al.extend([None] * (len(ys_) - len(al)))  # a history loaded from a run with a longer one
        q = g.neg()
        for i in reversed(range(len(ys_))):
            al[i] = ss_[i].dot(q) * ro[i]
            q.add_(ys_[i], alpha=-al[i])
        r = q * st["H_diag"]
        for i in range(len(ys_)):
            beta = ys_[i].dot(r) * ro[i]
            r.add_(ss_[i], alpha=al[i] - beta)
        return r


@register("bfgs", needs_closure=True, second_order=True)
class BFGS(_QuasiNewton):
    """BFGS with a dense inverse-Hessian approximation and a strong Wolfe line search."""

    #: room for a full line search (25 evaluations after its first) in every iteration; torch's
    #: default, max_iter * 5 // 4, would leave one iteration per step no search at all
    default_max_eval = staticmethod(lambda max_iter: max_iter * 26)

    def __init__(self, params, lr=1, max_iter=1, max_eval=None, tolerance_grad=1e-10, tolerance_change=1e-12,
                 line_search_fn="strong_wolfe", max_memory=None, force=False, **options):
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, line_search_fn=line_search_fn)
        super().__init__(params, defaults, options)
        if not force:
            self._check_dense_cost(max_memory, "LBFGS (the same method with the last m curvature pairs)")

    def _reset(self, st):
        st.pop("H", None)

    def _remember(self, st, s, y, ys):
        ys = float(ys)
        rho = 1.0 / ys
        h = st.get("H")
        if h is None:  # H_0 = (y's / y'y) I, then the first update
            h = torch.eye(len(s), dtype=s.dtype, device=s.device) * (ys / float(y.dot(y)))
        hy = h @ y
        # (I - rho s y') H (I - rho y s') + rho s s', expanded (H symmetric):
        #   H - rho (s (Hy)' + (Hy) s') + (rho^2 y'Hy + rho) s s'
        h = h - rho * (torch.outer(s, hy) + torch.outer(hy, s)) + (rho * rho * float(y.dot(hy)) + rho) * torch.outer(s, s)
        st["H"] = h

    def _direction(self, st, g):
        h = st.get("H")
        return -g if h is None else -(h @ g)
