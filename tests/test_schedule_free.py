"""Schedule-Free SGD and AdamW against a naive per-tensor reference of the authors' algorithm
that keeps x, y and z explicitly (float64, 1e-10), and the train/eval modes: evaluation at the
average x, step() refused in eval mode, checkpoints resuming bit-exactly in either mode, the
warning when a model is evaluated at y, and the fit loop's switching. The authors' package
itself is run in test_authors_packages.py."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import optimlab
from optimlab.train import evaluate, fit
from problems import grads_at, make_net, net_data, quadratic, split_groups

F64 = torch.float64

# The reference implementation's defaults (facebookresearch/schedule_free).
DEFAULTS = {
    "ScheduleFreeSGD": dict(lr=1.0, momentum=0.9, weight_decay=0, warmup_steps=0, r=0.0, weight_lr_power=2.0),
    "ScheduleFreeAdamW": dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, warmup_steps=0, r=0.0,
                              weight_lr_power=2.0, bias_correction="v"),
}


class NaiveScheduleFree:
    """Schedule-Free SGD / AdamW as the authors' package schedulefree 1.4.1 has them, one tensor at
    a time, with x, y and z all stored (the package keeps only y and z): ``SGDScheduleFree.step``
    (``schedulefree/sgd_schedulefree.py``), ``AdamWScheduleFree.step``
    (``schedulefree/adamw_schedulefree.py``: v divided by 1 - b2^t; ``bias_correction="v"``) and
    ``AdamWScheduleFreePaper.step`` (``schedulefree/adamw_schedulefree_paper.py``, the paper's
    Algorithm 1: sqrt(1 - b2^t) in the step size, and so in the weights; ``bias_correction="lr"``).
    All three: averaging weights t^r max(lr)^weight_lr_power, weight decay at y. Each tensor counts
    its own steps (those with a gradient)."""

    def __init__(self, params, hypers, adam):
        self.h, self.adam = hypers, adam  # hypers[i]: the hyperparameters of tensor i's group
        self.x = [p.clone() for p in params]
        self.y = [p.clone() for p in params]
        self.z = [p.clone() for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = [0] * len(params)
        self.weight_sum = [0.0] * len(params)
        self.lr_max = [0.0] * len(params)

    def step(self, grads):
        for i, g in enumerate(grads):
            if g is None:
                continue
            h = self.h[i]
            self.t[i] += 1
            t = self.t[i]
            b = h["betas"][0] if self.adam else h["momentum"]
            lr = h["lr"] * (min(1.0, t / h["warmup_steps"]) if h["warmup_steps"] > 0 else 1.0)
            if self.adam:
                b2 = h["betas"][1]
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
                if h["bias_correction"] == "lr":  # AdamWScheduleFreePaper
                    lr *= math.sqrt(1 - b2**t)
                    direction = g / (self.v[i].sqrt() + h["eps"])
                else:  # AdamWScheduleFree
                    direction = g / ((self.v[i] / (1 - b2**t)).sqrt() + h["eps"])
            else:
                direction = g
            self.lr_max[i] = max(self.lr_max[i], lr)
            weight = t ** h["r"] * self.lr_max[i] ** h["weight_lr_power"]
            self.weight_sum[i] += weight
            c = weight / self.weight_sum[i]
            self.z[i] = self.z[i] - lr * (direction + h["weight_decay"] * self.y[i])
            self.x[i] = (1 - c) * self.x[i] + c * self.z[i]
            self.y[i] = b * self.x[i] + (1 - b) * self.z[i]


def rel_err(ours, ref) -> float:
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(ours, ref))


def _loss(net, x, y):
    return ((net(x) - y) ** 2).mean()


CASES = [
    ("sgd", "ScheduleFreeSGD", dict(lr=0.2), [{}]),
    ("sgd-groups-wd-warmup", "ScheduleFreeSGD", dict(lr=0.3, weight_decay=0.05),
     [{"warmup_steps": 7}, {"lr": 0.1, "momentum": 0.8, "r": 1.0, "weight_decay": 0.0},
      {"weight_lr_power": 0.0, "warmup_steps": 3}]),
    ("adamw", "ScheduleFreeAdamW", dict(lr=0.01), [{}]),
    ("adamw-groups-wd-warmup", "ScheduleFreeAdamW", dict(lr=0.02, weight_decay=0.1),
     [{"warmup_steps": 10}, {"lr": 0.005, "betas": (0.8, 0.99), "eps": 1e-6, "r": 0.5},
      {"weight_lr_power": 1.0, "warmup_steps": 4, "weight_decay": 0.0}]),
    ("adamw-paper", "ScheduleFreeAdamW", dict(lr=0.01, bias_correction="lr"), [{}]),
    ("adamw-paper-and-v-groups-wd-warmup", "ScheduleFreeAdamW", dict(lr=0.02, weight_decay=0.1, bias_correction="lr"),
     [{"warmup_steps": 10}, {"lr": 0.005, "betas": (0.8, 0.99), "eps": 1e-6, "r": 0.5, "bias_correction": "v"}]),
]


@pytest.mark.parametrize("none_grads", [False, True], ids=["all-grads", "none-grads"])
@pytest.mark.parametrize("name,cls,kwargs,groups", CASES, ids=[c[0] for c in CASES])
def test_matches_naive_reference(name, cls, kwargs, groups, none_grads):
    """y step by step, x in eval mode, several groups, weight decay, warmup, lr changed mid-run
    (upwards: lr_max moves; downwards: it does not)."""
    x, y = net_data()
    net, ref_net = make_net(), make_net()
    params = list(net.parameters())
    opt = getattr(optimlab, cls)(split_groups(params, groups), **kwargs)
    hypers = [{**DEFAULTS[cls], **kwargs, **groups[i % len(groups)]} for i in range(len(params))]
    ref = NaiveScheduleFree([p.detach().clone() for p in params], hypers, adam=cls.endswith("AdamW"))
    skipped = [i for i, p in enumerate(params) if p is net.fc.bias or p is net.scale]
    steps = 40
    for step in range(steps):
        if step in (steps // 3, 2 * steps // 3):
            factor = 2.0 if step == steps // 3 else 0.25
            for g in opt.param_groups:
                g["lr"] *= factor
            for h in hypers:
                h["lr"] *= factor
        opt.zero_grad()
        _loss(net, x, y).backward()
        grads = grads_at(ref_net, ref.y, x, y)
        if none_grads and step % 3 == 1:
            for i in skipped:
                params[i].grad = grads[i] = None
        opt.step()
        ref.step(grads)
        assert rel_err(params, ref.y) <= 1e-10, f"{name}: y differs at step {step + 1}"
        if step % 10 == 9:
            opt.eval()
            assert rel_err(params, ref.x) <= 1e-10, f"{name}: eval-mode weights differ from x at step {step + 1}"
            opt.train()
            assert rel_err(params, ref.y) <= 1e-10


def test_registry_defaults_are_the_references():
    for cls, defaults in DEFAULTS.items():
        name = "schedule-free-sgd" if cls == "ScheduleFreeSGD" else "schedule-free-adamw"
        ours = optimlab.describe(name)["defaults"]
        assert {k: ours[k] for k in defaults} == defaults


@pytest.mark.parametrize("cls", ["ScheduleFreeSGD", "ScheduleFreeAdamW"])
def test_eval_mode_holds_the_average_and_it_converges(cls):
    """On the quadratic the averaged x (eval mode) converges; train() restores y."""
    f, x0, x_star = quadratic()
    w = torch.nn.Parameter(x0.clone())
    opt = getattr(optimlab, cls)([w], lr=0.1 if cls == "ScheduleFreeSGD" else 0.01)
    for _ in range(1500):
        opt.zero_grad()
        f(w).backward()
        opt.step()
    y_weights = w.detach().clone()
    z = opt.state[w]["z"]
    b = opt.param_groups[0]["momentum"] if cls == "ScheduleFreeSGD" else opt.param_groups[0]["betas"][0]
    assert opt.train_mode
    opt.eval()
    assert not opt.train_mode
    torch.testing.assert_close(w.detach(), (y_weights - (1 - b) * z) / b, rtol=1e-12, atol=1e-14)
    assert (w.detach() - x_star).norm() <= 1e-3 * x_star.norm()
    opt.eval()  # idempotent
    torch.testing.assert_close(w.detach(), (y_weights - (1 - b) * z) / b, rtol=1e-12, atol=1e-14)
    opt.train()
    opt.train()
    torch.testing.assert_close(w.detach(), y_weights, rtol=1e-12, atol=1e-14)


def test_step_in_eval_mode_raises_and_says_what_to_do():
    net = make_net()
    x, y = net_data()
    opt = optimlab.ScheduleFreeAdamW(net.parameters())
    _loss(net, x, y).backward()
    opt.step()
    opt.eval()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        opt.step()
    with pytest.raises(RuntimeError, match="optimizer.train()"):
        opt.step(lambda: _loss(net, x, y))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    opt.train()
    opt.step()


def _train(net, opt, steps, x, y):
    for _ in range(steps):
        opt.zero_grad()
        _loss(net, x, y).backward()
        opt.step()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cls", ["ScheduleFreeSGD", "ScheduleFreeAdamW"])
def test_checkpoint_in_either_mode_resumes_bit_exactly(cls, mode):
    """Save model + optimizer in ``mode``; the resumed run (fresh objects, via torch.save/load)
    continues exactly as the uninterrupted one, which made the same train()/eval() calls."""
    x, y = net_data()
    kwargs = dict(lr=0.05, weight_decay=0.01, warmup_steps=5)
    net = make_net()
    opt = getattr(optimlab, cls)(net.parameters(), **kwargs)
    _train(net, opt, 12, x, y)
    if mode == "eval":
        opt.eval()
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    assert ckpt["opt"]["optimlab"]["train_mode"] is (mode == "train")

    net2 = make_net(seed=7)
    opt2 = getattr(optimlab, cls)(net2.parameters(), **kwargs)
    net2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.train_mode is (mode == "train")  # the mode is restored with the state
    if mode == "eval":
        with pytest.raises(RuntimeError, match="optimizer.train()"):
            opt2.step()
    for o in (opt, opt2):
        o.train()
    _train(net, opt, 12, x, y)
    _train(net2, opt2, 12, x, y)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    opt.eval(), opt2.eval()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_float32_checkpoint_keeps_the_averaging_history_in_float64():
    """torch's loader casts state tensors to the parameter's dtype; the averaging weights' history
    (weight_sum, lr_max: Python floats in the authors' code) stays float64, so a float32 run
    resumes exactly as the uninterrupted one."""
    x, y = net_data(torch.float32)
    net = make_net(torch.float32)
    opt = optimlab.ScheduleFreeAdamW(net.parameters(), lr=0.01, warmup_steps=5)
    _train(net, opt, 7, x, y)
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    net2 = make_net(torch.float32, seed=7)
    net2.load_state_dict(ckpt["model"])
    opt2 = optimlab.ScheduleFreeAdamW(net2.parameters(), lr=0.01, warmup_steps=5)
    opt2.load_state_dict(ckpt["opt"])
    for st in list(opt.state.values()) + list(opt2.state.values()):
        assert st["weight_sum"].dtype == st["lr_max"].dtype == F64
    _train(net, opt, 7, x, y)
    _train(net2, opt2, 7, x, y)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_deepcopy_keeps_the_mode():
    net = make_net()
    x, y = net_data()
    opt = optimlab.ScheduleFreeSGD(net.parameters(), lr=0.1)
    _train(net, opt, 3, x, y)
    opt.eval()
    assert copy.deepcopy(opt).train_mode is False


@pytest.mark.slow
def test_compiled_path_matches_eager():
    """The chain is elementwise: compile=True runs it on flat buffers, with the same numbers, and
    eval()/train() act on the flat views."""
    x, y = net_data()
    nets = [make_net(), make_net()]
    groups = [{}, {"lr": 0.005, "weight_decay": 0.0, "warmup_steps": 2}]
    opts = [optimlab.ScheduleFreeAdamW(split_groups(list(n.parameters()), groups), lr=0.01, weight_decay=0.1,
                                       warmup_steps=4, compile=c) for n, c in zip(nets, (True, False))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed compilation warns: fail instead
        for step in range(12):
            if step == 6:
                for o in opts:
                    o.eval(), o.train()
                    for g in o.param_groups:
                        g["lr"] *= 0.5
            for n, o in zip(nets, opts):
                _train(n, o, 1, x, y)
    assert opts[0]._engine is not None and opts[0]._engine._layouts, "the compiled optimizer did not use flat buffers"
    assert rel_err(nets[0].parameters(), list(nets[1].parameters())) <= 1e-12
    for o in opts:
        o.eval()
    assert rel_err(nets[0].parameters(), list(nets[1].parameters())) <= 1e-12


def test_evaluate_warns_when_the_model_holds_y():
    x, y = net_data()
    net = make_net()
    opt = optimlab.ScheduleFreeAdamW(net.parameters(), lr=0.01)
    loss_fn = lambda out, target: ((out - target) ** 2).mean()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(net, loss_fn, (x, y))  # no step yet: y == x, nothing to warn about
    _train(net, opt, 3, x, y)
    with pytest.warns(UserWarning, match=r"ScheduleFreeAdamW, which is in train mode.*optimizer\.eval\(\)"):
        evaluate(net, loss_fn, (x, y))
    opt.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(net, loss_fn, (x, y))
    other = make_net(seed=3)  # a model the optimizer does not own
    opt.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(other, loss_fn, (x, y))


def _cls_data(n, seed):
    w = torch.randn(5, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))
    return x, (x @ w > 0).long()


def _cls_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def test_fit_validates_at_x_and_ends_in_eval_mode():
    data, val = _cls_data(60, 0), _cls_data(40, 1)
    model = _cls_model()
    opt = optimlab.ScheduleFreeAdamW(model.parameters(), lr=0.02)
    seen = []

    def on_epoch(rec):  # inside fit, after validation, the optimizer is back in train mode
        seen.append(opt.train_mode)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fit never evaluates at y
        res = fit(model, opt, F.cross_entropy, data, val=val, metric=optimlab.train.accuracy, epochs=3,
                  batch_size=10, on_epoch=on_epoch)
    assert seen == [True, True, True] and not opt.train_mode
    loss, _ = evaluate(model, F.cross_entropy, val, optimlab.train.accuracy)
    assert loss == pytest.approx(res.epoch_records[-1]["val_loss"], rel=1e-6)  # the weights validated: x


def test_fit_checkpoint_resume_is_exact(tmp_path):
    data, val = _cls_data(60, 0), _cls_data(40, 1)
    kw = dict(val=val, epochs=5, batch_size=7, seed=3)
    full = _cls_model()
    fit(full, optimlab.ScheduleFreeSGD(full.parameters(), lr=0.5), F.cross_entropy, data, **kw)

    ck = tmp_path / "run.pt"
    part = _cls_model()
    fit(part, optimlab.ScheduleFreeSGD(part.parameters(), lr=0.5), F.cross_entropy, data, checkpoint=ck,
        **dict(kw, epochs=2))
    assert torch.load(ck, weights_only=False)["optimizer"]["optimlab"]["train_mode"] is True
    resumed = _cls_model(seed=99)
    opt = optimlab.ScheduleFreeSGD(resumed.parameters(), lr=0.5)
    res = fit(resumed, opt, F.cross_entropy, data, checkpoint=ck, resume=True, **kw)
    assert res.epochs == 5 and not opt.train_mode
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_unsupported_options_are_explained():
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="decoupled_decay=0.1.*use weight_decay"):
        optimlab.ScheduleFreeAdamW([w], decoupled_decay=0.1)
    with pytest.raises(ValueError, match="bias_correction: 'paper'.*'v'.*'lr'"):
        optimlab.ScheduleFreeAdamW([w], bias_correction="paper")
    # the options that do apply: clipping, l2, masks on weight_decay
    net = make_net()
    opt = optimlab.ScheduleFreeAdamW(net.named_parameters(), lr=0.01, weight_decay=0.1, decay_mask="no_bias_norm",
                                     clip_grad_norm=1.0, l2=1e-3)
    x, y = net_data()
    _train(net, opt, 5, x, y)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_maximize_is_minimizing_the_negative():
    x, y = net_data()
    a, b = make_net(), make_net()
    oa = optimlab.ScheduleFreeSGD(a.parameters(), lr=0.1, maximize=True)
    ob = optimlab.ScheduleFreeSGD(b.parameters(), lr=0.1)
    for _ in range(5):
        oa.zero_grad(), ob.zero_grad()
        (-_loss(a, x, y)).backward()
        _loss(b, x, y).backward()
        oa.step(), ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)
