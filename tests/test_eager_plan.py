"""The eager step's remembered bucket (``ChainOptimizer._planned``): a group that steps as it did
last time skips the per-parameter gathering. Every event that changes what the step must see --
a parameter without a gradient, a new learning rate, a loaded or edited state, a replaced
parameter, cleared state, a hyperparameter that changes the chain -- must give the numbers the
full path gives: torch.optim's, and those of the same optimizer with the plan switched off.
"""

from __future__ import annotations

import copy

import pytest
import torch

import optimlab
from optimlab.core import ChainOptimizer

SHAPES = [(6, 5), (5,), (4, 6), (4,)]
ALGOS = {  # name -> constructor kwargs (both sides)
    "RMSprop": {"lr": 1e-2},
    "NAdam": {"lr": 1e-2},  # host state (mu_product)
    "ASGD": {"lr": 1e-2, "t0": 2.0},  # host state (eta, mu), averaging after step 2
    "Adamax": {"lr": 1e-2},
    "Adadelta": {"lr": 0.5},
    "RAdam": {"lr": 1e-2},
    "Rprop": {"lr": 1e-2},
    "Muon": {"lr": 1e-2},  # step counts kept by the optimizer (torch keeps none)
    "SGD": {"lr": 1e-2, "momentum": 0.9},  # torch's kernel (its own fast path), counts kept by us
}


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]


def _grads(params, k, skip=()):
    g = torch.Generator().manual_seed(100 + k)
    for i, p in enumerate(params):
        p.grad = None if i in skip else torch.randn(p.shape, generator=g, dtype=p.dtype)


def _events(opt, params, k):
    """What happens to an optimizer before step ``k`` (the same for torch's and ours). Step 3
    leaves the second parameter without a gradient, so its count falls one behind (two buckets)
    until step 5 sets every count alike; steps 6-7 and 15-17 change nothing the plan keeps."""
    counted = "step" in opt.state[params[0]]
    if k in (5, 8) and counted:  # state edited between steps (at 8 while a plan is in use)
        for p in params:
            opt.state[p]["step"].fill_(20.0 if k == 5 else 30.0)
    if k == 6:
        opt.param_groups[0]["lr"] *= 0.5  # a scheduler's new value
    if k == 10:
        opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    if k == 12:  # a parameter replaced in place in the group's list (its state starts afresh)
        new = torch.nn.Parameter(params[-1].detach().clone() * 0.9)
        params[-1] = new
        opt.param_groups[0]["params"][-1] = new
    if k == 14:
        opt.state.clear()


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_plan_matches_torch_across_events(name, monkeypatch):
    shapes = [s for s in SHAPES if len(s) == 2] if name == "Muon" else SHAPES
    ours_p, torch_p = _params(shapes), _params(shapes)
    ours = getattr(optimlab, name)(ours_p, compile=False, **ALGOS[name])
    ref = getattr(torch.optim, name)(torch_p, **ALGOS[name])
    gathered = set()
    real = ChainOptimizer._gather
    k = 0
    monkeypatch.setattr(ChainOptimizer, "_gather", lambda self, group: gathered.add(k) or real(self, group))
    for k in range(18):
        skip = (1,) if k == 3 else ()
        for opt, params in ((ours, ours_p), (ref, torch_p)):
            _events(opt, params, k)
            _grads(params, k, skip)
            opt.step()
        for a, b in zip(ours_p, torch_p):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{name} step {k}")
    # the plan was used where nothing it keeps changed (and not where something did)
    # (NAdam's and ASGD's host state still differs after step 5, Muon and SGD keep no "step": these
    # stay in two buckets until step 14)
    planned = {1, 2, 15, 16, 17} | (set() if name in ("Muon", "SGD", "NAdam", "ASGD") else {6, 7})
    assert not planned & gathered, sorted(gathered)
    assert {0, 10, 12, 14} <= gathered, sorted(gathered)


@pytest.mark.parametrize("switch", ["momentum", "centered"])
def test_plan_follows_a_chain_change(switch, monkeypatch):
    """RMSprop's momentum (or centering) switched on between steps adds a transform and its
    state: the plan must not step the old chain."""
    runs = []
    for planned in (True, False):
        if not planned:
            monkeypatch.setattr(ChainOptimizer, "_planned", lambda self, group: None)
        params = _params(SHAPES)
        opt = optimlab.RMSprop(params, lr=1e-2, compile=False)
        for k in range(8):
            if k == 4:
                opt.param_groups[0][switch] = 0.9 if switch == "momentum" else True
            _grads(params, k)
            opt.step()
        runs.append((params, opt.state[params[0]].keys()))
    (a, keys_a), (b, keys_b) = runs
    assert ("momentum_buffer" if switch == "momentum" else "grad_avg") in keys_a
    assert keys_a == keys_b
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_chain_follows_a_list_value_edited_in_place():
    """The group's chain is remembered while its values stay the same objects; a list value is
    compared by its contents, so editing it in place (Adafactor's eps[0]: None picks the dtype's
    epsilon) rebuilds the chain -- and the steps match a fresh optimizer built with the new value."""
    params, fresh = _params([(6, 5), (5,)]), _params([(6, 5), (5,)])
    opt = optimlab.Adafactor(params, lr=1e-2, eps=[None, 1e-3])
    for k in range(3):
        _grads(params, k)
        opt.step()
    group = opt.param_groups[0]
    assert opt._chain(group) is opt._chain(group)  # remembered
    assert opt._chain(group)[0].dtype_eps
    group["eps"][0] = 10.0  # a floor above every sqrt(V): the update shrinks
    assert not opt._chain(group)[0].dtype_eps
    ref = optimlab.Adafactor(fresh, lr=1e-2, eps=[None, 1e-3])
    for k in range(3):
        _grads(fresh, k)
        ref.step()
    ref.param_groups[0]["eps"] = [10.0, 1e-3]
    unedited = [p.detach().clone() for p in _params([(6, 5), (5,)])]
    stale = optimlab.Adafactor(unedited, lr=1e-2, eps=[None, 1e-3])
    for k in range(5):
        _grads(unedited, k)
        stale.step()
    for k in range(3, 5):
        _grads(params, k)
        _grads(fresh, k)
        opt.step()
        ref.step()
    for x, y, z in zip(params, fresh, unedited):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
        assert not torch.allclose(x, z)  # (the edit changes the numbers: the old chain would not)


def test_plan_serves_the_part_a_compiled_group_leaves_eager(monkeypatch):
    """With compile=True, Adafactor's matrices (factored state) stay on the eager path while its
    vectors run in the compiled kernel: the eager part is the same sub-group every step, so it
    is planned too -- and the trajectory is the all-eager one (and torch's)."""
    shapes = [(6, 5), (5,), (4, 6), (4,)]
    a, b, c = _params(shapes), _params(shapes), _params(shapes)
    ours = optimlab.Adafactor(a, lr=1e-2, compile=True)
    eager = optimlab.Adafactor(b, lr=1e-2, compile=False)
    ref = torch.optim.Adafactor(c, lr=1e-2)
    gathered = []
    real = ChainOptimizer._gather
    monkeypatch.setattr(ChainOptimizer, "_gather", lambda self, group: gathered.append(self is ours) or real(self, group))
    for k in range(8):
        for opt, params in ((ours, a), (eager, b), (ref, c)):
            if k == 5:
                opt.param_groups[0]["lr"] *= 0.5
            _grads(params, k)
            opt.step()
        if k == 2:
            gathered.clear()
    assert ours._engine is not None and ours._engine.rebuilds >= 1  # the vectors were compiled
    assert not any(gathered), "the eager part was gathered again after the first steps"
    for x, y, z in zip(a, b, c):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(x, z, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["Adafactor", "LAMB", "LARS", "NovoGrad", "Prodigy"])
def test_per_tensor_chains_step_in_whole_tensors(name, monkeypatch):
    """A large bucket of a chain whose transforms are elementwise or ``per_tensor`` (Adafactor's
    factored moments and clipping, LAMB's and LARS's trust ratios, NovoGrad's norms) steps a few
    whole tensors at a time -- each piece's passes in cache -- with the numbers of the same
    chain stepped at once, bit for bit; a chain with cross-tensor sums (Prodigy's) steps at once."""
    from optimlab import core

    cls = getattr(optimlab, name)
    shapes = [(20, 10), (10,), (30, 20), (30,), (8, 30), (8,), ()]
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(4)]
    runs, calls = [], []
    real = core.run_chain
    for piece in (1 << 18, 64):
        monkeypatch.setattr(core, "PIECE", piece)
        monkeypatch.setattr(core, "run_chain", lambda *a, **k: (calls.append(piece), real(*a, **k))[1])
        params = [torch.nn.Parameter(x.clone()) for x in start]
        opt = cls(params, compile=False)
        for step in grads:
            for p, gr in zip(params, step):
                p.grad = gr.clone()
            opt.step()
        runs.append([p.detach() for p in params])
    chunked = calls.count(64) > calls.count(1 << 18)
    assert chunked == (name != "Prodigy")
    for a, b in zip(*runs):
        assert torch.equal(a, b)
