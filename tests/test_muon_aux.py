"""MuonAdam (Muon for hidden matrices + auxiliary AdamW) against optimlab.Muon and optimlab.AdamW
run separately on the same split (both verified against torch.optim in the shared table), the
automatic split, conv kernels, state_dict round trips and LR schedulers."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import optimlab


class LM(nn.Module):
    """Embedding -> two hidden linear layers with biases -> a layer norm -> output head."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.embed = nn.Embedding(11, 6, dtype=dtype)
        self.fc1 = nn.Linear(6, 8, dtype=dtype)
        self.fc2 = nn.Linear(8, 5, dtype=dtype)
        self.norm = nn.LayerNorm(5, dtype=dtype)
        self.head = nn.Linear(5, 11, dtype=dtype)

    def forward(self, i):
        h = torch.tanh(self.fc1(self.embed(i)))
        return self.head(self.norm(torch.tanh(self.fc2(h))))


def make_lm(seed=0):
    torch.manual_seed(seed)
    return LM()


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 11, (16,), generator=g), torch.randint(0, 11, (16,), generator=g)) for _ in range(n)]


def loss_of(model, batch):
    i, y = batch
    return nn.functional.cross_entropy(model(i), y)


HIDDEN = ("fc1.weight", "fc2.weight")
MUON = dict(lr=0.02, momentum=0.9, weight_decay=0.1)
ADAM = dict(adam_lr=3e-3, adam_betas=(0.8, 0.99), adam_eps=1e-8, adam_weight_decay=0.05)


def _separate(model):
    """optimlab.Muon on the hidden matrices, optimlab.AdamW on the rest (its chain, ``fused=False``:
    MuonAdam's auxiliary AdamW is that chain, so the two agree bit for bit)."""
    named = dict(model.named_parameters())
    muon = optimlab.Muon([named[n] for n in HIDDEN], **MUON)
    adamw = optimlab.AdamW([p for n, p in named.items() if n not in HIDDEN], lr=ADAM["adam_lr"],
                           betas=ADAM["adam_betas"], eps=ADAM["adam_eps"], weight_decay=ADAM["adam_weight_decay"],
                           fused=False)
    return muon, adamw


def test_automatic_split_by_shape_and_name():
    model = make_lm()
    opt = optimlab.MuonAdam(model.named_parameters(), **MUON, **ADAM)
    muon, adam = opt.param_groups
    assert muon["use_muon"] is True and tuple(muon["param_names"]) == HIDDEN
    assert adam["use_muon"] is False
    assert adam["param_names"] == ["embed.weight", "fc1.bias", "fc2.bias", "norm.weight", "norm.bias",
                                   "head.weight", "head.bias"]
    assert (adam["lr"], adam["betas"], adam["eps"], adam["weight_decay"]) == (3e-3, (0.8, 0.99), 1e-8, 0.05)
    assert (muon["lr"], muon["momentum"], muon["weight_decay"]) == (0.02, 0.9, 0.1)
    # without names only the shape is known: every matrix goes to Muon
    unnamed = optimlab.MuonAdam(model.parameters())
    assert [len(g["params"]) for g in unnamed.param_groups] == [4, 5]
    # adam_names=None: by shape only, even with names
    assert len(optimlab.MuonAdam(model.named_parameters(), adam_names=None).param_groups[0]["params"]) == 4


@pytest.mark.parametrize("named", [True, False])
def test_matches_muon_and_adamw_run_separately(named):
    ours_model, ref_model = make_lm(), make_lm()
    if named:
        opt = optimlab.MuonAdam(ours_model.named_parameters(), **MUON, **ADAM)
    else:  # explicit groups with the flag
        params = dict(ours_model.named_parameters())
        opt = optimlab.MuonAdam([{"params": [params[n] for n in HIDDEN]},
                                 {"params": [p for n, p in params.items() if n not in HIDDEN], "use_muon": False}],
                                **MUON, **ADAM)
    refs = _separate(ref_model)
    for step, batch in enumerate(batches(30)):
        if step == 15:  # a mid-run change, made on both
            for g in opt.param_groups:
                g["lr"] *= 0.5
                if g["use_muon"]:
                    g["momentum"] = 0.95
            for r in refs:
                for g in r.param_groups:
                    g["lr"] *= 0.5
            refs[0].param_groups[0]["momentum"] = 0.95
        for model, opts in ((ours_model, [opt]), (ref_model, refs)):
            for o in opts:
                o.zero_grad()
            loss_of(model, batch).backward()
            for o in opts:
                o.step()
        for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
            assert torch.equal(a, b), f"{name} differs at step {step + 1}"


def test_conv_kernels_are_orthogonalised_as_matrices():
    """A (4, 2, 3, 3) kernel moves as optimlab.Muon moves its (4, 18) matrix."""
    torch.manual_seed(0)
    k = nn.Parameter(torch.randn(4, 2, 3, 3, dtype=torch.float64))
    m = nn.Parameter(k.detach().reshape(4, 18).clone())
    ours, ref = optimlab.MuonAdam([k], lr=0.05), optimlab.Muon([m], lr=0.05, weight_decay=0.0, momentum=0.95)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        grad = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
        k.grad, m.grad = grad, grad.reshape(4, 18).clone()
        ours.step()
        ref.step()
        assert torch.equal(k.detach().reshape(4, 18), m.detach())


def test_flags_and_errors():
    model = make_lm()
    with pytest.raises(ValueError, match=r"ndim >= 2.*\(8,\).*use_muon=False"):
        optimlab.MuonAdam([{"params": [model.fc1.bias], "use_muon": True}])
    opt = optimlab.MuonAdam([model.fc1.weight])
    opt.add_param_group({"params": [model.fc2.weight, model.fc2.bias], "lr": 0.01})  # split: 2 groups
    assert [(g["use_muon"], g["lr"]) for g in opt.param_groups] == [(True, 0.02), (True, 0.01), (False, 0.01)]
    with pytest.raises(ValueError, match="adam_betas"):
        optimlab.MuonAdam(model.parameters(), adam_betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty"):
        optimlab.MuonAdam([])


def test_state_dict_round_trip_and_scheduler():
    model, other = make_lm(), make_lm(seed=3)
    opt = optimlab.MuonAdam(model.named_parameters(), **MUON, **ADAM)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    data = batches(20)

    def train(model, opt, sched, part):
        for batch in part:
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
            sched.step()

    train(model, opt, sched, data[:9])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02 / 4, 3e-3 / 4])  # both kinds scaled
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    other.load_state_dict(ckpt["model"])
    opt2 = optimlab.MuonAdam(other.named_parameters(), **MUON, **ADAM)
    opt2.load_state_dict(ckpt["opt"])
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=4, gamma=0.5)
    sched2.load_state_dict(ckpt["sched"])
    train(model, opt, sched, data[9:])
    train(other, opt2, sched2, data[9:])
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_trains_a_small_model():
    model = make_lm()
    opt = optimlab.MuonAdam(model.named_parameters(), adam_lr=3e-3)
    data = batches(1)[0]
    first = loss_of(model, data).item()
    for _ in range(100):
        opt.zero_grad()
        loss = loss_of(model, data)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
