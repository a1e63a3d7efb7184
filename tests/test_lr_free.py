"""Prodigy and D-Adapt Adam against naive per-tensor references of the authors' and optax's rules
(prodigyopt 1.1.2 ``prodigyopt/prodigy.py``, optax ``optax/contrib/_prodigy.py`` and
``_dadapt_adamw.py``; with the reference implementations' growth_rate, safeguard_warmup, coupled
decay and bias-correction switch), float64, 1e-10, step by step; each param group adapts its own
d. Plus the estimate's bookkeeping: it lives in the param group, survives state_dict round trips,
stays put when lr is 0 or the gradients vanish. The authors' packages themselves are run in
test_authors_packages.py."""

from __future__ import annotations

import io
import math

import pytest
import torch

import optimlab
from problems import grads_at, make_net, net_data, split_groups

# optax's defaults (the learning rate is a multiplier), plus the reference implementations' extras
DEFAULTS = {
    "Prodigy": dict(lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0, decouple=True,
                    use_bias_correction=True, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf),
    "DAdaptAdam": dict(lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decouple=True,
                       use_bias_correction=True, d0=1e-6, growth_rate=math.inf),
}


class NaiveLRFree:
    """Prodigy / D-Adapt AdamW, one tensor at a time, applied to each param group as to one optax
    tree (``groups``: lists of tensor indices, ``hypers``: their hyperparameters). Tensors count
    their own steps; the group's d moves once per step from sums over its tensors.

    Prodigy follows ``Prodigy.step`` of prodigyopt 1.1.2 (``prodigyopt/prodigy.py``) and optax's
    ``prodigy`` (``optax/contrib/_prodigy.py``): a first pass updates the moments, ``s`` and the
    sums with the d of the start of the step, then d moves, then a second pass steps with
    ``dlr = d lr bc`` (the old d) and ``sqrt(v) + d_new eps`` in the denominator. D-Adapt
    follows optax's ``dadapt_adamw`` (``optax/contrib/_dadapt_adamw.py``): one pass, old d."""

    def __init__(self, params, groups, hypers, prodigy):
        self.prodigy, self.groups, self.hypers = prodigy, groups, hypers
        self.p = [p.clone() for p in params]
        self.p0 = [p.clone() for p in params]
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.s = [torch.zeros_like(p) for p in params]
        self.t = [0] * len(params)
        self.d = [h["d0"] for h in hypers]
        self.d_max = [h["d0"] for h in hypers]
        self.num = [0.0] * len(groups)

    def step(self, grads):
        for k, (idx, h) in enumerate(zip(self.groups, self.hypers)):
            b1, b2 = h["betas"]
            d, d0, lr, wd = self.d[k], h["d0"], h["lr"], h["weight_decay"]
            num, den, seen, steps = 0.0, 0.0, False, {}
            for i in idx:
                if grads[i] is None:
                    continue
                seen = True
                self.t[i] += 1
                t = self.t[i]
                g = grads[i] if h["decouple"] else grads[i] + wd * self.p[i]
                bc = math.sqrt(1 - b2**t) / (1 - b1**t) if h["use_bias_correction"] else 1.0
                dlr = d * lr * bc
                if self.prodigy:
                    b3 = math.sqrt(b2) if h["beta3"] is None else h["beta3"]
                    num += (d / d0) * dlr * (g * (self.p0[i] - self.p[i])).sum().item()
                    self.m[i] = b1 * self.m[i] + (1 - b1) * d * g
                    self.v[i] = b2 * self.v[i] + (1 - b2) * d * d * g * g
                    self.s[i] = b3 * self.s[i] + (d / d0) * (d if h["safeguard_warmup"] else dlr) * g
                    steps[i] = dlr  # the step waits for the new d (second pass)
                else:
                    sb2 = math.sqrt(b2)
                    num += dlr * (g * (self.s[i] / (self.v[i].sqrt() + h["eps"]))).sum().item()
                    self.m[i] = b1 * self.m[i] + (1 - b1) * dlr * g
                    self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
                    self.s[i] = sb2 * self.s[i] + (1 - sb2) * dlr * g
                    step = self.m[i] / (self.v[i].sqrt() + h["eps"])
                den += self.s[i].abs().sum().item()
                if not self.prodigy:
                    self.p[i] = self.p[i] - step - (wd * dlr * self.p[i] if h["decouple"] else 0.0)
            if not seen:
                continue
            if self.prodigy:
                self.num[k] = b3 * self.num[k] + num
                if lr > 0 and den > 0:
                    d_hat = h["d_coef"] * self.num[k] / den
                    if d == d0:
                        d = max(d, d_hat)
                    self.d_max[k] = max(self.d_max[k], d_hat)
                    self.d[k] = min(self.d_max[k], d * h["growth_rate"])
                for i, dlr in steps.items():  # second pass: dlr from the old d, eps times the new one
                    step = dlr * self.m[i] / (self.v[i].sqrt() + self.d[k] * h["eps"])
                    self.p[i] = self.p[i] - step - (wd * dlr * self.p[i] if h["decouple"] else 0.0)
            else:
                self.num[k] = sb2 * self.num[k] + (1 - sb2) * num
                if lr > 0 and den > 0:
                    self.d[k] = max(d, min(self.num[k] / ((1 - sb2) * den), d * h["growth_rate"]))


def rel_err(ours, ref) -> float:
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(ours, ref))


def _loss(net, x, y):
    return ((net(x) - y) ** 2).mean()


CASES = [
    ("prodigy", "Prodigy", dict(), [{}], None),
    ("prodigy-groups-decoupled-wd", "Prodigy", dict(weight_decay=0.1),
     [{}, {"betas": (0.8, 0.99), "beta3": 0.9, "d_coef": 0.5, "weight_decay": 0.0}, {"eps": 1e-4, "d0": 1e-4}],
     {"lr": 0.5}),
    ("prodigy-coupled-growth-safeguard", "Prodigy", dict(weight_decay=0.05, decouple=False, growth_rate=1.1,
                                                         safeguard_warmup=True, use_bias_correction=False),
     [{}, {"lr": 0.3}], {"lr": 2.0}),
    ("dadapt", "DAdaptAdam", dict(), [{}], None),
    ("dadapt-groups-decoupled-wd", "DAdaptAdam", dict(weight_decay=0.1),
     [{}, {"betas": (0.8, 0.99), "weight_decay": 0.0}, {"eps": 1e-4, "d0": 1e-4}], {"lr": 0.5}),
    ("dadapt-coupled-growth-no-bc", "DAdaptAdam", dict(weight_decay=0.05, decouple=False, growth_rate=1.1,
                                                      use_bias_correction=False), [{}, {"lr": 0.3}], {"lr": 2.0}),
]


@pytest.mark.parametrize("none_grads", [False, True], ids=["all-grads", "none-grads"])
@pytest.mark.parametrize("name,cls,kwargs,groups,change", CASES, ids=[c[0] for c in CASES])
def test_matches_naive_reference(name, cls, kwargs, groups, change, none_grads):
    x, y = net_data()
    net, ref_net = make_net(), make_net()
    params = list(net.parameters())
    opt = getattr(optimlab, cls)(split_groups(params, groups), **kwargs)
    hypers = [{**DEFAULTS[cls], **kwargs, **g} for g in groups]
    members = [[i for i in range(len(params)) if i % len(groups) == k] for k in range(len(groups))]
    ref = NaiveLRFree([p.detach().clone() for p in params], members, hypers, prodigy=cls == "Prodigy")
    skipped = [i for i, p in enumerate(params) if p is net.fc.bias or p is net.scale]
    steps = 40
    for step in range(steps):
        if change is not None and step == steps // 2:
            for g in opt.param_groups:
                g.update(change)
            for h in hypers:
                h.update(change)
        opt.zero_grad()
        _loss(net, x, y).backward()
        grads = grads_at(ref_net, ref.p, x, y)
        if none_grads and step % 3 == 1:
            for i in skipped:
                params[i].grad = grads[i] = None
        opt.step()
        ref.step(grads)
        assert rel_err(params, ref.p) <= 1e-10, f"{name}: parameters differ at step {step + 1}"
        for g, d in zip(opt.param_groups, ref.d):
            assert g["d"] == pytest.approx(d, rel=1e-10), f"{name}: d differs at step {step + 1}"
    assert all(g["d"] > 10 * g["d0"] for g in opt.param_groups), "d never grew: the test would not test much"


@pytest.mark.parametrize("name,cls", [("prodigy", "Prodigy"), ("dadapt-adam", "DAdaptAdam")])
def test_registry_defaults_are_optaxs(name, cls):
    ours = optimlab.describe(name)["defaults"]
    assert {k: ours[k] for k in DEFAULTS[cls]} == DEFAULTS[cls]


@pytest.mark.parametrize("cls", ["Prodigy", "DAdaptAdam"])
def test_estimate_survives_state_dict_round_trip(cls):
    x, y = net_data()
    net = make_net()
    opt = getattr(optimlab, cls)(split_groups(list(net.parameters()), [{}, {"lr": 0.5}]), weight_decay=0.01)
    for _ in range(10):
        opt.zero_grad()
        _loss(net, x, y).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    net2 = make_net(seed=5)
    net2.load_state_dict(ckpt["model"])
    opt2 = getattr(optimlab, cls)(split_groups(list(net2.parameters()), [{}, {"lr": 0.5}]), weight_decay=0.01)
    keys = opt.estimate_keys
    assert all(g["d"] == g["d0"] for g in opt2.param_groups)
    opt2.load_state_dict(ckpt["opt"])
    for g, g2 in zip(opt.param_groups, opt2.param_groups):
        assert all(g[k] == g2[k] for k in keys)
    assert opt.param_groups[0]["d"] != opt.param_groups[1]["d"], "each group adapts its own d"
    for o, n in ((opt, net), (opt2, net2)):
        for _ in range(5):
            o.zero_grad()
            _loss(n, x, y).backward()
            o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    for g, g2 in zip(opt.param_groups, opt2.param_groups):
        assert all(g[k] == g2[k] for k in keys)


@pytest.mark.parametrize("cls", ["Prodigy", "DAdaptAdam"])
def test_zero_lr_and_zero_gradients_leave_d_alone(cls):
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = getattr(optimlab, cls)([w])
    for _ in range(3):  # all-zero gradients: no division by zero, nothing moves
        w.grad = torch.zeros_like(w)
        opt.step()
    assert opt.param_groups[0]["d"] == 1e-6 and torch.equal(w, torch.ones(4, dtype=torch.float64))
    for _ in range(5):
        w.grad = w.detach() - torch.arange(4.0, dtype=torch.float64)
        opt.step()
    d = opt.param_groups[0]["d"]
    assert d > 1e-6
    opt.param_groups[0]["lr"] = 0.0
    for _ in range(3):
        w.grad = w.detach() - torch.arange(4.0, dtype=torch.float64)
        opt.step()
    assert opt.param_groups[0]["d"] == d


@pytest.mark.parametrize("cls", ["Prodigy", "DAdaptAdam"])
def test_options(cls):
    """decay_mask applies to weight_decay; compile=True with a mask stays eager (see
    optimlab.transforms.lr_free); the options that would be scaled by lr are refused, with the fix."""
    x, y = net_data()
    nets = [make_net() for _ in range(3)]
    opts = [getattr(optimlab, cls)(nets[0].named_parameters(), weight_decay=0.5, decay_mask="no_bias_norm",
                                   compile=True),
            getattr(optimlab, cls)(nets[1].parameters(), weight_decay=0.5),
            getattr(optimlab, cls)(nets[2].parameters(), weight_decay=0.0)]
    for o, n in zip(opts, nets):  # one step: d is still d0 in all three
        _loss(n, x, y).backward()
        o.step()
    for masked, decayed, plain in zip(*(n.parameters() for n in nets)):
        assert torch.equal(masked, decayed if masked.ndim >= 2 else plain)
    assert opts[0]._engine is None or not opts[0]._engine._layouts  # no flat buffers
    with pytest.raises(ValueError, match="decoupled_decay=0.1.*use weight_decay"):
        getattr(optimlab, cls)(nets[0].parameters(), decoupled_decay=0.1)
    with pytest.raises(ValueError, match="l1=0.01"):
        getattr(optimlab, cls)(nets[0].parameters(), l1=0.01)


@pytest.mark.parametrize("cls, kwargs", [
    ("Prodigy", dict(weight_decay=0.1)),
    ("Prodigy", dict(weight_decay=0.1, decouple=False)),
    ("Prodigy", dict(safeguard_warmup=True)),
    ("DAdaptAdam", dict(weight_decay=0.1)),
])
def test_compiled_matches_eager(cls, kwargs):
    """compile=True: one compiled kernel per bucket, which returns its partial sums; the same
    parameters and the same d as the eager path (1e-12), over two groups, a mid-run lr change
    and parameters without a gradient on some steps."""
    x, y = net_data()
    nets = [make_net() for _ in range(2)]
    opts = [getattr(optimlab, cls)(split_groups(list(n.parameters()), [{}, {"lr": 0.5}]), compile=c, **kwargs)
            for n, c in zip(nets, (True, False))]
    for step in range(25):
        for n, o in zip(nets, opts):
            if step == 12:
                o.param_groups[1]["lr"] = 0.8
            o.zero_grad()
            _loss(n, x, y).backward()
            if step % 4 == 1:
                n.fc.bias.grad = None
            o.step()
    assert opts[0]._engine is not None and any(lay.buckets for lay in opts[0]._engine._layouts.values())
    assert opts[0].param_groups[0]["d"] > opts[0].param_groups[0]["d0"]  # d moved: the sums reached it
    for ga, gb in zip(opts[0].param_groups, opts[1].param_groups):
        assert ga["d"] == pytest.approx(gb["d"], rel=1e-12)
    for pa, pb in zip(*(n.parameters() for n in nets)):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


def test_prodigy_maximize():
    x, y = net_data()
    a, b = make_net(), make_net()
    oa, ob = optimlab.Prodigy(a.parameters(), maximize=True), optimlab.Prodigy(b.parameters())
    for _ in range(5):
        oa.zero_grad(), ob.zero_grad()
        (-_loss(a, x, y)).backward()
        _loss(b, x, y).backward()
        oa.step(), ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)
