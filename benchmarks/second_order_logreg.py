"""Second-order methods on L2-regularised logistic regression (scikit-learn's breast cancer
data, standardised, unpenalised intercept), against scipy.optimize.

How to run (from the repository root, inside the project's virtual environment)::

    python benchmarks/second_order_logreg.py
    python benchmarks/second_order_logreg.py --tol 1e-10

Each optimlab method runs from zero until the objective is within ``--tol`` (relative) of the
optimum (scipy's L-BFGS-B at gradient tolerance 1e-12). The table lists iterations (optimizer
steps; L-BFGS does up to ``max_iter`` iterations per step, so its column counts iterations),
closure evaluations, Hessian-vector products (a dense Hessian of n parameters counts n) and
seconds, beside scipy's own methods on the same objective (its ``nit``, ``nfev + njev``, ``nhev``).
The closure returns the loss (exact Hessian-vector products by double backward); the rows marked
"backward()" use torch's usual closure instead, whose products are finite differences of the
gradient (two closure calls each).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

import optimlab
from optimlab.lab.tasks import BREAST_CANCER_L2, _breast_cancer, breast_cancer_optimum

LAM = BREAST_CANCER_L2


def ours(name, kwargs, x, y, f_star, tol, max_steps=500, backward=False):
    model = torch.nn.Linear(x.shape[1], 1, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
    opt = optimlab.create(name, [{"params": [model.weight], "weight_decay": LAM}, {"params": [model.bias]}], **kwargs)

    def objective():
        return F.binary_cross_entropy_with_logits(model(x).reshape(-1), y) + 0.5 * LAM * model.weight.pow(2).sum()

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x).reshape(-1), y)
        if backward:  # torch's usual closure: the graph is freed, curvature by finite differences
            loss.backward()
        return loss

    t0 = time.perf_counter()
    for step in range(1, max_steps + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the once-per-optimizer note about finite differences
            opt.step(closure)
        with torch.no_grad():
            gap = (objective().item() - f_star) / f_star
        if gap <= tol:
            break
    seconds = time.perf_counter() - t0
    iters = opt.state[model.weight].get("n_iter", step)
    return iters, opt.cost.function_evals, opt.cost.hvps, seconds, gap


def scipy_runs(x, y, f_star, tol):
    xn, yn = x.numpy(), y.numpy()

    def f(wb):
        w, b = wb[:-1], wb[-1]
        z = xn @ w + b
        return np.mean(np.logaddexp(0, z) - yn * z) + 0.5 * LAM * w @ w

    def g(wb):
        w, b = wb[:-1], wb[-1]
        s = 1 / (1 + np.exp(-(xn @ w + b))) - yn
        return np.concatenate([xn.T @ s / len(yn) + LAM * w, [s.mean()]])

    def h(wb):
        w, b = wb[:-1], wb[-1]
        p = 1 / (1 + np.exp(-(xn @ w + b)))
        xa = np.hstack([xn, np.ones((len(yn), 1))])
        out = xa.T @ (xa * (p * (1 - p))[:, None]) / len(yn)
        out[:-1, :-1] += LAM * np.eye(len(w))
        return out

    x0 = np.zeros(xn.shape[1] + 1)
    rows = []
    for method, kw in [("Newton-CG", dict(jac=g, hess=h, options=dict(xtol=1e-12))),
                       ("trust-exact", dict(jac=g, hess=h, options=dict(gtol=1e-10))),
                       ("BFGS", dict(jac=g, options=dict(gtol=1e-10))),
                       ("L-BFGS-B", dict(jac=g, options=dict(gtol=1e-12, ftol=1e-15)))]:
        t0 = time.perf_counter()
        res = minimize(f, x0, method=method, **kw)
        seconds = time.perf_counter() - t0
        rows.append((f"scipy {method}", res.nit, res.nfev + getattr(res, "njev", 0), getattr(res, "nhev", 0),
                     seconds, (res.fun - f_star) / f_star))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tol", type=float, default=1e-8, help="relative gap to the optimum to stop at")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = _breast_cancer()
    x, y = data.train
    f_star = breast_cancer_optimum(data)
    print(f"breast cancer logistic regression: n={len(y)}, d={x.shape[1]} + intercept, lambda={LAM}, "
          f"optimum {f_star:.12f}; stop at relative gap <= {args.tol:g}\n")
    print(f"{'method':<34} {'iterations':>10} {'evals':>7} {'HVPs':>6} {'seconds':>9} {'relative gap':>13}")
    for name, kw, backward in [("newton", {}, False), ("newton", {}, True), ("newton-cg", {}, False),
                               ("newton-cg", {}, True), ("bfgs", {}, False),
                               ("lbfgs", {"tolerance_change": 1e-12}, False),
                               ("lbfgs", {"line_search_fn": "strong_wolfe", "tolerance_change": 1e-12}, False)]:
        label = name + (" (strong Wolfe)" if kw.get("line_search_fn") else "") + (" backward()" if backward else "")
        it, ev, hv, sec, gap = ours(name, kw, x, y, f_star, args.tol, backward=backward)
        print(f"{'optimlab ' + label:<34} {it:>10} {ev:>7} {hv:>6} {sec:>9.4f} {gap:>13.2e}")
    for row in scipy_runs(x, y, f_star, args.tol):
        print(f"{row[0]:<34} {row[1]:>10} {row[2]:>7} {row[3]:>6} {row[4]:>9.4f} {row[5]:>13.2e}")


if __name__ == "__main__":
    main()
