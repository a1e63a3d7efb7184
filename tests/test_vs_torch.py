"""Every configuration in the table follows torch.optim step for step (float64 to 1e-10
relative, float32 to 1e-5), with several param groups, hyperparameters changed mid-run,
``maximize``, weight decay, and parameters whose gradient is None on some steps."""

from __future__ import annotations

import copy

import pytest
import torch

import optimlab
from cases import torch_cases
from problems import make_net, net_data, split_groups

CASES = torch_cases()


def run_pair(case, dtype):
    net_a = make_net(dtype)
    net_b = copy.deepcopy(net_a)
    x, y = net_data(dtype)
    ours = getattr(optimlab, case.ours)(
        split_groups(list(net_a.parameters()), case.groups), **case.kwargs, **case.ours_kwargs)
    theirs = getattr(torch.optim, case.torch_cls)(split_groups(list(net_b.parameters()), case.groups), **case.kwargs)
    worst = 0.0
    for step in range(case.steps):
        if case.change is not None and step == case.steps // 2:
            for opt in (ours, theirs):
                for g in opt.param_groups:
                    g.update(case.change)
        for net, opt in ((net_a, ours), (net_b, theirs)):
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            if case.none_grads and step % 3 == 1:
                net.fc.bias.grad = None
                net.scale.grad = None
            opt.step()
        for pa, pb in zip(net_a.parameters(), net_b.parameters()):
            err = ((pa - pb).abs().max() / pb.abs().max().clamp_min(1e-12)).item()
            worst = max(worst, err)
    return worst


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_torch(case, dtype):
    assert case.steps >= 50
    worst = run_pair(case, dtype)
    tol = case.rtol64 if dtype == torch.float64 else case.rtol32
    assert worst <= tol, f"{case.name}: max relative deviation from torch.optim {worst:.3g} > {tol:g}"


def test_table_covers_every_torch_algorithm():
    """Every registered optimizer that torch.optim also has appears in the table."""
    covered = {c.ours for c in CASES}
    missing = [s.cls.__name__ for s in optimlab.REGISTRY.values() if s.torch_name and s.cls.__name__ not in covered]
    assert not missing, f"no torch comparison for {missing}"
