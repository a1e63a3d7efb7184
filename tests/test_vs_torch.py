"""Every configuration in the table follows torch.optim step for step (float64 to 1e-10
relative, float32 to 1e-5), with several param groups, hyperparameters changed mid-run,
``maximize``, weight decay, and parameters whose gradient is None on some steps.

Float32 is compared twice: free-running, and *step-synced* (before each step our optimizer gets
torch's parameters and state, so every single step is compared to 1e-5). Where float32
training is chaotic -- Muon orthogonalises in bfloat16, so a one-ulp difference such as
``p - lr * (s u)`` against torch's ``p - (lr s) u`` flips a rounding some steps later -- a case
sets ``free32=False`` and only the step-synced comparison applies.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import optimlab
from cases import torch_cases
from problems import loss_fns, make_model, split_groups

CASES = torch_cases()


def run_pair(case, dtype, sync=False, make_ours=None, make_theirs=None):
    """The largest relative deviation of ``make_ours``'s run (default: our optimizer) from
    ``make_theirs``'s (default: torch.optim's, as the case configures both)."""
    net_a = make_model(case.model, dtype)
    net_b = copy.deepcopy(net_a)
    if make_ours is None:
        make_ours = functools.partial(getattr(optimlab, case.ours), **case.kwargs, **case.ours_kwargs)
    if make_theirs is None:
        make_theirs = functools.partial(getattr(torch.optim, case.torch_cls), **case.kwargs)
    ours = make_ours(split_groups(list(net_a.parameters()), case.groups))
    theirs = make_theirs(split_groups(list(net_b.parameters()), case.groups))
    worst = 0.0
    for step, loss in enumerate(loss_fns(case.model, dtype, case.steps)):
        if case.change is not None and step == case.steps // 2:
            for opt in (ours, theirs):
                for g in opt.param_groups:
                    g.update(case.change)
        if sync:
            with torch.no_grad():
                for pa, pb in zip(net_a.parameters(), net_b.parameters()):
                    pa.copy_(pb)
            ours.load_state_dict(copy.deepcopy(theirs.state_dict()))  # loading would alias tensors
        for net, opt in ((net_a, ours), (net_b, theirs)):
            opt.zero_grad()
            loss(net).backward()
            if case.none_grads and step % 3 == 1:
                for p in [net.fc.bias, net.scale] if case.model == "tinynet" else [next(net.parameters())]:
                    p.grad = None
            opt.step()
        for pa, pb in zip(net_a.parameters(), net_b.parameters()):
            err = ((pa - pb).abs().max() / pb.abs().max().clamp_min(1e-12)).item()
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("dtype,sync", [(torch.float64, False), (torch.float32, False), (torch.float32, True)],
                         ids=["f64", "f32", "f32-synced"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_torch(case, dtype, sync):
    assert case.steps >= 50
    if dtype == torch.float32 and not (sync or case.free32):
        pytest.skip("chaotic in float32: compared step-synced")
    worst = run_pair(case, dtype, sync)
    tol = case.rtol64 if dtype == torch.float64 else case.rtol32
    if worst > tol and dtype == torch.float32 and not sync and _runs_torchs_fused_kernel(case):
        # ours calls torch's fused kernel, which rounds differently from torch's for-loop once
        # a step; free-running, that compounds by an amount that depends on the machine (oneDNN's
        # conv gradients at 2 threads): the bound is how far torch's fused run drifts from its
        # own for-loop on this problem, here and now -- and ours must follow torch's fused run
        # itself to the case's tolerance
        kwargs = {k: v for k, v in case.kwargs.items() if k not in ("foreach", "fused", "differentiable")}
        fused = functools.partial(getattr(torch.optim, case.torch_cls), **kwargs, fused=True)
        vs_fused = run_pair(case, dtype, make_theirs=fused)
        assert vs_fused <= tol, f"{case.name}: max relative deviation from torch's fused run {vs_fused:.3g} > {tol:g}"
        tol = max(tol, 2 * run_pair(case, dtype, make_ours=fused))
    assert worst <= tol, f"{case.name}: max relative deviation from torch.optim {worst:.3g} > {tol:g}"


def _runs_torchs_fused_kernel(case) -> bool:
    """Whether our optimizer steps ``case`` with torch's fused kernel (its native path)."""
    net = make_model(case.model, torch.float32)
    opt = getattr(optimlab, case.ours)(split_groups(list(net.parameters()), case.groups),
                                      **case.kwargs, **case.ours_kwargs)
    return all(opt._native_of(g) is not None for g in opt.param_groups)


def test_table_covers_every_torch_algorithm():
    """Every registered optimizer that torch.optim also has appears in the table (closure-based
    LBFGS is compared with torch's in tests/test_second_order.py)."""
    covered = {c.ours for c in CASES}
    missing = [s.cls.__name__ for s in optimlab.REGISTRY.values()
               if s.torch_name and not s.needs_closure and s.cls.__name__ not in covered]
    assert not missing, f"no torch comparison for {missing}"
