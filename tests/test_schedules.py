"""Schedules: each schedule with a torch.optim.lr_scheduler counterpart gives torch's values step
for step over 1000 steps (to 1e-12); a Scheduler resumes exactly through torch.save/torch.load;
any hyperparameter of optimlab's and torch's optimizers can be driven; the plateau rule makes
torch's ReduceLROnPlateau decisions; bad arguments are explained.

Which torch number we compare with: ``group[key]`` after each ``scheduler.step()`` -- the value
training uses. Several torch schedulers (CosineAnnealingLR, ExponentialLR, LinearLR,
PolynomialLR, and SequentialLR's parts) compute it recursively from the previous value; over
1000 steps that stays within ~1e-16 absolute (~1e-14 relative) of the closed form. Our schedules
are the closed forms (bit-equal to e.g. CosineAnnealingLR's ``_get_closed_form_lr``, see
``test_cosine_equals_both_torch_forms``), so both forms pass at 1e-12.
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler as L

import optimlab
from optimlab.schedules import (
    ReduceOnPlateau,
    Scheduler,
    as_lambda_lr,
    constant,
    cosine,
    cyclic,
    exponential,
    inverse_sqrt,
    join,
    linear,
    multi_step,
    one_cycle,
    one_cycle_momentum,
    polynomial,
    sgdr,
    step_decay,
    warmup,
    wsd,
)
from optimlab.train import accuracy, fit

N = 1000
TOL = 1e-12


def _sgd(lr=0.1, groups=1):
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    return torch.optim.SGD([{"params": [p]} for p in ps], lr=lr, momentum=0.9)


def _torch_values(make, n, key="lr", lr=0.1, closed=False):
    """``group[key]`` (or the closed form) after 0, 1, ..., n - 1 ``scheduler.step()`` calls."""
    opt = _sgd(lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
        sched = make(opt)
        out = []
        for t in range(n):
            if t:
                sched.step()
            out.append(sched._get_closed_form_lr()[0] if closed else float(opt.param_groups[0][key]))
    return out


def _seq_warmup_cosine(o):
    return L.SequentialLR(o, [L.LinearLR(o, 0.01, 1.0, 100), L.CosineAnnealingLR(o, 900, 1e-4)], [100])


def _seq_three(o):
    parts = [L.ConstantLR(o, 0.2, 1000), L.ExponentialLR(o, 0.99), L.StepLR(o, 50, 0.5)]
    return L.SequentialLR(o, parts, [50, 400])


# (id, torch scheduler on SGD(lr=0.1, momentum=0.9), our schedule, key, steps, the optimizer's lr)
TORCH_CASES = [
    ("StepLR", lambda o: L.StepLR(o, 30, 0.5), step_decay(0.1, 30, 0.5), "lr", N + 1, 0.1),
    ("MultiStepLR", lambda o: L.MultiStepLR(o, [100, 300, 300, 700], 0.3),
     multi_step(0.1, [700, 100, 300, 300], 0.3), "lr", N + 1, 0.1),
    ("ExponentialLR", lambda o: L.ExponentialLR(o, 0.995), exponential(0.1, 0.995), "lr", N + 1, 0.1),
    ("PolynomialLR", lambda o: L.PolynomialLR(o, 800, 2.0), polynomial(0.1, 800, 2.0), "lr", N + 1, 0.1),
    ("CosineAnnealingLR", lambda o: L.CosineAnnealingLR(o, N, 1e-3), cosine(0.1, N, 1e-3), "lr", N + 1, 0.1),
    ("CosineAnnealingWarmRestarts", lambda o: L.CosineAnnealingWarmRestarts(o, 70, 1, 1e-4),
     sgdr(0.1, 70, 1, 1e-4), "lr", N + 1, 0.1),
    ("CosineAnnealingWarmRestarts-Tmult2", lambda o: L.CosineAnnealingWarmRestarts(o, 30, 2, 1e-4),
     sgdr(0.1, 30, 2, 1e-4), "lr", N + 1, 0.1),
    ("LinearLR-up", lambda o: L.LinearLR(o, 0.1, 1.0, 200), linear(0.1 * 0.1, 0.1, 200), "lr", N + 1, 0.1),
    ("LinearLR-down", lambda o: L.LinearLR(o, 1.0, 0.05, 700), linear(0.1, 0.1 * 0.05, 700), "lr", N + 1, 0.1),
    ("ConstantLR", lambda o: L.ConstantLR(o, 0.5, 100), join([constant(0.05), constant(0.1)], [100]), "lr", N + 1, 0.1),
    ("SequentialLR-warmup", _seq_warmup_cosine, warmup(cosine(0.1, 900, 1e-4), 100, start=0.001), "lr", N + 1, 0.1),
    ("SequentialLR-join3", _seq_three,
     join([constant(0.02), exponential(0.1, 0.99), step_decay(0.1, 50, 0.5)], [50, 400]), "lr", N + 1, 0.1),
]
for _mode in ("triangular", "triangular2", "exp_range"):
    TORCH_CASES += [
        (f"CyclicLR-{_mode}", lambda o, m=_mode: L.CyclicLR(o, 0.01, 0.1, 70, 30, mode=m, gamma=0.999),
         cyclic(0.01, 0.1, 70, 30, _mode, 0.999), "lr", N + 1, 0.01),
        (f"CyclicLR-{_mode}-momentum", lambda o, m=_mode: L.CyclicLR(o, 0.01, 0.1, 70, 30, mode=m, gamma=0.999),
         cyclic(0.9, 0.8, 70, 30, _mode, 0.999), "momentum", N + 1, 0.01),
    ]
for _anneal in ("cos", "linear"):
    for _three in (False, True):
        _kw = dict(anneal_strategy=_anneal, three_phase=_three)
        _id = f"OneCycleLR-{_anneal}{'-3phase' if _three else ''}"
        # torch allows at most total_steps steps; our values hold after total_steps - 1
        TORCH_CASES += [
            (_id, lambda o, kw=_kw: L.OneCycleLR(o, 0.1, N, pct_start=0.25, **kw),
             one_cycle(0.1, N, pct_start=0.25, anneal=_anneal, three_phase=_three), "lr", N, 0.1),
            (_id + "-momentum", lambda o, kw=_kw: L.OneCycleLR(o, 0.1, N, pct_start=0.25, **kw),
             one_cycle_momentum(N, pct_start=0.25, anneal=_anneal, three_phase=_three), "momentum", N, 0.1),
        ]


@pytest.mark.parametrize("make,ours,key,n,lr", [c[1:] for c in TORCH_CASES], ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_scheduler_step_for_step(make, ours, key, n, lr):
    ref = _torch_values(make, n, key, lr)
    got = [ours(t) for t in range(n)]
    worst = max(range(n), key=lambda t: abs(got[t] - ref[t]))
    assert abs(got[worst] - ref[worst]) <= TOL, f"step {worst}: ours {got[worst]!r}, torch {ref[worst]!r}"


def test_cosine_equals_both_torch_forms():
    ours = [cosine(0.1, N, 1e-3)(t) for t in range(N + 1)]
    closed = _torch_values(lambda o: L.CosineAnnealingLR(o, N, 1e-3), N + 1, closed=True)
    recursive = _torch_values(lambda o: L.CosineAnnealingLR(o, N, 1e-3), N + 1)
    assert ours == closed  # bit for bit
    assert max(abs(a - b) for a, b in zip(ours, recursive)) < 1e-15
    # past T_max we hold at `end`; torch's cosine climbs back up
    assert cosine(0.1, 100, 1e-3)(150) == 1e-3


def test_scheduler_drives_each_group_like_torch():
    ours, ref = _sgd(groups=2), _sgd(groups=2)
    ref.param_groups[1]["lr"] = ours.param_groups[1]["lr"] = 0.01
    sched = Scheduler(ours, [warmup(cosine(0.1, 500), 100, 0.001), warmup(cosine(0.01, 500), 100, 0.0001)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_sched = L.SequentialLR(ref, [L.LinearLR(ref, 0.01, 1.0, 100), L.CosineAnnealingLR(ref, 500)], [100])
        for _ in range(600):
            for a, b in zip(ours.param_groups, ref.param_groups):
                assert abs(a["lr"] - b["lr"]) <= TOL
            sched.step()
            torch_sched.step()
    assert sched.get_last_lr() == [g["lr"] for g in ours.param_groups] and sched.last_step == 600


def test_scheduler_leaves_none_groups_alone_and_sets_tuple_entries():
    w, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    opt = optimlab.Adam([{"params": [w]}, {"params": [b], "lr": 5e-3}], lr=1e-3, betas=(0.9, 0.99))
    sched = Scheduler(opt, [{"lr": constant(2e-3), "betas[0]": linear(0.8, 0.9, 10)}, None])
    sched.step()
    assert opt.param_groups[0]["betas"] == (0.81, 0.99) and opt.param_groups[0]["lr"] == 2e-3
    assert opt.param_groups[1]["betas"] == (0.9, 0.99) and opt.param_groups[1]["lr"] == 5e-3
    assert sched.values() == [{"lr": 2e-3, "betas[0]": 0.81}, {}]


@pytest.mark.parametrize("schedule", [warmup(cosine(0.1, 900), 100), one_cycle(0.1, N), sgdr(0.1, 30, 2)],
                         ids=["warmup-cosine", "one_cycle", "sgdr"])
def test_as_lambda_lr_reproduces_the_schedule_and_resumes(schedule, tmp_path):
    opt = _sgd(lr=0.05)
    lam = as_lambda_lr(opt, schedule)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(N):
            lrs.append(opt.param_groups[0]["lr"])
            lam.step()
            if t == 400:
                torch.save({"opt": opt.state_dict(), "sched": lam.state_dict()}, tmp_path / "ck.pt")
        ck = torch.load(tmp_path / "ck.pt")  # weights_only: the state is plain data
        opt2 = _sgd(lr=0.05)
        lam2 = as_lambda_lr(opt2, schedule)
        opt2.load_state_dict(ck["opt"])
        lam2.load_state_dict(ck["sched"])
        resumed = []
        for _ in range(401, N):
            resumed.append(opt2.param_groups[0]["lr"])
            lam2.step()
    assert max(abs(a - schedule(t)) for t, a in enumerate(lrs)) <= TOL
    assert resumed == lrs[401:]


def _train(model, opt, sched, steps, start=0):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64) + 0.1
    for _ in range(start, steps):
        opt.zero_grad()
        F.mse_loss(model(x).squeeze(-1), y).backward()
        opt.step()
        sched.step()


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 1, dtype=torch.float64)


@pytest.mark.parametrize("load_order", ["optimizer-first", "scheduler-first"])
def test_scheduler_save_and_load_midway_continues_identically(tmp_path, load_order):
    schedules = {"lr": warmup(cosine(0.05, 50), 10, 1e-3), "betas[0]": one_cycle_momentum(60),
                 "weight_decay": linear(0.0, 0.1, 60)}

    def make(model):
        opt = optimlab.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
        return opt, Scheduler(opt, schedules)

    full = _model(0)
    opt, sched = make(full)
    _train(full, opt, sched, 60)

    part = _model(0)
    opt, sched = make(part)
    _train(part, opt, sched, 25)
    torch.save({"model": part.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "ck.pt")

    ck = torch.load(tmp_path / "ck.pt")  # weights_only: the scheduler state is just the step
    assert ck["sched"] == {"last_step": 25}
    resumed = _model(7)  # a fresh process: everything comes from the file
    opt2, sched2 = make(resumed)
    resumed.load_state_dict(ck["model"])
    if load_order == "optimizer-first":
        opt2.load_state_dict(ck["opt"])
        sched2.load_state_dict(ck["sched"])
    else:
        sched2.load_state_dict(ck["sched"])
        opt2.load_state_dict(ck["opt"])
    assert sched2.values() == sched.values()
    _train(resumed, opt2, sched2, 60, start=25)
    assert sched2.values() == [{k: s(60) for k, s in schedules.items()}]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("which", ["sgd", "adam"])
def test_scheduler_drives_optimlab_and_torch_optimizers_identically(which):
    """The same Scheduler on optimlab's optimizer and on torch.optim's: identical trajectories."""
    if which == "sgd":
        make = {"optimlab": optimlab.SGD, "torch": torch.optim.SGD}
        kw = dict(lr=0.02, momentum=0.9)
        # momentum stays > 0: optimlab creates a transform's state on the first step only
        schedules = {"lr": sgdr(0.02, 10, 2), "momentum": cyclic(0.95, 0.8, 7, 5),
                     "weight_decay": linear(0.0, 0.05, 30)}
    else:
        make = {"optimlab": optimlab.Adam, "torch": torch.optim.Adam}
        kw = dict(lr=0.01, betas=(0.9, 0.999))
        schedules = {"lr": one_cycle(0.05, 60), "betas[0]": one_cycle_momentum(60), "weight_decay": polynomial(0.1, 40)}
    models, scheds = {}, {}
    for name, cls in make.items():
        models[name] = _model(0)
        opt = cls(models[name].parameters(), **kw)
        scheds[name] = Scheduler(opt, schedules)
        _train(models[name], opt, scheds[name], 60)
        assert opt.param_groups[0]["weight_decay"] == schedules["weight_decay"](60)
    for a, b in zip(models["optimlab"].parameters(), models["torch"].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.equal(models["torch"].weight, _model(0).weight)


def test_schedules_pickle_and_deepcopy_with_their_scheduler():
    all_schedules = [c[2] for c in TORCH_CASES] + [
        wsd(1.0, 100, 10, 20, decay="1-sqrt"), inverse_sqrt(1e-3, 40), sgdr(1.0, 10, 2, cycle_decay=0.5)]
    for s in all_schedules:
        again = pickle.loads(pickle.dumps(s))
        assert again == s and [again(t) for t in range(0, 1000, 37)] == [s(t) for t in range(0, 1000, 37)]
    model = _model(0)
    opt = optimlab.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = Scheduler(opt, {"lr": cosine(0.1, 100), "momentum": linear(0.9, 0.5, 100)})
    twin = copy.deepcopy(sched)
    twin.step()
    assert twin.optimizer is not opt and twin.last_step == 1 and sched.last_step == 0
    assert opt.param_groups[0]["momentum"] == 0.9
    assert twin.optimizer.param_groups[0]["momentum"] == linear(0.9, 0.5, 100)(1)


# -- schedules without a torch counterpart, against naive references ------------------------------
@pytest.mark.parametrize("decay", ["linear", "cosine", "1-sqrt"])
def test_wsd_against_a_naive_piecewise_reference(decay):
    s = wsd(2.0, 100, 10, 30, end=0.1, start=0.2, decay=decay)
    t = np.arange(120)
    frac = np.clip((t - 70) / 30, 0, 1)
    done = {"linear": frac, "cosine": (1 - np.cos(np.pi * frac)) / 2, "1-sqrt": np.sqrt(frac)}[decay]
    ref = np.where(t < 10, 0.2 + 1.8 * t / 10, 2.0 - 1.9 * done)
    np.testing.assert_allclose([s(int(i)) for i in t], ref, rtol=0, atol=1e-12)
    assert s(10) == s(69) == 2.0 and s(100) == s(10**6) == 0.1


def test_inverse_sqrt_and_sgdr_cycle_decay_against_naive_references():
    s = inverse_sqrt(1e-3, 400)
    for t in range(1, 5000, 7):
        assert abs(s(t) - 1e-3 * min(t / 400, math.sqrt(400 / t))) <= 1e-15
    assert s(0) == 0.0 and s(400) == 1e-3 and s(1600) == 5e-4
    # SGDR with cycle_decay: cycles of 10, 20, 40, ... steps, peaks 1, 0.5, 0.25, ...
    ref, length, peak = [], 10, 1.0
    while len(ref) < 500:
        ref += [0.01 + (peak - 0.01) * (1 + math.cos(math.pi * i / length)) / 2 for i in range(length)]
        length, peak = 2 * length, peak / 2
    s = sgdr(1.0, 10, 2, end=0.01, cycle_decay=0.5)
    assert max(abs(s(t) - ref[t]) for t in range(500)) <= 1e-15
    assert s.cycle(10) == (1, 0, 20) and s.cycle(29) == (1, 19, 20) and s.cycle(30) == (2, 0, 40)


# -- reduce on plateau ---------------------------------------------------------------------------
def _metrics(n=150):
    """A noisy decreasing curve with flat stretches: plateaus of every length."""
    g = torch.Generator().manual_seed(3)
    trend = torch.cat([torch.linspace(1.0, 0.5, 40), torch.full((30,), 0.5), torch.linspace(0.5, 0.3, 40),
                       torch.full((n - 110,), 0.3)])
    return (trend + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)).tolist()


PLATEAU_CONFIGS = [
    {},
    {"patience": 0},
    {"mode": "max", "patience": 2},
    {"threshold_mode": "abs", "threshold": 0.01, "patience": 3},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.005, "patience": 1, "cooldown": 2},
    {"factor": 0.5, "patience": 2, "cooldown": 3, "min_lr": 0.01},
    {"factor": 0.5, "patience": 1, "min_lr": [0.02, 0.001], "eps": 1e-3},
]


@pytest.mark.parametrize("cfg", PLATEAU_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_plateau_makes_torchs_decisions_and_resumes(cfg, tmp_path):
    metrics = _metrics()
    ours_opt, ref_opt = _sgd(groups=2), _sgd(groups=2)
    ours, ref = ReduceOnPlateau(ours_opt, **cfg), L.ReduceLROnPlateau(ref_opt, **cfg)
    reductions = 0
    for epoch, m in enumerate(metrics):
        if epoch == 75:  # save and resume mid-way, into fresh objects
            torch.save({"opt": ours_opt.state_dict(), "plateau": ours.state_dict()}, tmp_path / "ck.pt")
            ck = torch.load(tmp_path / "ck.pt")
            ours_opt = _sgd(groups=2)
            ours = ReduceOnPlateau(ours_opt, **cfg)
            ours_opt.load_state_dict(ck["opt"])
            ours.load_state_dict(ck["plateau"])
        before = [g["lr"] for g in ref_opt.param_groups]
        reduced = ours.step(torch.tensor(m, dtype=torch.float64) if epoch % 2 else m)
        ref.step(m)
        assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in ref_opt.param_groups], f"epoch {epoch}"
        assert ours.state.best == ref.best and ours.state.bad_epochs == ref.num_bad_epochs
        changed = [g["lr"] for g in ref_opt.param_groups] != before
        assert reduced or not changed  # a reduction may be skipped by eps or min_lr, never invented
        reductions += reduced
    assert reductions == ours.state.reductions and 0 < reductions


# -- fit -----------------------------------------------------------------------------------------
def _data(n=60, seed=0):
    w = torch.randn(5, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))
    return x, (x @ w > 0).long()


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _fit_with_schedules(model, epochs, **kw):
    opt = optimlab.SGD(model.parameters(), lr=0.5, momentum=0.5)
    sched = Scheduler(opt, {"momentum": linear(0.5, 0.9, 30)})
    plateau = ReduceOnPlateau(opt, mode="max", factor=0.5, patience=0)
    res = fit(model, opt, F.cross_entropy, _data(), val=_data(40, 1), metric=accuracy, epochs=epochs,
              batch_size=10, scheduler=sched, plateau=plateau, **kw)
    return res, opt, sched, plateau


def test_fit_steps_the_scheduler_per_step_and_the_plateau_per_epoch_and_resumes(tmp_path):
    full = _net()
    res, opt, sched, plateau = _fit_with_schedules(full, 6)
    assert sched.last_step == res.steps == 36 and opt.param_groups[0]["momentum"] == 0.9
    assert plateau.state.epochs == 6 and plateau.state.reductions > 0
    assert opt.param_groups[0]["lr"] == 0.5 * 0.5 ** plateau.state.reductions

    ck = tmp_path / "run.pt"
    _fit_with_schedules(_net(), 3, checkpoint=ck)  # "interrupted"
    resumed = _net(seed=5)
    res2, opt2, sched2, plateau2 = _fit_with_schedules(resumed, 6, checkpoint=ck, resume=True)
    assert res2.steps == 36 and sched2.last_step == 36 and plateau2.state == plateau.state
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_fit_accepts_a_torch_scheduler_and_checks_the_plateau_direction():
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lam = as_lambda_lr(opt, cosine(0.1, 12))
    res = fit(model, opt, F.cross_entropy, _data(), epochs=2, batch_size=10, scheduler=lam)
    assert res.steps == 12 and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="mode='min'.*higher-is-better.*mode='max'"):
        fit(model, opt, F.cross_entropy, _data(), val=_data(40, 1), metric=accuracy,
            plateau=ReduceOnPlateau(opt))
    with pytest.raises(ValueError, match="pass val="):
        fit(model, opt, F.cross_entropy, _data(), plateau=ReduceOnPlateau(opt))


# -- bad arguments -------------------------------------------------------------------------------
def _opt():
    return optimlab.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


BAD = [
    (lambda: cosine(0.1, 0), "total_steps: 0"),
    (lambda: cosine(0.1, 10.5), "total_steps: 10.5"),
    (lambda: cosine(float("nan"), 10), "init: nan"),
    (lambda: linear(0.0, 1.0, 0), "steps: 0"),
    (lambda: step_decay(0.1, 0), "step_size: 0"),
    (lambda: multi_step(0.1, 10), "milestones: 10"),
    (lambda: multi_step(0.1, [10, -1]), "milestone: -1"),
    (lambda: exponential(0.1, 0.0), "gamma: 0.0"),
    (lambda: polynomial(0.1, 10, power=-1.0), "power: -1.0"),
    (lambda: sgdr(0.1, 0), "T_0: 0"),
    (lambda: sgdr(0.1, 10, T_mult=1.5), "T_mult: 1.5"),
    (lambda: warmup(0.1, 10), "schedule: 0.1"),
    (lambda: warmup(constant(0.1), -1), "steps: -1"),
    (lambda: join([constant(1.0), constant(2.0)], []), "boundaries: \\[\\]"),
    (lambda: join([constant(1.0), constant(2.0)], [0]), "boundary: 0"),
    (lambda: join([constant(1.0)] * 3, [10, 5]), "boundary: 5"),
    (lambda: cyclic(0.01, 0.1, 0), "step_size_up: 0"),
    (lambda: cyclic(0.01, 0.1, 10, mode="triangle"), "mode: 'triangle'"),
    (lambda: one_cycle(0.1, 1000, pct_start=0.0), "pct_start: 0.0"),
    (lambda: one_cycle(0.1, 10, pct_start=0.05), "pct_start: 0.05 with total_steps=10"),
    (lambda: one_cycle(0.1, 100, pct_start=1.0), "pct_start: 1.0"),
    (lambda: one_cycle(0.1, 100, pct_start=0.6, three_phase=True), "pct_start: 0.6"),
    (lambda: one_cycle(0.1, 100, anneal="cosine"), "anneal: 'cosine'"),
    (lambda: one_cycle(0.1, 100, div_factor=0), "div_factor: 0"),
    (lambda: wsd(1.0, 100, 60, 50), "warmup_steps \\+ decay_steps: 60 \\+ 50"),
    (lambda: wsd(1.0, 100, 10, 50, decay="exp"), "decay: 'exp'"),
    (lambda: inverse_sqrt(1.0, 0), "warmup_steps: 0"),
    (lambda: Scheduler(_opt(), {"gamma": constant(1.0)}), "no hyperparameter 'gamma'"),
    (lambda: Scheduler(_opt(), {"momentum[0]": constant(1.0)}), "not a tuple"),
    (lambda: Scheduler(_opt(), {"betas[x]": constant(1.0)}), "key: 'betas\\[x\\]'"),
    (lambda: Scheduler(_opt(), {"lr": 0.1}), "schedule for 'lr': 0.1"),
    (lambda: Scheduler(_opt(), [constant(1.0), constant(2.0)]), "2 entries for 1 param groups"),
    (lambda: as_lambda_lr(optimlab.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0), constant(1.0)),
     "lr of param group 0: 0.0"),
    (lambda: ReduceOnPlateau(_opt(), factor=1.0), "factor: 1.0"),
    (lambda: ReduceOnPlateau(_opt(), mode="avg"), "mode: 'avg'"),
    (lambda: ReduceOnPlateau(_opt(), threshold_mode="pct"), "threshold_mode: 'pct'"),
    (lambda: ReduceOnPlateau(_opt(), threshold=1.5), "threshold: 1.5"),
    (lambda: ReduceOnPlateau(_opt(), patience=-1), "patience: -1"),
    (lambda: ReduceOnPlateau(_opt(), min_lr=[0.0, 0.0]), "min_lr: 2 values for 1 param groups"),
]


@pytest.mark.parametrize("make,match", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_and_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_scheduler_needs_an_optimizer():
    with pytest.raises(TypeError, match="needs a torch.optim.Optimizer"):
        Scheduler([torch.zeros(1)], cosine(0.1, 10))
