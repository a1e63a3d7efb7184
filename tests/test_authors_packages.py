"""optimlab against the authors' own packages, run side by side: Prodigy against prodigyopt's
``Prodigy`` (konstmish/prodigy), Schedule-Free AdamW and SGD against schedulefree's
``AdamWScheduleFree``, ``AdamWScheduleFreePaper`` and ``SGDScheduleFree``
(facebookresearch/schedule_free). Float64, the same start, each optimizer taking the gradients of
the same loss at its own iterate, 150 steps; parameters agree to 1e-10 (relative to each tensor's
largest entry) after every step, and for schedule-free also in eval mode (the averaged x).

Both packages are test dependencies (the ``test`` extra in pyproject.toml) and are imported
plainly: a missing package is a failure, not a skip.
"""

from __future__ import annotations

import prodigyopt
import pytest
import schedulefree
import torch

import optimlab
from problems import make_net, net_data, split_groups

STEPS = 150
TOL = 1e-10


def rel_err(ours, theirs) -> float:
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(ours, theirs))


def _step(net, opt, x, y):
    opt.zero_grad()
    ((net(x) - y) ** 2).mean().backward()
    opt.step()


# -- Prodigy ---------------------------------------------------------------------------------------
# prodigyopt shares one d across param groups (and requires equal lr), optimlab adapts one per
# group: the comparison uses one group of several tensors (a matrix, biases, a conv kernel, a 0-d
# scale). Both sides get every option explicitly (the defaults differ in use_bias_correction).
PRODIGY = [
    ("authors-defaults", dict(use_bias_correction=False)),
    ("bias-correction-decoupled-wd", dict(use_bias_correction=True, weight_decay=0.1, beta3=0.95, d_coef=0.8)),
    ("coupled-wd-safeguard-growth", dict(use_bias_correction=False, weight_decay=0.05, decouple=False,
                                         safeguard_warmup=True, growth_rate=1.05, d0=1e-5)),
    ("large-eps", dict(use_bias_correction=True, eps=1e-4, betas=(0.8, 0.99), lr=0.5)),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in PRODIGY], ids=[c[0] for c in PRODIGY])
def test_prodigy_matches_prodigyopt(kwargs):
    x, y = net_data()
    ours_net, their_net = make_net(), make_net()
    ours = optimlab.Prodigy(ours_net.parameters(), **kwargs)
    theirs = prodigyopt.Prodigy(their_net.parameters(), **kwargs)
    for step in range(STEPS):
        _step(ours_net, ours, x, y)
        _step(their_net, theirs, x, y)
        err = rel_err(ours_net.parameters(), list(their_net.parameters()))
        assert err <= TOL, f"parameters differ by {err:.1e} at step {step + 1}"
        assert ours.param_groups[0]["d"] == pytest.approx(theirs.param_groups[0]["d"], rel=TOL)
    d0 = kwargs.get("d0", 1e-6)
    assert ours.param_groups[0]["d"] > 100 * d0, "d hardly grew: the comparison would not test much"


# -- Schedule-Free ---------------------------------------------------------------------------------
# (optimlab class, the package's class, optimlab-only keywords, constructor keywords, param groups)
SCHEDULE_FREE = [
    ("adamw", optimlab.ScheduleFreeAdamW, schedulefree.AdamWScheduleFree, {}, dict(lr=0.01), [{}]),
    ("adamw-groups-wd-warmup", optimlab.ScheduleFreeAdamW, schedulefree.AdamWScheduleFree, {},
     dict(lr=0.02, weight_decay=0.1),
     [{"warmup_steps": 10}, {"lr": 0.005, "betas": (0.8, 0.99), "eps": 1e-6, "r": 0.5, "weight_lr_power": 1.0},
      {"warmup_steps": 4, "weight_decay": 0.0}]),
    ("adamw-paper-groups-wd-warmup", optimlab.ScheduleFreeAdamW, schedulefree.AdamWScheduleFreePaper,
     dict(bias_correction="lr"), dict(lr=0.02, weight_decay=0.1),
     [{"warmup_steps": 10}, {"lr": 0.005, "betas": (0.8, 0.99), "eps": 1e-6, "r": 0.5}]),
    ("sgd-groups-wd-warmup", optimlab.ScheduleFreeSGD, schedulefree.SGDScheduleFree, {},
     dict(lr=0.3, weight_decay=0.05),
     [{"warmup_steps": 7}, {"lr": 0.1, "momentum": 0.8, "r": 1.0, "weight_decay": 0.0}]),
]


@pytest.mark.parametrize("ours_cls,their_cls,extra,kwargs,groups", [c[1:] for c in SCHEDULE_FREE],
                         ids=[c[0] for c in SCHEDULE_FREE])
def test_schedule_free_matches_schedulefree(ours_cls, their_cls, extra, kwargs, groups):
    """y after every step (train mode); x (eval mode) every 25 steps and at the end, after which
    both go back to train mode and carry on; the learning rate halved two thirds of the way
    through (lr_max stays, the weights follow)."""
    x, y = net_data()
    ours_net, their_net = make_net(), make_net()
    ours = ours_cls(split_groups(list(ours_net.parameters()), groups), **kwargs, **extra)
    theirs = their_cls(split_groups(list(their_net.parameters()), groups), **kwargs)
    theirs.train()  # the package starts in eval mode; optimlab in train mode
    for step in range(STEPS):
        if step == 2 * STEPS // 3:
            for g in ours.param_groups + theirs.param_groups:
                g["lr"] *= 0.5
        _step(ours_net, ours, x, y)
        _step(their_net, theirs, x, y)
        err = rel_err(ours_net.parameters(), list(their_net.parameters()))
        assert err <= TOL, f"y differs by {err:.1e} at step {step + 1}"
        if (step + 1) % 25 == 0:
            ours.eval(), theirs.eval()
            err = rel_err(ours_net.parameters(), list(their_net.parameters()))
            assert err <= TOL, f"x (eval mode) differs by {err:.1e} at step {step + 1}"
            ours.train(), theirs.train()
    moved = rel_err(ours_net.parameters(), list(make_net().parameters()))
    assert moved > 0.1, "the parameters hardly moved: the comparison would not test much"
