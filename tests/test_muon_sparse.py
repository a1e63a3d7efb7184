"""Muon (2-D parameters only) and SparseAdam (sparse gradients only): what the shared torch
table (tests/cases/matrix.py) does not cover -- Newton-Schulz itself, the errors for parameters
and gradients they cannot take, SparseAdam's convergence, bit-exact state_dict round trips."""

from __future__ import annotations

import io

import pytest
import torch

import optimlab
from cases.matrix import TORCH_CASES
from optimlab.transforms import newton_schulz
from problems import loss_fns, make_model, make_net


# --- Muon's matrices --------------------------------------------------------------------------
def test_newton_schulz_is_torchs_and_orthogonalises():
    from torch.optim._muon import _zeropower_via_newtonschulz as theirs

    g = torch.Generator().manual_seed(0)
    for shape in [(5, 3), (3, 5), (4, 4), (64, 32)]:
        G = torch.randn(shape, generator=g, dtype=torch.float64)
        X = newton_schulz(G, 5, (3.4445, -4.7750, 2.0315), 1e-7)
        assert X.dtype == torch.bfloat16 and X.shape == G.shape
        assert torch.equal(X, theirs(G, (3.4445, -4.7750, 2.0315), 5, 1e-7))
        sv = torch.linalg.svdvals(X.double())
        assert sv.min() > 0.5 and sv.max() < 1.5, sv
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz(torch.ones(2, 2, 2))


def _step_both(runs, grads) -> None:
    """Give each ``(params, optimizer)`` of ``runs`` copies of ``grads`` and step it."""
    for params, opt in runs:
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        opt.step()


def _naive_muon_direction(buf, grad):
    """torch's Muon for one matrix, written out: the momentum buffer's lerp (momentum 0.95,
    in place), then the Newton-Schulz of the Nesterov blend (bfloat16)."""
    buf.lerp_(grad, 0.05)
    return newton_schulz(grad.lerp(buf, 0.95), 5, (3.4445, -4.7750, 2.0315), 1e-7)


@pytest.mark.parametrize("read_after", [False, True], ids=["applied-one-at-a-time", "read-by-a-later-transform"])
def test_deferred_orthogonal_updates(read_after):
    """Muon's updates are made one matrix at a time as the step applies them (Updates.defer):
    that is torch's Muon bit for bit; a later transform that reads the updates gets them all at
    once, each in the parameter's dtype and scaled by its shape's factor (a naive reference)."""
    from optimlab.transforms import clip_by_value, ema_momentum, orthogonalize

    g = torch.Generator().manual_seed(1)
    shapes = [(12, 5), (5, 12), (7, 7)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    ours = [torch.nn.Parameter(x.clone()) for x in start]
    chain = [ema_momentum(nesterov=True), orthogonalize(adjust_lr_fn="match_rms_adamw")]
    hyper = dict(lr=0.02, momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7,
                 ns_steps=5, adjust_lr_fn="match_rms_adamw")
    if read_after:
        chain.append(clip_by_value())
        hyper["clip_grad_value"] = 1e9
    opt = optimlab.ChainOptimizer(ours, chain, hyper)
    ref = [x.clone() for x in start]
    bufs = [torch.zeros_like(x) for x in start]
    theirs = [torch.nn.Parameter(x.clone()) for x in start]
    torch_opt = torch.optim.Muon(theirs, lr=0.02, momentum=0.95, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    for step in grads:
        _step_both(((ours, opt), (theirs, torch_opt)), step)
        for x, b, gr in zip(ref, bufs, step):
            o = _naive_muon_direction(b, gr)
            ratio = 0.2 * max(x.shape) ** 0.5
            x.add_(o.float() * ratio, alpha=-0.02)
    for a, b, c in zip(ours, theirs, ref):
        if read_after:
            assert torch.equal(a.detach(), c)
        else:
            assert torch.equal(a.detach(), b.detach())
            torch.testing.assert_close(a.detach(), c, rtol=1e-6, atol=1e-7)


def test_muon_rejects_non_matrices_like_torch():
    net = make_net()
    with pytest.raises(ValueError, match="2D parameters"):
        torch.optim.Muon(net.parameters())
    with pytest.raises(ValueError, match=r"2D parameters.*size: torch.Size\(\[\]\).*AdamW"):
        optimlab.Muon(net.parameters())
    opt = optimlab.Muon([net.fc.weight])
    with pytest.raises(ValueError, match="2D parameters"):
        opt.add_param_group({"params": [net.fc.bias]})
    assert len(opt.param_groups) == 1


# --- sparse gradients -------------------------------------------------------------------------
def _sparse_grad_param():
    emb = torch.nn.Embedding(6, 2, sparse=True)
    emb(torch.tensor([1, 3])).sum().backward()
    return emb.weight


@pytest.mark.parametrize("name", ["Adam", "Adafactor"])
def test_sparse_gradients_point_to_sparse_adam(name):
    opt = getattr(optimlab, name)([_sparse_grad_param()], lr=0.1)
    with pytest.raises(RuntimeError, match="sparse gradients.*SparseAdam"):
        opt.step()


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                         ("Adagrad", dict(lr=0.1, lr_decay=0.01))])
def test_sparse_gradients_like_torch(name, kwargs):
    """torch's SGD and Adagrad take sparse gradients (uncoalesced ones too): same numbers."""
    ours, ref = (torch.nn.Parameter(torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64)) for _ in range(2))
    opt, opt_ref = getattr(optimlab, name)([ours], **kwargs), getattr(torch.optim, name)([ref], **kwargs)
    for i in range(6):
        idx = torch.tensor([[i % 3, i % 3, (i + 1) % 3]])  # a repeated index: uncoalesced
        vals = torch.tensor([0.25 * (i + 1), 0.5, -0.75 * i], dtype=torch.float64)
        for p, o in ((ours, opt), (ref, opt_ref)):
            p.grad = torch.sparse_coo_tensor(idx, vals, (3,))
            o.step()
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_adagrad_sparse_gradients_refuse_weight_decay_like_torch():
    p = torch.nn.Parameter(torch.ones(3))
    opt = optimlab.Adagrad([p], weight_decay=0.1)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([1.0]), (3,))
    with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
        opt.step()


def test_muon_sparse_gradient_error():
    opt = optimlab.Muon([_sparse_grad_param()], lr=0.1)
    with pytest.raises(RuntimeError, match="sparse gradients.*SparseAdam"):
        opt.step()


def test_sparse_adam_rejects_dense_gradients_and_options():
    w = torch.nn.Parameter(torch.ones(3, 2))
    w.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="dense gradients.*Adam"):
        optimlab.SparseAdam([w]).step()
    with pytest.raises(ValueError, match="skip_nonfinite"):
        optimlab.SparseAdam([w], skip_nonfinite=True)
    with pytest.raises(ValueError, match="does not support complex parameters"):
        optimlab.SparseAdam([torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))])


def test_sparse_adam_converges_on_embeddings():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 4, sparse=True, dtype=torch.float64)
    target = torch.randn(20, 4, dtype=torch.float64)
    opt = optimlab.SparseAdam(emb.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(600):
        i = torch.randint(0, 20, (10,), generator=g)
        opt.zero_grad()
        ((emb(i) - target[i]) ** 2).sum().backward()
        opt.step()
    err = (emb.weight - target).norm() / target.norm()
    assert err <= 1e-3, f"relative distance to the targets {err:.3g}"


# --- state_dict ----------------------------------------------------------------------------------
ROUND_TRIP = [c for c in TORCH_CASES if c.name in ("muon-default", "sparse-adam-default")]


@pytest.mark.parametrize("case", ROUND_TRIP, ids=str)
def test_state_dict_round_trip_is_bit_exact(case):
    nets = [make_model(case.model, torch.float64) for _ in range(2)]
    losses = loss_fns(case.model, torch.float64, 30)
    opt = getattr(optimlab, case.ours)(nets[0].parameters(), **case.kwargs)

    def train(net, opt, fns):
        for loss in fns:
            opt.zero_grad()
            loss(net).backward()
            opt.step()

    train(nets[0], opt, losses[:15])
    buf = io.BytesIO()
    torch.save({"model": nets[0].state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    nets[1].load_state_dict(ckpt["model"])
    opt2 = getattr(optimlab, case.ours)(nets[1].parameters(), **case.kwargs)
    opt2.load_state_dict(ckpt["opt"])
    train(nets[0], opt, losses[15:])
    train(nets[1], opt2, losses[15:])
    for a, b in zip(*(n.parameters() for n in nets)):
        assert torch.equal(a, b), f"{case.name}: resumed run differs from the uninterrupted one"


@pytest.mark.parametrize("extra", ["none", "independent_decay", "decoupled_decay"])
def test_muon_decay_is_applied_as_torch_orders_it(extra):
    """Muon's momentum, decay and update are made per matrix just before it is applied (the
    buffer's lerp in the deferred update, ``p * (1 - lr wd)`` right before ``p += ...``):
    torch's Muon bit for bit. A decay that another transform
    follows is applied to every matrix before that transform runs: a second multiplicative
    decay, or AdamW-style decoupled decay (which reads the decayed weights), bit for bit the
    naive per-tensor reference."""
    g = torch.Generator().manual_seed(2)
    shapes = [(12, 5), (5, 12), (7, 7), (20, 9)]
    start = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]
    options = {"none": {}, "independent_decay": {"independent_decay": 0.01}, "decoupled_decay": {"decoupled_decay": 0.2}}[extra]
    ours = [torch.nn.Parameter(x.clone()) for x in start]
    theirs = [torch.nn.Parameter(x.clone()) for x in start]
    opt = optimlab.Muon(ours, lr=0.02, weight_decay=0.1, **options)
    torch_opt = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1)
    ref, bufs = [x.clone() for x in start], [torch.zeros_like(x) for x in start]
    for step in grads:
        _step_both(((ours, opt), (theirs, torch_opt)), step)
        for x, b, gr in zip(ref, bufs, step):
            o = _naive_muon_direction(b, gr)
            ratio = max(1.0, x.shape[0] / x.shape[1]) ** 0.5
            x.mul_(1 - 0.02 * 0.1)
            if extra == "independent_decay":
                x.mul_(1 - 0.01)
            if extra == "decoupled_decay":  # the update is o * ratio + wd * p, in float32
                x.add_((o.float() * ratio).add_(x, alpha=0.2), alpha=-0.02)
            else:
                x.add_(o, alpha=-0.02 * ratio)
    for a, b, c in zip(ours, theirs, ref):
        if extra == "none":
            assert torch.equal(a.detach(), b.detach())
        assert torch.equal(a.detach(), c)
