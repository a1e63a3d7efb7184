"""The adapter is a real torch.optim.Optimizer: param groups, closures, schedulers, GradScaler,
state_dict (also from torch.optim), deepcopy, pickle, named parameters, clear errors."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch.optim import lr_scheduler as S

import optimlab
from problems import make_net, net_data


def _loss(net, x, y):
    return ((net(x) - y) ** 2).mean()


def _pair(cls_name, **kw):
    net_a, x, y = make_net(), *net_data()
    net_b = copy.deepcopy(net_a)
    return net_a, net_b, getattr(optimlab, cls_name)(net_a.parameters(), **kw), getattr(torch.optim, cls_name)(
        net_b.parameters(), **kw), x, y


# --- construction errors ---------------------------------------------------------------------
def test_empty_parameter_list():
    with pytest.raises(ValueError, match="empty parameter list"):
        optimlab.Adam([])


def test_non_tensor_parameter():
    with pytest.raises(TypeError, match="can only optimize Tensors.*float"):
        optimlab.SGD([1.0], lr=0.1)


def test_single_tensor_instead_of_list():
    with pytest.raises(TypeError, match="iterable"):
        optimlab.SGD(torch.nn.Parameter(torch.ones(2)), lr=0.1)


def test_parameter_listed_twice_in_a_group_warns_like_torch():
    """torch warns (and steps the parameter once per listing); scripts that ran under torch run."""
    w = torch.nn.Parameter(torch.ones(3))
    w_ref = torch.nn.Parameter(torch.ones(3))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = optimlab.SGD([w, w], lr=0.1)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        ref = torch.optim.SGD([w_ref, w_ref], lr=0.1)
    for p, o in ((w, opt), (w_ref, ref)):
        p.grad = torch.tensor([1.0, 2.0, 3.0])
        o.step()
    torch.testing.assert_close(w, w_ref)


def test_parameter_in_two_groups():
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="more than one parameter group"):
        optimlab.SGD([{"params": [w]}, {"params": [w]}], lr=0.1)


def test_group_keeps_keys_it_does_not_read():
    """torch keeps any key in a param group (frameworks store their own tags there)."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = optimlab.Adam([{"params": [w], "my_tag": "encoder"}])
    assert opt.param_groups[0]["my_tag"] == "encoder"
    w.grad = torch.ones(3)
    opt.step()
    assert opt.state_dict()["param_groups"][0]["my_tag"] == "encoder"


def test_unknown_keyword_argument():
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(TypeError, match="momentun"):
        optimlab.SGD([w], lr=0.1, momentun=0.9)


def test_add_param_group_is_validated_and_used():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = optimlab.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [b], "momentum": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "lr": 0.5})
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert torch.allclose(a, torch.full((2,), 0.9)) and torch.allclose(b, torch.full((2,), 0.5))


# --- the step ----------------------------------------------------------------------------------
def test_parameters_without_grad_are_skipped():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = optimlab.Adam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2)) and b not in opt.state
    assert not torch.equal(a, torch.ones(2))


def test_step_returns_closure_loss_and_calls_it_once():
    net_a, net_b, ours, theirs, x, y = _pair("SGD", lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        ours.zero_grad()
        loss = _loss(net_a, x, y)
        loss.backward()
        return loss

    loss = ours.step(closure)
    assert len(calls) == 1 and torch.is_tensor(loss) and loss.item() > 0


def test_grad_is_not_modified():
    w = torch.nn.Parameter(torch.ones(3))
    g = torch.tensor([1.0, -2.0, 3.0])
    for opt in (optimlab.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.1, maximize=True),
                optimlab.Adam([w], lr=0.1, weight_decay=0.1), optimlab.AdamW([w], clip_grad_value=0.5, l2=0.1)):
        w.grad = g.clone()
        opt.step()
        opt.step()
        assert torch.equal(w.grad, g)


def test_step_hooks_run():
    w = torch.nn.Parameter(torch.ones(3))
    opt = optimlab.SGD([w], lr=0.1)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    w.grad = torch.ones(3)
    opt.step()
    assert seen == ["pre", "post"]


# --- schedulers --------------------------------------------------------------------------------
SCHEDULERS = {
    "StepLR": lambda o: S.StepLR(o, step_size=5, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[3, 8], gamma=0.3),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=4),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.2, total_iters=6),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=10, power=2.0),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=7),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2),
    "LambdaLR": lambda o: S.LambdaLR(o, lambda t: 1 / (1 + t)),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda t: 0.95),
    "SequentialLR": lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=3), S.ExponentialLR(o, 0.9)], milestones=[3]),
    "ChainedScheduler": lambda o: S.ChainedScheduler([S.ConstantLR(o, 0.5, total_iters=3), S.ExponentialLR(o, 0.9)]),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=0.001, max_lr=0.05, step_size_up=4),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=30),
}


@pytest.mark.parametrize("name", list(SCHEDULERS) + ["ReduceLROnPlateau"])
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_lr_schedulers_drive_the_same_trajectory(name, opt_name):
    kw = dict(lr=0.02, momentum=0.9) if opt_name == "SGD" else dict(lr=0.02)
    net_a, net_b, ours, theirs, x, y = _pair(opt_name, **kw)
    if name == "ReduceLROnPlateau":
        make = lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1)  # noqa: E731
    else:
        make = SCHEDULERS[name]
    sa, sb = make(ours), make(theirs)
    for _ in range(30):
        for net, opt, sch in ((net_a, ours, sa), (net_b, theirs, sb)):
            opt.zero_grad()
            loss = _loss(net, x, y)
            loss.backward()
            opt.step()
            sch.step(round(loss.item(), 1)) if name == "ReduceLROnPlateau" else sch.step()
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# --- AMP ---------------------------------------------------------------------------------------
def test_grad_scaler_matches_torch_and_skips_inf_steps():
    net_a, net_b, ours, theirs, x, y = _pair("Adam", lr=0.01)
    sc_a, sc_b = torch.amp.GradScaler("cpu", init_scale=2.0**10), torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step in range(12):
        for net, opt, sc in ((net_a, ours, sc_a), (net_b, theirs, sc_b)):
            opt.zero_grad()
            loss = _loss(net, x, y) * (float("inf") if step == 5 else 1.0)
            sc.scale(loss).backward()
            sc.step(opt)
            sc.update()
    assert sc_a.get_scale() == sc_b.get_scale() < 2.0**10
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# --- persistence -------------------------------------------------------------------------------
def _train(net, opt, x, y, n):
    for _ in range(n):
        opt.zero_grad()
        _loss(net, x, y).backward()
        opt.step()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_and_pickle_continue_identically(how):
    net, x, y = make_net(), *net_data()
    opt = optimlab.AdamW(net.parameters(), lr=0.01, amsgrad=True)
    _train(net, opt, x, y, 5)
    both = (net, opt)
    net2, opt2 = copy.deepcopy(both) if how == "deepcopy" else pickle.loads(pickle.dumps(both))
    _train(net, opt, x, y, 5)
    _train(net2, opt2, x, y, 5)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_loads_a_torch_optim_state_dict():
    net_a, net_b, ours, theirs, x, y = _pair("Adam", lr=0.01, amsgrad=True)
    _train(net_b, theirs, x, y, 10)
    buf = io.BytesIO()
    torch.save({"model": net_b.state_dict(), "opt": theirs.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    net_a.load_state_dict(ckpt["model"])
    ours.load_state_dict(ckpt["opt"])
    _train(net_a, ours, x, y, 10)
    _train(net_b, theirs, x, y, 10)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_state_dict_keeps_hyperparameter_changes_and_counters():
    w = torch.nn.Parameter(torch.ones(3))
    opt = optimlab.Adam([w], lr=0.01, skip_nonfinite=True)
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    opt.param_groups[0]["lr"] = 0.5
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2 = optimlab.Adam([w], lr=0.01, skip_nonfinite=True)
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    assert opt2.param_groups[0]["lr"] == 0.5 and opt2.skipped_steps == 1


# --- named parameters --------------------------------------------------------------------------
def test_named_parameters_are_accepted_and_saved():
    net = make_net()
    opt = optimlab.AdamW(net.named_parameters(), lr=0.01)
    assert opt.param_groups[0]["param_names"][0] == next(net.named_parameters())[0]
    assert opt.state_dict()["param_groups"][0]["param_names"] == [n for n, _ in net.named_parameters()]


def test_name_mask_requires_names():
    net = make_net()
    opt = optimlab.AdamW(net.parameters(), lr=0.01, decay_mask=optimlab.Mask(exclude="bias"))
    _loss(net, *net_data()).backward()
    with pytest.raises(ValueError, match="named_parameters"):
        opt.step()


def test_sparse_gradient_error_is_clear():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = optimlab.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients.*SparseAdam"):
        opt.step()


@pytest.mark.parametrize("name", ["ASGD", "NAdam"])
def test_params_with_equal_step_counts_but_different_histories_keep_their_own_scalars(name):
    """A skipped step A at 2, B at 1; lr changes before step 2: at step 3 both have count 2 but
    different host-side scalar state (eta / mu_product) and must not share it."""
    ws = [torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 3.0], dtype=torch.float64)]
    ours_p = [torch.nn.Parameter(w.clone()) for w in ws]
    torch_p = [torch.nn.Parameter(w.clone()) for w in ws]
    ours = getattr(optimlab, name)(ours_p, lr=0.1)
    theirs = getattr(torch.optim, name)(torch_p, lr=0.1)
    for step, has in enumerate([(True, False), (False, True), (True, True), (True, True)]):
        if step == 1:
            for o in (ours, theirs):
                o.param_groups[0]["lr"] = 0.5
        for ps, opt in ((ours_p, ours), (torch_p, theirs)):
            for p, h in zip(ps, has):
                p.grad = (p.detach() * 2 + 1) if h else None
            opt.step()
    for a, b in zip(ours_p, torch_p):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_switching_momentum_on_mid_run_matches_torch():
    """A hyperparameter that turns a stateful transform on later (momentum 0 -> 0.9) creates
    its state then, as torch does (the buffer starts from that step's gradient)."""
    net_a, net_b, ours, theirs, x, y = _pair("SGD", lr=0.05, momentum=0.0)
    for step in range(20):
        if step == 7:
            for opt in (ours, theirs):
                opt.param_groups[0]["momentum"] = 0.9
        for net, opt in ((net_a, ours), (net_b, theirs)):
            opt.zero_grad()
            _loss(net, x, y).backward()
            opt.step()
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("AdamW", dict(amsgrad=True)), ("SGD", dict(lr=0.1, momentum=0.9)),
                                         ("Adagrad", dict(lr_decay=0.01))])
def test_plain_torch_algorithms_run_torchs_fused_kernel(name, kwargs):
    """With none of optimlab's extras, Adam, AdamW, SGD and Adagrad step with torch's fused kernel
    (the same numbers as the chain, one pass over memory); an extra, ``fused=False`` or a
    differentiable step switches back to the chain."""
    p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    cls = getattr(optimlab, name)
    assert cls([p], **kwargs).native(cls([p], **kwargs).param_groups[0]) is not None
    for extra in (dict(fused=False), dict(l2=0.1), dict(clip_grad_norm=1.0), dict(decay_mask="no_bias_norm"),
                  dict(differentiable=True)):
        opt = cls([p], **kwargs, **extra)
        assert opt.native(opt.param_groups[0]) is None or extra.get("differentiable"), extra
    # same trajectory either way, with a first step where SGD's momentum buffer starts as the gradient
    ps = [torch.nn.Parameter(p.detach().clone()) for _ in range(2)]
    fast, chain = cls([ps[0]], **kwargs), cls([ps[1]], fused=False, **kwargs)
    for i in range(5):
        g = torch.randn(5, 3, dtype=torch.float64)
        for q, o in zip(ps, (fast, chain)):
            q.grad = g.clone()
            o.step()
    torch.testing.assert_close(ps[0], ps[1], rtol=1e-12, atol=1e-14)
    assert fast.state_dict()["state"].keys() == chain.state_dict()["state"].keys()


@pytest.mark.parametrize("name", ["Adam", "Adagrad"])
def test_native_step_counts_advance_as_one_vector_and_stay_each_parameters_own(name):
    """On the fused path a group's step counts are 0-d views of one vector (one add a step, not a
    foreach over every tensor); each is still its parameter's own count: after an assignment,
    a copy of the state_dict loaded by a second optimizer, or a checkpoint through disk, the
    counts and parameters go on as torch's optimizers' do."""
    net_a, net_b, ours, theirs, x, y = _pair(name, lr=0.01)
    _train(net_a, ours, x, y, 3)
    _train(net_b, theirs, x, y, 3)
    steps = [ours.state[p]["step"] for p in net_a.parameters()]
    assert len({t.untyped_storage().data_ptr() for t in steps}) == 1 and all(t.ndim == 0 for t in steps)
    for opt, net in ((ours, net_a), (theirs, net_b)):  # one parameter's count, assigned
        opt.state[next(net.parameters())]["step"] = torch.tensor(10.0)
    _train(net_a, ours, x, y, 2)
    _train(net_b, theirs, x, y, 2)
    assert [float(ours.state[p]["step"]) for p in net_a.parameters()] == [12.0] + [5.0] * (len(steps) - 1)
    # a second optimizer over copies of the parameters loads this one's state_dict; both go on
    net_c, net_d = copy.deepcopy(net_a), copy.deepcopy(net_b)
    ours_c = getattr(optimlab, name)(net_c.parameters(), lr=0.01)
    theirs_d = getattr(torch.optim, name)(net_d.parameters(), lr=0.01)
    ours_c.load_state_dict(copy.deepcopy(ours.state_dict()))  # (torch's load keeps the tensors it is
    theirs_d.load_state_dict(copy.deepcopy(theirs.state_dict()))  # given: two live optimizers would share them)
    _train(net_c, ours_c, x, y, 3)
    _train(net_d, theirs_d, x, y, 3)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    ours.load_state_dict(torch.load(buf))
    _train(net_a, ours, x, y, 2)
    _train(net_b, theirs, x, y, 2)
    for mine, torchs, opt, topt in ((net_a, net_b, ours, theirs), (net_c, net_d, ours_c, theirs_d)):
        for p, q in zip(mine.parameters(), torchs.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
            assert float(opt.state[p]["step"]) == float(topt.state[q]["step"])


@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("AdamW", dict(amsgrad=True)), ("Adagrad", {}),
                                         ("SGD", dict(momentum=0.9))])
def test_a_group_in_two_dtypes_runs_torchs_fused_kernel_per_dtype(name, kwargs):
    """A group of float32 and float64 parameters steps with torch's fused kernel once per dtype,
    as torch's own wrapper splits it (it used to fall back to the chain); where the kernel
    takes step counts, each call's are one vector, kept from step to step."""
    torch.manual_seed(0)
    values = [torch.randn(4, 3), torch.randn(5, dtype=torch.float64), torch.randn(3),
              torch.randn(2, 2, dtype=torch.float64)]
    ours_p = [torch.nn.Parameter(v.clone()) for v in values]
    torch_p = [torch.nn.Parameter(v.clone()) for v in values]
    ours = getattr(optimlab, name)(ours_p, lr=0.01, **kwargs)
    theirs = getattr(torch.optim, name)(torch_p, lr=0.01, fused=True, **kwargs)
    kernel = {"Adam": "_fused_adam_", "AdamW": "_fused_adamw_", "Adagrad": "_fused_adagrad_", "SGD": "_fused_sgd_"}[name]
    calls, storages = [], []
    real = getattr(torch, kernel)

    def counted(*args, **kw):
        calls.append(args[0][0].dtype)
        return real(*args, **kw)

    for step in range(4):
        grads = [torch.randn_like(v) for v in values]
        for ps, opt in ((ours_p, ours), (torch_p, theirs)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            if opt is ours:
                setattr(torch, kernel, counted)
                try:
                    opt.step()
                finally:
                    setattr(torch, kernel, real)
            else:
                opt.step()
        if "step" in ours.state[ours_p[0]]:
            storages.append([ours.state[p]["step"].untyped_storage().data_ptr() for p in ours_p])
    assert calls == [torch.float32, torch.float64] * 4
    for p, q in zip(ours_p, torch_p):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    if storages:
        last = storages[-1]
        assert last[0] == last[2] and last[1] == last[3] and last[0] != last[1]
        assert storages[1] == last  # (the first step made the state; packed once after it)
        assert [float(ours.state[p]["step"]) for p in ours_p] == [float(theirs.state[q]["step"]) for q in torch_p]


def test_native_step_counts_follow_gradients_that_come_and_go():
    """Each step one parameter has no gradient (a rotating one): the counts that are stepped
    are packed for that call, the others keep theirs -- the run and every count are torch's,
    and what is held for the group stays bounded."""
    torch.manual_seed(0)
    values = [torch.randn(3, 2) for _ in range(12)]
    ours_p = [torch.nn.Parameter(v.clone()) for v in values]
    torch_p = [torch.nn.Parameter(v.clone()) for v in values]
    ours, theirs = optimlab.Adam(ours_p, lr=0.01), torch.optim.Adam(torch_p, lr=0.01, fused=True)
    for step in range(30):
        grads = [torch.randn_like(v) for v in values]
        for ps, opt in ((ours_p, ours), (torch_p, theirs)):
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if i == step % len(ps) else g.clone()
            opt.step()
    for p, q in zip(ours_p, torch_p):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert float(ours.state[p]["step"]) == float(theirs.state[q]["step"])
    assert len(ours._packed_steps[id(ours.param_groups[0])]) <= 8


class _CountedTwins:
    """Ours and torch's optimizer of one algorithm on copies of the same values, stepped with the
    same gradients, and the step count each of our parameters should have (for the optimizers
    that keep their own counts, where torch's state has none)."""

    def __init__(self, values, ours_cls, theirs_cls, **kwargs):
        self.ours_p = [torch.nn.Parameter(v.clone()) for v in values]
        self.torch_p = [torch.nn.Parameter(v.clone()) for v in values]
        self.ours, self.theirs = ours_cls(self.ours_p, **kwargs), theirs_cls(self.torch_p, **kwargs)
        self.expect = [0] * len(values)

    def step(self, skip=None):
        """One step of both with the same random gradients (none for parameter ``skip``)."""
        grads = [torch.randn_like(p) for p in self.ours_p]
        for ps, opt in ((self.ours_p, self.ours), (self.torch_p, self.theirs)):
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if i == skip else g.clone()
            opt.step()
        for i in range(len(self.expect)):
            self.expect[i] += i != skip

    def counts(self, opt=None):
        """Each parameter's count as ``state_dict`` reads it (ours, or ``opt``)."""
        steps = (opt or self.ours).state_dict()["optimlab"]["steps"]
        return [steps.get(i, 0) for i in range(len(self.expect))]


def test_sgd_counts_of_native_runs_are_exact_whenever_read():
    """SGD keeps its own step counts (torch's state has none); a run of torch's-kernel steps over
    the same parameters counts its steps and writes them when they are next read. Whatever
    reads them -- state_dict, pickling, a step where the set of parameters with a gradient
    changed, the eager path after a hyperparameter switched torch's kernel off -- sees each
    parameter's exact count, and the trajectory is torch's (until L1 leaves torch's algorithm)."""
    import pickle

    torch.manual_seed(0)
    tw = _CountedTwins([torch.randn(4, 3) for _ in range(5)], optimlab.SGD, torch.optim.SGD, lr=0.05, momentum=0.9)
    ours, ours_p, expect = tw.ours, tw.ours_p, tw.expect
    for _ in range(4):
        tw.step()
    assert ours.__dict__["_pending_counts"], "the native steps did not run as one run"
    assert tw.counts() == expect == [4] * 5
    for _ in range(3):
        tw.step()
    again = pickle.loads(pickle.dumps((ours, ours_p)))
    assert [again[0]._counts[q] for q in again[1]] == expect == [7] * 5
    for k in range(6):  # one parameter without a gradient for three steps, then all again
        tw.step(skip=2 if k < 3 else None)
    assert tw.counts() == expect == [13, 13, 10, 13, 13]
    for p, q in zip(ours_p, tw.torch_p):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    ours.param_groups[0]["l1"] = 1e-3  # not torch's kernel: the eager path, from the counts
    for _ in range(2):
        for p in ours_p:
            p.grad = torch.randn_like(p)
        ours.step()
    assert tw.counts() == [e + 2 for e in expect]
    assert all(torch.isfinite(p).all() for p in ours_p)


def test_muon_counts_of_planned_eager_runs_are_exact_whenever_read():
    """Muon keeps its own step counts too, on the eager path: a run of planned steps over the
    same parameters counts its steps and writes them when next read. state_dict, pickling,
    a parameter without a gradient and a load all see exact counts, and the trajectory stays
    torch's Muon bit for bit."""
    import pickle

    torch.manual_seed(0)
    values = [torch.randn(6, 4) for _ in range(4)]
    tw = _CountedTwins(values, optimlab.Muon, torch.optim.Muon, lr=0.02)
    ours, ours_p, expect = tw.ours, tw.ours_p, tw.expect
    for _ in range(4):
        tw.step()
    assert ours.__dict__["_pending_counts"], "the planned steps did not run as one run"
    assert tw.counts() == expect == [4] * 4
    for _ in range(3):
        tw.step()
    again = pickle.loads(pickle.dumps((ours, ours_p)))
    assert [again[0]._counts[q] for q in again[1]] == expect == [7] * 4
    for k in range(4):  # one parameter without a gradient for two steps, then all again
        tw.step(skip=1 if k < 2 else None)
    assert tw.counts() == expect == [11, 9, 11, 11]
    for p, q in zip(ours_p, tw.torch_p):
        assert torch.equal(p, q)
    loaded_p = [torch.nn.Parameter(v.clone()) for v in values]
    loaded = optimlab.Muon(loaded_p, lr=0.02)
    loaded.load_state_dict(ours.state_dict())
    assert tw.counts(loaded) == expect
    for _ in range(3):
        for p in loaded_p:
            p.grad = torch.randn_like(p)
        loaded.step()
    assert tw.counts(loaded) == [e + 3 for e in expect]


def test_checkpoint_with_a_mask_loads_with_weights_only(tmp_path):
    """torch.load's default (weights_only=True, what the HF Trainer resumes with) reads a state_dict
    whose groups carry a decay mask: masks are stored as plain data and rebuilt on load."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = optimlab.AdamW(net.named_parameters(), weight_decay=0.1, decay_mask=r"bias|1\.weight")
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    sd = torch.load(tmp_path / "opt.pt", weights_only=True)
    again = optimlab.AdamW(net.named_parameters(), weight_decay=0.1)
    again.load_state_dict(sd)
    assert again.param_groups[0]["decay_mask"] == opt.param_groups[0]["decay_mask"] == optimlab.Mask(exclude=r"bias|1\.weight")
