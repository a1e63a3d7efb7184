"""The flat-buffer compiled path (``compile=True`` / ``fused=True``, optimlab._flat): same
numbers as the eager path and torch.optim, no recompiles when hyperparameters change, bit-exact
state_dict round trips, torch's gradient semantics, and a clean fallback when compilation is
unavailable."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch

import optimlab
from optimlab import _flat
from problems import make_net, net_data, padding, split_groups, step_twins, twin_params

F64 = torch.float64


def rel_err(a_params, b_params) -> float:
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() for a, b in zip(a_params, b_params))


def train(net, opt, steps, *, none_grads=False, change=None, set_to_none=True):
    x, y = net_data(next(net.parameters()).dtype)
    for step in range(steps):
        if change is not None and step == steps // 2:
            for g in opt.param_groups:
                g.update(change)
        opt.zero_grad(set_to_none=set_to_none)
        ((net(x) - y) ** 2).mean().backward()
        if none_grads and step % 3 == 1:
            net.fc.bias.grad = None
            net.scale.grad = None
        opt.step()


def triple(cls, groups, **kwargs):
    """The same net three times: compiled optimlab, eager optimlab, torch.optim. Ours run the
    chain itself (``fused=False``), not torch's fused kernel that plain Adam, AdamW, SGD and
    Adagrad call by default and under ``compile=True``."""
    nets = [make_net(F64) for _ in range(3)]
    chain_only = {"fused": False} if cls in ("Adam", "AdamW", "SGD", "Adagrad") else {}
    ours = getattr(optimlab, cls)(split_groups(list(nets[0].parameters()), groups), compile=True, **kwargs,
                                  **chain_only)
    eager = getattr(optimlab, cls)(split_groups(list(nets[1].parameters()), groups), compile=False, **kwargs,
                                   **chain_only)
    theirs = getattr(torch.optim, cls)(split_groups(list(nets[2].parameters()), groups), **kwargs)
    return nets, (ours, eager, theirs)


def flat_buckets(opt):
    return [b for lay in opt._engine._layouts.values() for b in lay.buckets] if opt._engine else []


@pytest.mark.parametrize("none_grads", [False, True], ids=["all-grads", "none-grads"])
def test_adam_matches_eager_and_torch(none_grads):
    groups = [{}, {"lr": 0.003, "betas": (0.5, 0.9), "weight_decay": 0.05}]
    nets, opts = triple("Adam", groups, lr=0.01)
    for net, opt in zip(nets, opts):
        train(net, opt, 30, none_grads=none_grads, change={"lr": 0.004, "betas": (0.85, 0.995), "eps": 1e-6})
    assert flat_buckets(opts[0]), "the compiled optimizer did not use flat buffers"
    assert rel_err(nets[0].parameters(), nets[1].parameters()) <= 1e-12
    assert rel_err(nets[0].parameters(), nets[2].parameters()) <= 1e-12
    for p0, p1 in zip(nets[0].parameters(), nets[1].parameters()):
        s0, s1 = opts[0].state[p0], opts[1].state[p1]
        assert s0.keys() == s1.keys() and s0["step"] == s1["step"]
        for k in ("exp_avg", "exp_avg_sq"):
            assert s0[k].shape == p0.shape
            torch.testing.assert_close(s0[k], s1[k], rtol=1e-12, atol=0)


def test_no_recompile_when_hyperparameters_change():
    nets, opts = triple("AdamW", [{}], lr=0.01, weight_decay=0.1)
    train(nets[0], opts[0], 2)
    with torch.compiler.set_stance("fail_on_recompile"):
        for i, change in enumerate([{"lr": 0.02}, {"betas": (0.8, 0.99)}, {"eps": 1e-4}, {"weight_decay": 0.3}]):
            for g in opts[0].param_groups:
                g.update(change)
            train(nets[0], opts[0], 2)
    assert opts[0]._engine.rebuilds == 1


def test_state_dict_round_trip_is_bit_exact():
    net_a = make_net(F64)
    opt_a = optimlab.Adam(net_a.parameters(), lr=0.01, compile=True, fused=False)
    train(net_a, opt_a, 5)
    net_b = copy.deepcopy(net_a)
    opt_b = optimlab.Adam(net_b.parameters(), lr=0.01, compile=True, fused=False)
    sd = copy.deepcopy(opt_a.state_dict())
    opt_b.load_state_dict(sd)
    # the state dict looks like the eager one: per-parameter tensors shaped like the parameter
    for st, p in zip(sd["state"].values(), net_a.parameters()):
        assert st["exp_avg"].shape == p.shape and st["step"] == 5
    train(net_a, opt_a, 5)
    train(net_b, opt_b, 5)
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][k], sb[i][k])
    # and into an eager optimizer (state views load like any tensors)
    net_c = copy.deepcopy(net_b)
    opt_c = optimlab.Adam(net_c.parameters(), lr=0.01)
    opt_c.load_state_dict(copy.deepcopy(opt_b.state_dict()))
    train(net_b, opt_b, 3)
    train(net_c, opt_c, 3)
    assert rel_err(net_b.parameters(), net_c.parameters()) <= 1e-12


@pytest.mark.parametrize("cls", ["LAMB", "NovoGrad"])
def test_layerwise_state_dict_round_trip_is_bit_exact(cls):
    """Layer-wise chains on the flat path (NovoGrad's per-tensor second moment a 0-d view into a
    vector): a checkpoint resumes bit-exactly, compiled or eager."""
    net_a = make_net(F64)
    opt_a = getattr(optimlab, cls)(net_a.parameters(), lr=0.01, weight_decay=0.01, compile=True)
    train(net_a, opt_a, 5)
    assert flat_buckets(opt_a)
    sd = copy.deepcopy(opt_a.state_dict())
    for st, p in zip(sd["state"].values(), net_a.parameters()):
        assert st["exp_avg"].shape == p.shape and st["step"] == 5
        assert st["exp_avg_sq"].shape == (() if cls == "NovoGrad" else p.shape)
    nets = [copy.deepcopy(net_a) for _ in range(2)]
    opts = [getattr(optimlab, cls)(n.parameters(), lr=0.01, weight_decay=0.01, compile=c)
            for n, c in zip(nets, (True, False))]
    for opt in opts:
        opt.load_state_dict(copy.deepcopy(sd))
    train(net_a, opt_a, 4)
    train(nets[0], opts[0], 4)
    train(nets[1], opts[1], 4)
    for pa, pb in zip(net_a.parameters(), nets[0].parameters()):
        assert torch.equal(pa, pb)
    assert rel_err(nets[1].parameters(), net_a.parameters()) <= 1e-12


def test_flat_layout_and_grad_semantics():
    net = make_net(F64)
    ref = copy.deepcopy(net)
    opt = optimlab.Adam(net.parameters(), lr=0.01, compile=True, fused=False)
    opt_ref = optimlab.Adam(ref.parameters(), lr=0.01)
    train(net, opt, 2)
    train(ref, opt_ref, 2)
    (b,) = flat_buckets(opt)
    params = list(net.parameters())
    storage = b.flat_param.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in params)
    assert all(p.grad is gv for p, gv in zip(params, b.grad_views))  # rebound after the copy
    assert all(opt.state[p]["exp_avg"].untyped_storage().data_ptr() == b.flat_state[0].untyped_storage().data_ptr()
               for p in params)
    opt.zero_grad()  # torch's default: None, so "no gradient -> skipped" still holds
    opt_ref.zero_grad()
    assert all(p.grad is None for p in params)
    # autograd's fresh gradients are moved into the flat buffer as they arrive (one hook each)
    x, y = net_data(F64)
    ((net(x) - y) ** 2).mean().backward()
    assert all(p.grad is gv for p, gv in zip(params, b.grad_views))
    opt.step()
    ((ref(x) - y) ** 2).mean().backward()
    opt_ref.step()
    assert all(len(p._post_accumulate_grad_hooks) == 1 for p in params)
    # set_to_none=False zeroes the flat buffer in place; backward then accumulates into it
    train(net, opt, 3, set_to_none=False)
    train(ref, opt_ref, 3, set_to_none=False)
    assert all(p.grad is gv for p, gv in zip(params, b.grad_views))
    assert opt._engine.rebuilds == 1
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12
    del b  # (a bucket's hooks live as long as the bucket)
    # a parameter replaced behind our back (model.to(), p.data = ...) rebuilds the layout
    net.fc.weight.data = net.fc.weight.data.clone()
    ref.fc.weight.data = ref.fc.weight.data.clone()
    train(net, opt, 3)
    train(ref, opt_ref, 3)
    assert opt._engine.rebuilds == 2
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12
    # the old layout's hooks went with it; load_state_dict drops the engine and its hooks too
    assert all(len(p._post_accumulate_grad_hooks) == 1 for p in params)
    opt.load_state_dict(opt.state_dict())
    gc.collect()
    assert all(not p._post_accumulate_grad_hooks for p in params)
    train(net, opt, 2)
    train(ref, opt_ref, 2)
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12


def test_chain_change_mid_run_rebuilds():
    """momentum 0 -> 0.9 switches a transform (and its state) on: same numbers as eager."""
    net, ref = make_net(F64), make_net(F64)
    opt = optimlab.SGD(net.parameters(), lr=0.05, compile=True, fused=False)
    opt_ref = optimlab.SGD(ref.parameters(), lr=0.05)
    train(net, opt, 6, change={"momentum": 0.9})
    train(ref, opt_ref, 6, change={"momentum": 0.9})
    assert flat_buckets(opt) and opt._engine.rebuilds == 2
    assert "momentum_buffer" in opt.state[net.fc.weight]
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12


def test_grad_accumulation_compiled_and_fused_flag():
    """Accumulated steps on the compiled path, and ``fused=True`` (torch's fused kernel for plain
    Adam, the flat engine where optimlab's extras are on) with the same numbers."""
    net, ref, fused, extra = make_net(F64), make_net(F64), make_net(F64), make_net(F64)
    opt = optimlab.Adam(net.parameters(), lr=0.01, compile=True, fused=False, accumulate_steps=2)
    opt_ref = optimlab.Adam(ref.parameters(), lr=0.01, accumulate_steps=2, fused=False)
    opt_fused = optimlab.Adam(fused.parameters(), lr=0.01, fused=True, accumulate_steps=2)
    opt_extra = optimlab.Adam(extra.parameters(), lr=0.01, fused=True, accumulate_steps=2, l2=1e-12)
    for n, o in ((net, opt), (ref, opt_ref), (fused, opt_fused), (extra, opt_extra)):
        train(n, o, 8)
    assert flat_buckets(opt) and flat_buckets(opt_extra) and not flat_buckets(opt_fused)
    assert rel_err(fused.parameters(), ref.parameters()) <= 1e-12
    assert rel_err(extra.parameters(), ref.parameters()) <= 1e-9
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12
    # p.grad keeps the last micro-batch's gradient, not the mean the step used
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("table", [True, False], ids=["gather-table", "segment-reduce"])
def test_layerwise_rows_and_padding(table, monkeypatch):
    """A layer-wise chain (LAMB) lays each tensor out on whole rows; the row bookkeeping counts
    every entry once, and whatever sits in the padding never enters a norm -- with per-tensor
    sums from a gather table (small buckets) or from segment_reduce (large ones)."""
    if not table:
        monkeypatch.setattr(_flat, "GATHER_EXTRA", -10**9)
    params, copies = twin_params([(7, 5), (130,), (1,), (0,), (64,), (3, 64), ()], F64)
    ours = optimlab.LAMB(params, lr=0.01, weight_decay=0.1, compile=True)
    ref = optimlab.LAMB(copies, lr=0.01, weight_decay=0.1)
    for step in range(6):
        step_twins((params, ours), (copies, ref))
        (b,) = flat_buckets(ours)
        if step == 0:
            _, _, _, (row_tensor, row_len, rows, numel, _, gather), _ = b.kernel_args
            assert rows.tolist() == [-(-max(p.numel(), 0) // _flat.ROW) for p in params] + [0]
            assert (gather is not None) == table
            if table:  # tensor i's row indices, then the index past the last row
                for i in range(len(params) + 1):
                    own = (row_tensor == i).nonzero().flatten().tolist()
                    assert gather[i].tolist() == own + [len(row_tensor)] * (gather.shape[1] - len(own))
            assert numel.tolist()[:-1] == [p.numel() for p in params]
            for i, p in enumerate(params):  # each tensor's rows hold exactly its entries
                assert int(row_len[row_tensor == i].sum()) == p.numel()
            # garbage in the padding of every flat buffer (params, grads, moments)
            pad = padding(b)
            for flat in (b.flat_param, b.flat_grad, *b.flat_state):
                flat[pad] = 1e3
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def test_failed_recompile_falls_back_to_eager(monkeypatch):
    """A kernel that compiled once but fails to recompile (new sizes) warns and goes eager."""
    net, ref = make_net(F64), make_net(F64)
    opt = optimlab.LARS(net.parameters(), lr=1.0, compile=True)
    opt_ref = optimlab.LARS(ref.parameters(), lr=1.0)
    train(net, opt, 2)
    train(ref, opt_ref, 2)
    (kernel,) = [k for k in _flat._KERNELS.values() if k.spec[0] == opt._chain(opt.param_groups[0])
                 and k.spec[-1] == F64]

    def fails(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("codegen failed"), None)

    monkeypatch.setattr(kernel, "fn", fails)
    monkeypatch.setattr(_flat, "_FAILED_CHAINS", set())
    with pytest.warns(RuntimeWarning, match="could not recompile"):
        train(net, opt, 3)
    train(ref, opt_ref, 3)
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12
    kernel.failed = None  # (the kernel cache is process-wide: leave it usable)


def test_adafactor_compiles_its_unfactored_tensors(monkeypatch):
    """Adafactor's chain is layer-wise: vectors and 0-d tensors (second moment like p) run in the
    compiled kernel, matrices (factored moments) on the eager path; together the eager numbers.
    (This net's vectors are fewer than SPLIT_MIN_NUMEL entries: the threshold is lowered.)"""
    monkeypatch.setattr(_flat, "SPLIT_MIN_NUMEL", 0)
    net, ref = make_net(F64), make_net(F64)
    opt = optimlab.Adafactor(net.parameters(), lr=0.01, weight_decay=0.1, compile=True)
    opt_ref = optimlab.Adafactor(ref.parameters(), lr=0.01, weight_decay=0.1)
    train(net, opt, 8, none_grads=True)
    train(ref, opt_ref, 8, none_grads=True)
    flat = {id(p) for b in flat_buckets(opt) for p in b.params}
    assert flat and all((id(p) in flat) == (p.ndim < 2) for p in net.parameters())
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12


def test_small_remainder_of_an_eager_group_steps_eagerly(monkeypatch, caplog):
    """compile=True: where part of a group steps eagerly anyway (Adafactor's factored matrices),
    a bucket of fewer than SPLIT_MIN_NUMEL entries joins it -- a compiled call of its own costs
    more than it saves -- and that is said once at INFO; from the threshold on it compiles.
    The numbers are the eager path's either way."""
    entries = sum(p.numel() for p in make_net(F64).parameters() if p.ndim < 2)
    for threshold, compiled in ((entries + 1, False), (entries, True)):
        monkeypatch.setattr(_flat, "SPLIT_MIN_NUMEL", threshold)
        net, ref = make_net(F64), make_net(F64)
        opt = optimlab.Adafactor(net.parameters(), lr=0.01, weight_decay=0.1, compile=True)
        opt_ref = optimlab.Adafactor(ref.parameters(), lr=0.01, weight_decay=0.1)
        caplog.clear()
        with caplog.at_level("INFO", logger="optimlab"):
            train(net, opt, 4)  # (every tensor has its gradient: one bucket of the vectors)
        train(ref, opt_ref, 4)
        said = [r.getMessage() for r in caplog.records if "step on the eager path with the rest" in r.getMessage()]
        assert bool(flat_buckets(opt)) == compiled
        assert len(said) == (0 if compiled else 1), said
        assert rel_err(net.parameters(), ref.parameters()) <= 1e-12
    # a group whose every tensor can be flattened compiles however small it is
    net = make_net(F64)
    opt = optimlab.RMSprop(net.parameters(), lr=0.01, compile=True)
    train(net, opt, 2)
    assert flat_buckets(opt)


def test_non_elementwise_chains_stay_eager():
    net = make_net(F64)
    opt = optimlab.Shampoo(net.parameters(), lr=0.01, compile=True)
    train(net, opt, 2)
    assert not flat_buckets(opt)
    assert all(p.storage_offset() == 0 for p in net.parameters())


def test_per_tensor_clipping_compiles():
    net, ref = make_net(F64), make_net(F64)
    # SGD (not Adam, which is almost invariant to rescaling a tensor's gradient); every
    # gradient norm of this net is above 0.05, so the clipping acts
    opt = optimlab.SGD(net.parameters(), lr=0.1, momentum=0.9, compile=True, clip_param_grad_norm=0.05)
    opt_ref = optimlab.SGD(ref.parameters(), lr=0.1, momentum=0.9, clip_param_grad_norm=0.05)
    train(net, opt, 6, none_grads=True)
    train(ref, opt_ref, 6, none_grads=True)
    assert flat_buckets(opt)
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12


@pytest.mark.parametrize("cls, kwargs", [
    ("AdamW", dict(lr=0.01, weight_decay=0.5)),
    ("Adam", dict(lr=0.01, weight_decay=0.5)),  # coupled L2
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.5, l1=1e-3)),
    ("SGD", dict(lr=0.05, independent_decay=0.05)),
    ("NovoGrad", dict(lr=0.01, weight_decay=0.5)),
    ("LAMB", dict(lr=0.01, weight_decay=0.5)),
], ids=["adamw", "adam-l2", "sgd-l2-l1", "sgd-independent", "novograd", "lamb"])
def test_masked_chains_compile_and_respect_the_mask(cls, kwargs):
    """decay_mask="no_bias_norm" (biases and the 0-d scale excluded): the masked transforms
    select per tensor inside the compiled kernel and give the eager numbers (which differ from
    the unmasked run's)."""
    nets = [make_net(F64) for _ in range(3)]
    masks = ("no_bias_norm", "no_bias_norm", None)
    opts = [getattr(optimlab, cls)(net.named_parameters(), compile=c, decay_mask=m, **kwargs)
            for net, c, m in zip(nets, (True, False, True), masks)]
    for net, opt in zip(nets, opts):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            train(net, opt, 6, none_grads=True)
    assert flat_buckets(opts[0])
    assert rel_err(nets[0].parameters(), nets[1].parameters()) <= 1e-12
    assert rel_err(nets[0].parameters(), nets[2].parameters()) > 1e-6  # (the mask changes the run)


@pytest.mark.parametrize("cls", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_compile_true_runs_torch_fused_kernel_where_the_chain_is_one(cls, caplog):
    """compile=True on a chain that is exactly torch's fused kernel runs that kernel (bit for
    bit torch's fused=True; no flat buffers, nothing compiled) and says so once at INFO;
    fused=False compiles the chain instead."""
    kw = dict(lr=0.01, momentum=0.9) if cls == "SGD" else dict(lr=0.01)
    params, copies = twin_params([(64, 32), (32,), (7, 3, 5)])
    ours = getattr(optimlab, cls)(params, compile=True, **kw)
    theirs = getattr(torch.optim, cls)(copies, fused=True, **kw)
    with caplog.at_level("INFO", logger="optimlab"):
        for _ in range(5):
            step_twins((params, ours), (copies, theirs))
    assert not flat_buckets(ours)
    for a, b in zip(params, copies):
        assert torch.equal(a, b)
    said = [r.getMessage() for r in caplog.records if "fused kernel" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{cls}(compile=True)")
    compiled = getattr(optimlab, cls)([torch.nn.Parameter(torch.randn(8, 8))], compile=True, fused=False, **kw)
    compiled.param_groups[0]["params"][0].grad = torch.randn(8, 8)
    compiled.step()
    assert flat_buckets(compiled)


def test_compile_true_on_a_chain_flat_buffers_cannot_hold_says_it_steps_eagerly(caplog):
    """Muon's orthogonalisation is neither elementwise nor layer-wise: compile=True compiles
    nothing there, says so once at INFO naming the transform, and steps bit for bit as
    compile=False does (the flag is not silently dropped)."""
    params, copies = twin_params([(64, 32), (16, 48)])
    ours = optimlab.Muon(params, lr=0.02, compile=True)
    eager = optimlab.Muon(copies, lr=0.02, compile=False)
    with caplog.at_level("INFO", logger="optimlab"):
        for _ in range(3):
            step_twins((params, ours), (copies, eager))
    assert not flat_buckets(ours)
    for a, b in zip(params, copies):
        assert torch.equal(a, b)
    said = [r.getMessage() for r in caplog.records if "nothing of it compiled" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("Muon(compile=True)") and said[0].endswith("not orthogonalize")


def test_float32_matches_torch_fused():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(64, 32), (32,), (7, 3, 5), ()]]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = optimlab.AdamW(params, lr=0.01, compile=True, fused=False)
    theirs = torch.optim.AdamW(copies, lr=0.01, fused=True)
    for step in range(20):
        grads = [torch.randn_like(p) for p in params]
        for ps, opt in ((params, ours), (copies, theirs)):
            opt.zero_grad()
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    assert flat_buckets(ours)
    for a, b in zip(params, copies):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_auto_mode_only_flattens_large_buckets():
    small = make_net(F64)
    opt = optimlab.Adam(small.parameters(), lr=0.01, compile=None)
    train(small, opt, 2)
    assert not flat_buckets(opt)
    assert all(p.storage_offset() == 0 for p in small.parameters())


@pytest.mark.parametrize("cls", ["RMSprop", "NAdam"])
def test_default_compiles_large_buckets_only(monkeypatch, cls):
    """With no flags (compile=None) a bucket of at least AUTO_MIN_NUMEL elements runs the
    compiled kernel -- the same trajectory as the eager chain and torch -- and a smaller one,
    here the other param group, stays eager with its parameters where they were."""
    monkeypatch.setattr(_flat, "AUTO_MIN_NUMEL", 50)
    nets = [make_net(F64) for _ in range(3)]
    def groups(net):
        big = [p for p in net.parameters() if p.numel() >= 18]
        return [{"params": big}, {"params": [p for p in net.parameters() if p.numel() < 18]}]
    assert sum(p.numel() for p in groups(nets[0])[0]["params"]) >= 50 > sum(
        p.numel() for p in groups(nets[0])[1]["params"])
    ours = getattr(optimlab, cls)(groups(nets[0]), lr=0.01)
    assert ours.compile is None
    eager = getattr(optimlab, cls)(groups(nets[1]), lr=0.01, compile=False)
    theirs = getattr(torch.optim, cls)(groups(nets[2]), lr=0.01)
    for net, opt in zip(nets, (ours, eager, theirs)):
        train(net, opt, 6)
    buckets = flat_buckets(ours)
    assert [len(b.params) for b in buckets] == [len(groups(nets[0])[0]["params"])]
    assert all(p.storage_offset() == 0 for p in groups(nets[0])[1]["params"])
    assert not flat_buckets(eager)
    assert rel_err(nets[0].parameters(), nets[1].parameters()) < 1e-12
    assert rel_err(nets[0].parameters(), nets[2].parameters()) < 1e-12


@pytest.mark.parametrize("lowp", [False, True], ids=["full-precision", "bfloat16-state"])
def test_inductor_set_up_runs_while_the_isa_probe_does(monkeypatch, lowp):
    """Inductor's one-time set-up runs before the backend waits for the ISA probe thread: its
    compiler's import, and -- for a kernel that runs Inductor's joint-graph passes (one with
    low-precision options) -- their pattern tables, with the argument Inductor itself passes,
    so Inductor finds them cached instead of building them after the wait. A full-precision
    kernel compiles without those passes (nothing in its graph for them): their tables are
    never built, and the passes never run."""
    import torch._functorch.config as functorch_config
    import torch._inductor.compile_fx as compile_fx
    import torch._inductor.config as inductor_config
    from torch._inductor.fx_passes import joint_graph

    calls, order, passes = [], [], []
    real = joint_graph.lazy_init
    monkeypatch.setattr(joint_graph, "lazy_init", lambda *a, **k: (calls.append((a, k)), real(*a, **k))[1])
    real_passes = compile_fx.joint_graph_passes
    monkeypatch.setattr(compile_fx, "joint_graph_passes", lambda *a, **k: (passes.append(1), real_passes(*a, **k))[1])
    probe = _flat._IsaProbe()
    monkeypatch.setattr(_flat, "_ISA_PROBE", probe)
    monkeypatch.setattr(_flat, "_KERNELS", {})  # a kernel compiled afresh (its backend runs)
    real_wait = probe.wait
    monkeypatch.setattr(probe, "wait", lambda: (order.append(len(calls)), real_wait())[1])
    net = make_net(torch.float32)
    options = {"state_dtype": torch.bfloat16} if lowp else {}
    # (Inductor compiles: no cached graph)
    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        train(net, optimlab.RMSprop(net.parameters(), lr=0.01, compile=True, **options), 2)
    if lowp:
        assert order == [1] and passes  # ours ran before the wait ...
        assert len(calls) >= 2 and calls[1] == calls[0]  # ... with the key Inductor then uses
    else:
        assert order == [0] and calls == [] and passes == []


def test_default_compiles_smaller_buckets_with_low_precision_state(monkeypatch):
    """compile=None: with low-precision options a bucket compiles from AUTO_MIN_NUMEL_LOWP
    elements on (the eager path's conversions cost many passes); the same bucket without them
    stays eager below AUTO_MIN_NUMEL."""
    monkeypatch.setattr(_flat, "AUTO_MIN_NUMEL_LOWP", 50)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(30, 3), (40,)]]
    plain = optimlab.Adam([p.detach().clone().requires_grad_() for p in params], lr=0.01)
    lowp = optimlab.Adam(params, lr=0.01, state_dtype=torch.bfloat16)
    eager = optimlab.Adam([p.detach().clone().requires_grad_() for p in params], lr=0.01,
                          state_dtype=torch.bfloat16, compile=False)
    for opt in (plain, lowp, eager):
        for _ in range(3):
            for p in opt.param_groups[0]["params"]:
                p.grad = torch.ones_like(p)
            opt.step()
    assert [len(b.params) for b in flat_buckets(lowp)] == [2]
    assert not flat_buckets(plain) and not flat_buckets(eager)
    for p, q in zip(params, eager.param_groups[0]["params"]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_isa_probe_runs_beside_the_first_compile_and_leaves_settings(monkeypatch):
    """Inductor's ISA probes start in a thread when the first CPU layout is built (a head start
    on the compile) and are done before Inductor runs; Inductor's settings are as they were
    after the compile (the probe's and the compile's overrides are both undone)."""
    import torch._inductor.config as inductor_config

    probe = _flat._IsaProbe()
    monkeypatch.setattr(_flat, "_ISA_PROBE", probe)
    monkeypatch.setattr(_flat, "_KERNELS", {})  # a kernel compiled afresh (its backend runs)
    waited = []
    real_wait = probe.wait
    monkeypatch.setattr(probe, "wait", lambda: (real_wait(), waited.append(probe._thread.is_alive())))
    before = (inductor_config.cpp.vec_isa_ok, inductor_config.compile_threads)
    net = make_net(torch.float32)
    train(net, optimlab.RMSprop(net.parameters(), lr=0.01, compile=True), 2)
    assert probe._thread is not None and not probe._thread.is_alive()
    assert waited == [False]  # the backend waited for it, once
    assert (inductor_config.cpp.vec_isa_ok, inductor_config.compile_threads) == before


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value is a thread's own on Linux only")
def test_isa_probes_run_at_the_lowest_priority():
    """The probe thread lowers its own priority, and the compilers it starts inherit it; the
    other threads keep theirs."""
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def probe():
        _flat._lower_priority()
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        out = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True)
        seen["child"] = int(out.stdout)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen == {"thread": 19, "child": 19}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main


_SMAPS_CHECK = """
import ctypes
import torch
from optimlab import _flat


def vma(address):
    entry = None
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            if entry is not None:
                break
            lo, hi = (int(x, 16) for x in head.split("-"))
            entry = {} if lo <= address < hi else None
        elif entry is not None:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    return entry


libc = ctypes.CDLL(None, use_errno=True).madvise
libc.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
calls = []


def madvise(start, length, advice):  # what is faulted in of the range when it is marked
    calls.append((advice, length, int(vma(start)["Rss"].split()[0]) * 1024))
    return libc(start, length, advice)


_flat._madvise = madvise
n = (40 << 20) // 4 + 5  # 40 MB of float32, and a bit: over glibc's largest mmap threshold, so fresh pages
flat = _flat._zeros(n, torch.float32, torch.device("cpu"))
assert flat.shape == (n,) and not flat.any()
(advice, length, rss), = calls
start = -(-flat.data_ptr() // (2 << 20)) * (2 << 20)
print(advice, int(rss >= length), int("hg" in vma(start)["VmFlags"].split()))
"""


@pytest.mark.skipif(not _flat.HUGE_PAGES, reason="huge pages are asked for on Linux only")
def test_flat_buffers_are_zeroed_then_marked_for_huge_pages():
    """A large CPU flat buffer is zeroed, and marked for transparent huge pages only after that
    first touch: its pages are faulted in small (a huge page's fault cost the first step ~5x
    more on a virtual machine), and khugepaged collapses them later. In a fresh process, so
    that the buffer is fresh memory, not a region an earlier test left faulted in."""
    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        pytest.skip("no transparent huge pages here")
    if "[never]" in mode:
        pytest.skip(f"transparent huge pages are off here ({mode.strip()})")
    out = subprocess.run([sys.executable, "-c", _SMAPS_CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # MADV_HUGEPAGE, on a range already faulted in whole, and it took
    assert out.stdout.split() == ["14", "1", "1"]


def test_isa_probe_starts_at_construction_where_the_first_step_compiles(monkeypatch):
    """The constructor starts the ISA probes when the first step will compile a kernel for CPU
    parameters (they then run during the first forward and backward pass): compile=True, or
    compile=None on a large enough group -- not where nothing compiles (compile=False, a small
    group, torch's fused kernel, a chain that cannot be flattened)."""
    monkeypatch.setattr(_flat, "AUTO_MIN_NUMEL", 200)
    monkeypatch.setattr(_flat, "AUTO_MIN_NUMEL_LOWP", 200)
    started = []

    class Probe:
        def start(self):
            started.append(True)

    monkeypatch.setattr(_flat, "_ISA_PROBE", Probe())

    def starts(cls, shapes, **kw):
        started.clear()
        cls([torch.nn.Parameter(torch.zeros(s)) for s in shapes], **kw)
        return bool(started)

    assert starts(optimlab.RMSprop, [(20, 20)])  # 400 >= 200 elements
    assert starts(optimlab.RMSprop, [(5,)], compile=True)
    assert starts(optimlab.Adam, [(20, 20)], state_dtype=torch.bfloat16)  # (not torch's kernel then)
    assert not starts(optimlab.RMSprop, [(10, 10)])  # small: eager
    assert not starts(optimlab.RMSprop, [(20, 20)], compile=False)
    assert not starts(optimlab.Adam, [(20, 20)])  # torch's fused kernel
    assert not starts(optimlab.Adam, [(20, 20)], compile=True)
    assert not starts(optimlab.Muon, [(20, 20)], compile=True)  # (matrix maths: not flattened)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(_flat, "_KERNELS", {})
    monkeypatch.setattr(_flat, "_BROKEN_DEVICES", {})
    monkeypatch.setattr(_flat, "_FAILED_CHAINS", set())
    monkeypatch.setattr(_flat, "_backend", broken)
    torch._dynamo.reset()
    net, ref = make_net(F64), make_net(F64)
    opt = optimlab.NAdam(net.parameters(), lr=0.01, compile=True) if hasattr(optimlab, "NAdam") else \
        optimlab.Adam(net.parameters(), lr=0.01, compile=True, fused=False)
    opt_ref = type(opt)(ref.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(net, opt, 6)
    train(ref, opt_ref, 6)
    ours = [w for w in caught if "optimlab" in str(w.message)]
    assert len(ours) == 1 and "unavailable" in str(ours[0].message)
    for pa, pb in zip(net.parameters(), ref.parameters()):
        assert torch.equal(pa, pb)  # the eager path, step for step (host-side state not advanced twice)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, s in optimlab.REGISTRY.items()
                                         if not s.sparse_gradients and not s.needs_closure))
def test_registry_compiled_matches_eager(name, monkeypatch):
    """Every registered optimizer: compiled (where its chain can run on flat buffers) == eager,
    float64, with parameters that miss their gradient on some steps. (Small remainders of a
    group that is partly eager compile here too: Adafactor's vectors.)"""
    monkeypatch.setattr(_flat, "SPLIT_MIN_NUMEL", 0)
    spec = optimlab.REGISTRY[name]
    net, ref = make_net(F64), make_net(F64)
    params = [p for p in net.parameters() if p.ndim == 2] if name == "muon" else list(net.parameters())
    ref_params = [p for p in ref.parameters() if p.ndim == 2] if name == "muon" else list(ref.parameters())
    opt = spec.cls(params, compile=True)
    if getattr(opt, "native", lambda g: None)(opt.param_groups[0]) is not None:
        opt = spec.cls(params, compile=True, fused=False)  # torch's kernel would run: compile the chain
    opt_ref = spec.cls(ref_params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed compilation warns: fail instead
        train(net, opt, 12, none_grads=True)
    train(ref, opt_ref, 12, none_grads=True)
    assert rel_err(net.parameters(), ref.parameters()) <= 1e-12
    inner = getattr(opt, "optimizer", opt)  # (Lookahead: the optimizer it wraps)
    if _flat._chain_ok(inner._chain(inner.param_groups[0])) and inner.native(inner.param_groups[0]) is None:
        assert flat_buckets(inner), f"{name}: its chain can run on flat buffers, but was not compiled"


def test_compilation_is_said_once_at_info():
    """The first step that compiles says what it compiled and how long it took (INFO, logger
    "optimlab"), once per kernel: a fresh process, so the process-wide kernel cache is empty."""
    import subprocess
    import sys

    code = (
        "import logging, torch, optimlab\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "w = torch.nn.Parameter(torch.ones(64))\n"
        "opt = optimlab.Lion([w], lr=0.01, compile=True)\n"
        "for _ in range(3):\n"
        "    w.grad = torch.ones(64)\n"
        "    opt.step()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stderr.splitlines() if line.startswith("optimlab compiled the step")]
    assert len(said) == 1, out.stderr
    assert "cpu torch.float32 in" in said[0] and said[0].endswith(" s (tracing, Inductor, first run)")


@pytest.mark.parametrize("transient", [False, True], ids=["kept-buffer", "per-step-buffer"])
@pytest.mark.parametrize("cls", ["Lion", "LAMB"])
def test_gradients_that_are_views_of_another_buffer_stay_there(monkeypatch, cls, transient):
    """Gradients that are views of one larger buffer -- as DDP(gradient_as_bucket_view=True)
    leaves them after every backward -- are copied into the kernel's flat buffer, never rebound
    (DDP would copy them back into its bucket on the next backward, and both buffers would be
    held). With ``TRANSIENT_GRADS_ON_CPU`` (the rule on accelerators) that buffer exists only
    during the step. Same numbers as the eager path, with an elementwise and a layer-wise chain."""
    monkeypatch.setattr(_flat, "TRANSIENT_GRADS_ON_CPU", transient)
    nets = [make_net(F64) for _ in range(2)]
    compiled = getattr(optimlab, cls)(nets[0].parameters(), lr=1e-2, compile=True)
    eager = getattr(optimlab, cls)(nets[1].parameters(), lr=1e-2)
    params = list(nets[0].parameters())
    bucket = torch.zeros(sum(p.numel() for p in params) + 7, dtype=F64)  # "DDP's" buffer
    views, off = [], 3
    for p in params:
        views.append(bucket[off: off + p.numel()].view(p.shape))
        off += p.numel()
    x, y = net_data(F64)
    for _ in range(6):
        for net, opt in zip(nets, (compiled, eager)):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
        for p, v in zip(params, views):  # as DDP does: the (reduced) gradient into its bucket
            v.copy_(p.grad)
            p.grad = v
        compiled.step()
        eager.step()
        assert all(p.grad is v for p, v in zip(params, views))
    assert rel_err(nets[0].parameters(), nets[1].parameters()) <= 1e-12
    buckets = flat_buckets(compiled)
    assert buckets and all(not b.own_grads for b in buckets)
    assert all((b.flat_grad is None) == transient for b in buckets)


@pytest.mark.parametrize("cls", ["Lion", "LAMB"])
def test_transient_gradient_buffer_lives_from_backward_to_zero_grad(monkeypatch, cls):
    """With ``TRANSIENT_GRADS_ON_CPU`` (the rule on accelerators) the flat gradient buffer is held
    as torch holds gradients: made when the first gradient of a backward pass arrives, dropped
    by ``zero_grad()`` -- not through the forward pass. Same numbers as the eager path, with
    parameters that miss their gradient on some steps."""
    monkeypatch.setattr(_flat, "TRANSIENT_GRADS_ON_CPU", True)
    nets = [make_net(F64) for _ in range(2)]
    compiled = getattr(optimlab, cls)(nets[0].parameters(), lr=1e-2, compile=True)
    eager = getattr(optimlab, cls)(nets[1].parameters(), lr=1e-2)
    x, y = net_data(F64)
    for step in range(8):
        for net, opt in zip(nets, (compiled, eager)):
            opt.zero_grad()
            if opt is compiled:
                assert all(b.flat_grad is None for b in flat_buckets(opt))
            ((net(x) - y) ** 2).mean().backward()
            if step % 3 == 1:
                net.fc.bias.grad = None
            opt.step()
        buckets = flat_buckets(compiled)
        assert buckets and all(b.own_grads and b.transient for b in buckets)
        flat = {b.flat_grad.untyped_storage().data_ptr() for b in buckets if b.flat_grad is not None}
        assert all(p.grad.untyped_storage().data_ptr() in flat for p in nets[0].parameters() if p.grad is not None)
    assert rel_err(nets[0].parameters(), nets[1].parameters()) <= 1e-12


@pytest.mark.parametrize("cls", ["ASGD", "NAdam"])
def test_bucket_counters_are_one_vector_and_follow_the_state(cls):
    """A bucket's per-parameter 0-d counters (step, and host state: ASGD's eta and mu, NAdam's
    mu_product) become views of one vector each, written with one fill a step -- the same
    numbers as the eager path; a counter rebound by the user is seen (the layout is rebuilt and
    the new value used), and a state_dict through disk resumes the same trajectory."""
    import io

    def run(compile, rebind_at=None, reload_at=None, steps=8):
        net = make_net(F64)
        opt = getattr(optimlab, cls)(net.parameters(), lr=0.01, compile=compile)
        for k in range(steps):
            if k == rebind_at:
                p = list(net.parameters())[-1]  # (not the first: only the identity check sees it)
                opt.state[p]["step"] = torch.tensor(float(opt.state[p]["step"]))
            if k == reload_at:
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                opt = getattr(optimlab, cls)(net.parameters(), lr=0.01, compile=compile)
                opt.load_state_dict(torch.load(buf, weights_only=True))
            train(net, opt, 1)
        return net, opt

    eager_net, _ = run(False)
    net, opt = run(True)
    (b,) = flat_buckets(opt)
    host = {"ASGD": {"step", "eta", "mu"}, "NAdam": {"step", "mu_product"}}[cls]
    assert set(b.counters) == host
    for k in host:
        assert all(opt.state[p][k]._base is b.counters[k] for p in b.params)
    assert rel_err(net.parameters(), eager_net.parameters()) < 1e-12
    net2, opt2 = run(True, rebind_at=4)
    assert opt2._engine.rebuilds == opt._engine.rebuilds + 1  # the rebound count was seen ...
    assert all(int(st["step"]) == 8 for st in opt2.state.values())  # ... and counts on
    assert rel_err(net2.parameters(), eager_net.parameters()) < 1e-12
    net3, _ = run(True, reload_at=4)
    assert rel_err(net3.parameters(), eager_net.parameters()) < 1e-12
