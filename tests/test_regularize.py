"""optimlab's options beyond torch.optim, each against an independent reference: proximal L1
(exact zeros, ISTA), masks, coupled L2, decoupled and lr-independent decay, clipping (torch's
clip utilities), gradient accumulation, skipping non-finite steps."""

from __future__ import annotations

import copy

import pytest
import torch

import optimlab
from problems import make_net, net_data


def _loss(net, x, y):
    return ((net(x) - y) ** 2).mean()


def _steps(net, opt, x, y, n, before_step=None):
    for _ in range(n):
        opt.zero_grad()
        _loss(net, x, y).backward()
        if before_step:
            before_step(net)
        opt.step()


def _assert_same(net_a, net_b, rtol=1e-12):
    for (n, a), b in zip(net_a.named_parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-14, msg=lambda m: f"{n}: {m}")


# --- L1 ----------------------------------------------------------------------------------------
def _sparse_regression(n=200, d=40, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.zeros(d, dtype=torch.float64)
    w_true[:k] = torch.tensor([3.0, -2.0, 1.5, -1.0, 2.5], dtype=torch.float64)
    y = x @ w_true + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y, w_true


def test_l1_recovers_exact_zeros_and_matches_ista():
    x, y, w_true = _sparse_regression()
    lam, lr = 0.05, 0.1
    w = torch.nn.Parameter(torch.zeros_like(w_true))
    opt = optimlab.SGD([w], lr=lr, l1=lam)
    w_ref = torch.zeros_like(w_true)  # naive ISTA: gradient step, then soft-threshold by lr*lam
    for _ in range(500):
        opt.zero_grad()
        (0.5 * ((x @ w - y) ** 2).mean()).backward()
        opt.step()
        g = x.T @ (x @ w_ref - y) / len(y)
        z = w_ref - lr * g
        w_ref = torch.sign(z) * torch.clamp(z.abs() - lr * lam, min=0)
    torch.testing.assert_close(w.detach(), w_ref, rtol=1e-12, atol=1e-14)
    support = w.detach() != 0
    assert support[:5].all(), "a true coefficient was zeroed"
    assert (w.detach()[5:] == 0).all(), f"{int(support[5:].sum())} spurious non-zeros; L1 must give exact zeros"
    # the lasso optimality (KKT) conditions hold: |grad_j| <= lam on the zeros, = lam on the support
    g = x.T @ (x @ w.detach() - y) / len(y)
    assert (g[5:].abs() <= lam + 1e-8).all()
    torch.testing.assert_close(g[:5], -lam * torch.sign(w.detach()[:5]), rtol=0, atol=1e-6)


# --- masks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", ["no_bias_norm", optimlab.Mask(exclude=r"bias|scale"), r"bias|scale",
                                  lambda name, p: p.ndim >= 2])
def test_masked_parameters_are_untouched_by_decay(mask):
    x, y = net_data()
    net_a = make_net()
    net_dec, net_free = copy.deepcopy(net_a), copy.deepcopy(net_a)
    masked = optimlab.AdamW(net_a.named_parameters(), lr=0.01, weight_decay=0.5, l1=0.01, l2=0.1,
                            independent_decay=0.01, decay_mask=mask)
    full = optimlab.AdamW(net_dec.parameters(), lr=0.01, weight_decay=0.5, l1=0.01, l2=0.1, independent_decay=0.01)
    free = optimlab.AdamW(net_free.parameters(), lr=0.01, weight_decay=0.0)
    for n in range(20):
        for net, opt in ((net_a, masked), (net_dec, full), (net_free, free)):
            _steps(net, opt, x, y, 1)
    # the masked net's gradients (and so its trajectory) differ from both references, so compare
    # one step from identical states instead
    net_b, net_c = copy.deepcopy(net_a), copy.deepcopy(net_a)
    opt_b = optimlab.AdamW(net_b.named_parameters(), lr=0.01, weight_decay=0.5, l1=0.01, l2=0.1,
                           independent_decay=0.01, decay_mask=mask)
    # fused=False: the same chain as opt_b's (plain AdamW would call torch's fused kernel). opt_b's
    # decay transforms read Adam's quotient, so it is evaluated before the step, while opt_c's
    # step divides as it writes: the two round differently, by ~1e-16 relative in float64. One
    # step of the decay moves a parameter by lr * (0.5 + 0.1) * |p| ~ 6e-3 relative, l1 by lr * 0.01.
    opt_c = optimlab.AdamW(net_c.named_parameters(), lr=0.01, weight_decay=0.0, fused=False)
    _steps(net_b, opt_b, x, y, 1)
    _steps(net_c, opt_c, x, y, 1)
    for (name, b), c in zip(net_b.named_parameters(), net_c.parameters()):
        if b.ndim < 2:
            torch.testing.assert_close(b, c, rtol=1e-13, atol=1e-15, msg=f"masked parameter {name} was decayed")
        else:
            assert (b - c).abs().max() > 1e-5, f"unmasked parameter {name} was not decayed"


# --- weight decay forms --------------------------------------------------------------------------
def test_l2_option_is_torch_weight_decay():
    x, y = net_data()
    net_a = make_net()
    net_b = copy.deepcopy(net_a)
    _steps(net_a, optimlab.RMSprop(net_a.parameters(), lr=0.01, l2=0.1) if hasattr(optimlab, "RMSprop")
           else optimlab.Adam(net_a.parameters(), lr=0.01, l2=0.1), x, y, 30)
    _steps(net_b, torch.optim.RMSprop(net_b.parameters(), lr=0.01, weight_decay=0.1) if hasattr(optimlab, "RMSprop")
           else torch.optim.Adam(net_b.parameters(), lr=0.01, weight_decay=0.1), x, y, 30)
    _assert_same(net_a, net_b, rtol=1e-10)


def test_decoupled_decay_option_is_adamw():
    x, y = net_data()
    net_a = make_net()
    net_b = copy.deepcopy(net_a)
    _steps(net_a, optimlab.Adam(net_a.parameters(), lr=0.01, decoupled_decay=0.1), x, y, 30)
    _steps(net_b, torch.optim.AdamW(net_b.parameters(), lr=0.01, weight_decay=0.1), x, y, 30)
    _assert_same(net_a, net_b, rtol=1e-10)


def test_independent_decay_is_not_scaled_by_lr():
    x, y = net_data()
    net_a = make_net()
    net_b = copy.deepcopy(net_a)
    _steps(net_a, optimlab.Adam(net_a.parameters(), lr=0.01, independent_decay=0.02), x, y, 30)

    def shrink(net):  # reference: multiply by (1 - 0.02) after the gradient, before torch's step
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.98)

    _steps(net_b, torch.optim.Adam(net_b.parameters(), lr=0.01), x, y, 30, before_step=shrink)
    _assert_same(net_a, net_b, rtol=1e-10)


# --- clipping --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["norm", "value", "per-param"])
def test_clipping_matches_reference(kind):
    x, y = net_data()
    net_a = make_net()
    net_b = copy.deepcopy(net_a)
    opts = {"norm": dict(clip_grad_norm=0.05), "value": dict(clip_grad_value=0.01),
            "per-param": dict(clip_param_grad_norm=0.02)}[kind]
    _steps(net_a, optimlab.SGD(net_a.parameters(), lr=0.1, momentum=0.9, **opts), x, y, 25)

    def clip(net):
        if kind == "norm":
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)
        elif kind == "value":
            torch.nn.utils.clip_grad_value_(net.parameters(), 0.01)
        else:
            for p in net.parameters():
                p.grad.mul_(min(1.0, 0.02 / (p.grad.norm().item() + 1e-6)))

    _steps(net_b, torch.optim.SGD(net_b.parameters(), lr=0.1, momentum=0.9), x, y, 25, before_step=clip)
    _assert_same(net_a, net_b, rtol=1e-10)


def test_global_norm_spans_param_groups():
    x, y = net_data()
    net_a = make_net()
    net_b = copy.deepcopy(net_a)
    pa = list(net_a.parameters())
    opt = optimlab.SGD([{"params": pa[:3]}, {"params": pa[3:], "lr": 0.05}], lr=0.1, clip_grad_norm=0.05)
    _steps(net_a, opt, x, y, 10)
    pb = list(net_b.parameters())
    ref = torch.optim.SGD([{"params": pb[:3]}, {"params": pb[3:], "lr": 0.05}], lr=0.1)
    _steps(net_b, ref, x, y, 10, before_step=lambda n: torch.nn.utils.clip_grad_norm_(n.parameters(), 0.05))
    _assert_same(net_a, net_b, rtol=1e-10)


# --- accumulation and non-finite steps -----------------------------------------------------------
def test_accumulation_equals_one_step_on_the_mean_gradient():
    x, y = net_data(n=16)
    net_a = make_net()
    net_b = copy.deepcopy(net_a)
    opt_a = optimlab.Adam(net_a.parameters(), lr=0.01, accumulate_steps=4)
    opt_b = torch.optim.Adam(net_b.parameters(), lr=0.01)
    for _ in range(5):
        before = [p.clone() for p in net_a.parameters()]
        for k in range(4):  # four micro-batches of 4
            opt_a.zero_grad()
            _loss(net_a, x[4 * k:4 * k + 4], y[4 * k:4 * k + 4]).backward()
            opt_a.step()
            if k < 3:
                assert all(torch.equal(a, b) for a, b in zip(net_a.parameters(), before)), "moved mid-accumulation"
        opt_b.zero_grad()
        _loss(net_b, x, y).backward()  # the mean over all 16 = mean of the four micro-batch means
        opt_b.step()
    _assert_same(net_a, net_b, rtol=1e-10)


def test_nonfinite_step_is_skipped_and_counted():
    x, y = net_data()
    net_a = make_net()
    net_b = copy.deepcopy(net_a)
    opt_a = optimlab.Adam(net_a.parameters(), lr=0.01, skip_nonfinite=True)
    opt_b = torch.optim.Adam(net_b.parameters(), lr=0.01)
    for step in range(10):
        opt_a.zero_grad()
        _loss(net_a, x, y).backward()
        if step in (3, 7):
            net_a.fc.weight.grad[0, 0] = float("nan" if step == 3 else "inf")
        opt_a.step()
        if step not in (3, 7):
            _steps(net_b, opt_b, x, y, 1)
    assert opt_a.skipped_steps == 2
    _assert_same(net_a, net_b, rtol=1e-10)
