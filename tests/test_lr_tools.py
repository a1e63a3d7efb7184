"""The LR finder (range test) and the LR sensitivity sweep: exact restore of model and optimizer,
early stop on divergence, the suggestion rules on synthetic curves, every registry optimizer,
the suggestion checked against a sweep on real tasks, and the CLI."""

from __future__ import annotations

import copy
import io
import json
import math
import os

import numpy as np
import pytest
import torch

import optimlab
from optimlab.cli import main
from optimlab.lab import RunSpec, load_records, run_one
from optimlab.lab.sweep import log_grid, lr_find_task, lr_sweep, name_regions
from optimlab.lr_finder import (RULES, bounded_steepest, find_lr, lr_schedule, min_over_10, smooth_losses, steepest,
                                suggest, valley)
from problems import make_model, make_net, net_data


@pytest.fixture(autouse=True)
def one_thread():
    """Two shared cores: one thread per process keeps the sweeps' worker pool from oversubscribing."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _same(a, b) -> bool:
    """Bit-for-bit equality of nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _snapshot(model, opt):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()], torch.get_rng_state(),
            model.training)


def _assert_restored(before, model, opt):
    msd, osd, grads, rng, training = before
    assert _same(model.state_dict(), msd), "model parameters/buffers changed"
    assert _same(opt.state_dict(), osd), "optimizer state or param groups changed"
    assert _same([None if p.grad is None else p.grad for p in model.parameters()], grads), "gradients changed"
    assert torch.equal(torch.get_rng_state(), rng), "torch's RNG state changed"
    assert model.training == training


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _trained_net_and_adam():
    """TinyNet and an Adam with non-empty state, two param groups and gradients left over."""
    net = make_net()
    x, y = net_data(n=64)
    params = list(net.parameters())
    opt = optimlab.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 3e-3}], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        _mse(net(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    _mse(net(x), y).backward()
    return net, opt, (x, y)


# --- restore -------------------------------------------------------------------------------------------
def test_finder_restores_model_and_optimizer_bit_identically():
    net, opt, data = _trained_net_and_adam()
    net.eval()
    twin_net, twin_opt = copy.deepcopy((net, opt))  # together, so the twin optimizer holds the twin's parameters
    before = _snapshot(net, opt)
    res = find_lr(net, opt, _mse, data, steps=40, batch_size=16, end=10)
    assert len(res.lrs) > 5 and res.suggested_lr is not None
    _assert_restored(before, net, opt)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 3e-3]
    # the optimizer behaves as if the finder never ran: the next steps match a twin's bit for bit
    x, y = data
    for n, o in ((net, opt), (twin_net, twin_opt)):
        for _ in range(2):
            o.zero_grad()
            _mse(n(x), y).backward()
            o.step()
    assert _same(net.state_dict(), twin_net.state_dict()) and _same(opt.state_dict(), twin_opt.state_dict())


def test_finder_restores_when_the_loss_raises_mid_sweep():
    net, opt, data = _trained_net_and_adam()
    before = _snapshot(net, opt)
    calls = 0

    def flaky(out, y):
        nonlocal calls
        calls += 1
        if calls == 7:
            raise RuntimeError("boom")
        return _mse(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(net, opt, flaky, data, steps=30, batch_size=16)
    assert calls == 7
    _assert_restored(before, net, opt)


def _problem(name):
    """A model its optimizer accepts, data, and a loss: Muon takes 2-D weights only, SparseAdam
    sparse gradients only."""
    g = torch.Generator().manual_seed(0)
    if name == "muon":
        model = make_model("wide")
        return model, (torch.randn(64, 16, generator=g, dtype=torch.float64),
                       torch.randn(64, 1, generator=g, dtype=torch.float64))
    if name == "sparse-adam":
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(20, 3, sparse=True, dtype=torch.float64), torch.nn.Flatten())
        return model, (torch.randint(0, 20, (64, 2), generator=g), torch.randn(64, 6, generator=g, dtype=torch.float64))
    x, y = net_data(n=64)
    return make_net(), (x, y)


@pytest.mark.parametrize("name", [n for n in optimlab.names() if not optimlab.REGISTRY[n].needs_closure])
def test_finder_works_with_every_registry_optimizer(name):
    model, data = _problem(name)
    opt = optimlab.create(name, model.parameters())
    before = _snapshot(model, opt)
    res = find_lr(model, opt, _mse, data, steps=30, batch_size=16, start=1e-5, end=10)
    assert len(res.lrs) == len(res.losses) == len(res.smoothed) >= 2
    assert math.isfinite(res.losses[0]) and set(res.suggestions) == set(RULES)
    _assert_restored(before, model, opt)


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam])
def test_finder_works_with_plain_torch_optimizers(cls):
    x, y = net_data(n=64)
    net = make_net()
    opt = cls(net.parameters(), lr=0.01)
    before = _snapshot(net, opt)
    res = find_lr(net, opt, _mse, (x, y), steps=40, batch_size=16, end=10)
    assert res.suggested_lr is not None and 1e-7 <= res.suggested_lr <= 10
    _assert_restored(before, net, opt)
    assert opt.param_groups[0]["lr"] == 0.01


def test_finder_accepts_an_iterable_of_batches():
    x, y = net_data(n=64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    net = make_net()
    res = find_lr(net, optimlab.SGD(net.parameters()), _mse, loader, steps=20, end=1)
    assert len(res.lrs) == 20 or res.diverged_at is not None


# --- divergence and arguments --------------------------------------------------------------------------
def test_a_diverging_sweep_stops_early():
    # f = 50 x^2: gradient descent diverges once lr > 2 / 100
    x = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    model = torch.nn.Module()
    model.x = x
    model.forward = lambda inp: 50 * (x**2).sum().reshape(1).expand(len(inp))
    data = (torch.zeros(4, 1), torch.zeros(4))
    calls = 0

    def loss(out, y):
        nonlocal calls
        calls += 1
        return out.mean()

    res = find_lr(model, optimlab.SGD([x]), loss, data, start=1e-4, end=1e3, steps=100, batch_size=None)
    assert res.diverged_at is not None and 0.02 < res.diverged_at < 1.0
    assert calls == len(res.lrs) < 100  # no step after the stop
    assert torch.equal(x.detach(), torch.ones(3, dtype=torch.float64))
    assert res.suggested_lr < 0.02


def test_schedule_and_argument_checks():
    assert lr_schedule(1e-3, 1e1, 5) == pytest.approx([1e-3, 1e-2, 1e-1, 1, 10])
    assert lr_schedule(0.0, 1.0, 5, "linear") == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    net = make_net()
    opt = optimlab.SGD(net.parameters())
    data = net_data()
    res = find_lr(net, opt, _mse, data, start=0.0, end=1.0, steps=30, mode="linear", batch_size=8)
    assert res.lrs[0] == 0.0 and res.lrs[1] == pytest.approx(1 / 29)
    assert all(v is None or 0 < v <= 1 for v in res.suggestions.values())
    for kwargs, word in [(dict(mode="cubic"), "cubic"), (dict(start=0.0), "start=0.0"), (dict(end=1e-8), "end"),
                         (dict(steps=1), "steps"), (dict(smooth=1.0), "smooth"),
                         (dict(diverge_factor=1.0), "diverge_factor"),
                         (dict(rule="median"), "median"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=word):
            find_lr(net, opt, _mse, data, **kwargs)


# --- the rules: pure functions on synthetic curves ------------------------------------------------------
def _curve(n=141):
    """Flat at 2 until ~1e-3, falls (fastest at 1e-2) to 0.5, flat bottom, explodes past 1."""
    lrs = np.logspace(-6, 1, n)
    t = np.log10(lrs)
    loss = 0.5 + 1.5 / (1 + np.exp(4 * (t + 2))) + np.where(t > -0.5, 30 * (t + 0.5) ** 2, 0)
    return lrs.tolist(), loss.tolist()


def test_rules_on_a_synthetic_curve():
    lrs, loss = _curve()
    assert steepest(lrs, loss) == pytest.approx(1e-2, rel=0.15)
    lowest = lrs[int(np.argmin(loss))]
    assert 0.05 < lowest < 0.4
    assert min_over_10(lrs, loss) == pytest.approx(lowest / 10)
    assert lrs[0] < valley(lrs, loss) < lowest and valley(lrs, loss) > 1e-3
    assert bounded_steepest(lrs, loss) == pytest.approx(lowest / 10)  # steepest is below a tenth of the edge
    ends = [float("inf"), float("nan")]
    assert suggest(lrs + [20.0, 30.0], loss + ends) == suggest(lrs, loss)  # a non-finite tail is ignored


def test_bounded_steepest_stays_within_a_tenth_and_a_third_of_the_edge():
    lrs = np.logspace(-4, 0, 81)
    t = np.log10(lrs)
    falls_late = 2 - 1.5 / (1 + np.exp(-10 * (t + 0.6))) + np.where(t > -0.2, 50 * (t + 0.2) ** 2, 0)
    edge = lrs[int(np.argmin(falls_late))]
    assert steepest(lrs, falls_late) > edge / 3
    assert bounded_steepest(lrs, falls_late) == pytest.approx(edge / 3)
    mid = 2 - 1.5 / (1 + np.exp(-6 * (t + 1.2))) + np.where(t > -0.3, 50 * (t + 0.3) ** 2, 0)
    edge = lrs[int(np.argmin(mid))]
    assert edge / 10 < steepest(lrs, mid) < edge / 3
    assert bounded_steepest(lrs, mid) == steepest(lrs, mid)


def test_rules_refuse_flat_curves_and_bad_input():
    lrs = np.logspace(-6, 0, 50).tolist()
    flat = [2.0 + 0.001 * math.sin(i) for i in range(50)]
    with pytest.raises(ValueError, match="fell by only"):
        steepest(lrs, flat)
    assert suggest(lrs, flat) == dict.fromkeys(RULES)
    with pytest.raises(ValueError, match="length"):
        valley(lrs, flat[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        min_over_10([1e-3, 1e-2], [1.0, float("nan")])


def test_smoothing_is_a_bias_corrected_ema():
    assert smooth_losses([3.0] * 10, 0.9) == pytest.approx([3.0] * 10)
    s = smooth_losses([1.0, 2.0], 0.5)
    assert s[0] == 1.0 and s[1] == pytest.approx((0.25 * 1 + 0.5 * 2) / 0.75)
    assert smooth_losses([1.0, 2.0], 0.0) == [1.0, 2.0]


# --- the lab: finder over seeds, sensitivity sweep ---------------------------------------------------------
def test_lr_find_task_over_seeds_reports_spread_and_plots(tmp_path):
    found = lr_find_task("digits-mlp", "sgd:momentum=0.9", seeds=2, steps=60)
    assert len(found.results) == 2 and found.rule == "bounded_steepest"
    per_seed = [r.suggested_lr for r in found.results]
    assert found.suggested_lr == pytest.approx(math.sqrt(per_seed[0] * per_seed[1]))
    assert found.spread["bounded_steepest"] == pytest.approx(max(per_seed) / min(per_seed))
    found.plot().savefig(tmp_path / "f.png")
    assert os.path.getsize(tmp_path / "f.png") > 10_000
    with pytest.raises(ValueError, match="seeds"):
        lr_find_task("digits-mlp", "sgd", seeds=0)


def test_log_grid_is_deepobs_by_default():
    grid = log_grid()
    assert len(grid) == 36 and grid[0] == 1e-5 and grid[-1] == 100.0 and 0.0158 in grid
    assert log_grid(1e-2, 1, per_decade=2) == [0.01, 0.0316, 0.1, 0.316, 1.0]


def test_regions_are_named_from_the_rows():
    # initial loss 2.2, best 0.2: "good" keeps 90 % of the best drop of 2.0, i.e. ends <= 0.4
    rows = [{"lr": lr, "final_loss": f, "initial_loss": 2.2, "diverged": d} for lr, f, d in
            [(1e-3, 2.19, False), (1e-2, 1.0, False), (1e-1, 0.35, False), (1.0, 0.2, False), (10.0, 0.9, False),
             (100.0, None, True)]]
    best, regions = name_regions(rows, good=0.9)
    assert best == 1.0
    assert [r["region"] for r in rows] == ["too small", "too small", "good", "good", "too large", "too large"]
    assert regions == {"too small": [1e-3, 1e-2], "good": [0.1, 1.0], "too large": [10.0, 100.0]}


def test_sweep_rows_regions_and_rerun(tmp_path):
    path = str(tmp_path / "sweep.jsonl")
    sweep = lr_sweep("breast-cancer-logreg", ["sgd", "adam"], [1e-4, 1e-1, 1e2], epochs=5, workers=1, path=path)
    for opt in ("sgd", "adam"):
        rows = sweep.rows[opt]
        assert [r["lr"] for r in rows] == [1e-4, 1e-1, 1e2]
        assert sweep.best_lr[opt] == 0.1 and rows[1]["region"] == "good"
        assert rows[0]["region"] == "too small" and rows[0]["final_loss"] > 0.95 * rows[0]["initial_loss"]
        assert rows[2]["region"] == "too large" and rows[2]["diverged"]
        assert rows[1]["best_loss"] <= rows[1]["final_loss"] + 1e-12 and rows[1]["budget_steps"] == 5
    n = len(load_records(path))
    assert n == 6
    lr_sweep("breast-cancer-logreg", ["sgd", "adam"], [1e-4, 1e-1, 1e2], epochs=5, workers=1, path=path)
    assert len(load_records(path)) == n  # nothing re-run
    with pytest.raises(ValueError, match="drop lr="):
        lr_sweep("breast-cancer-logreg", ["sgd:lr=0.1"], [1e-2], path=path)


# --- the check: suggestion vs the sweep's best, on real tasks ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("task", ["digits-mlp", "breast-cancer-logreg"])
def test_suggestion_is_near_the_sweeps_best_and_reaches_the_target(task, tmp_path):
    """The finder's default suggestion (3 seeds) lies within 3x of the best rate of a DeepOBS
    sweep (5 rates per decade, a quarter of the task's budget; rates below 1e-3 are left out:
    every one of them is far too small on these tasks, and the best must come out interior),
    and a full-budget run at the suggestion reaches the task's target. The sweep diverges at
    its large end for each optimizer; runs the runner stops for divergence stop early."""
    sweep = lr_sweep(task, ["sgd", "adam"], lo=1e-3, workers=2, path=str(tmp_path / "sweep.jsonl"))
    for opt in ("sgd", "adam"):
        rows = sweep.rows[opt]
        best = sweep.best_lr[opt]
        assert rows[0]["lr"] < best < rows[-1]["lr"] and rows[0]["region"] == "too small"
        assert rows[-1]["diverged"] and rows[-1]["region"] == "too large"
        assert all(r["steps"] < r["budget_steps"] for r in rows if r["stopped_early"])
        found = lr_find_task(task, opt, seeds=3)
        assert 1 / 3 <= found.suggested_lr / best <= 3, (opt, found.suggested_lr, best, found.suggestions)
        rec = run_one(RunSpec(task, opt, (("lr", found.suggested_lr),)))
        assert not rec["diverged"] and rec["steps_to_target"] is not None, \
            (opt, found.suggested_lr, rec["best_val_metric"])
    if task == "digits-mlp":  # the cross-entropy explodes: the runner stops those runs within a few steps
        assert all(any(r["stopped_early"] and r["steps"] <= 5 for r in sweep.rows[o]) for o in ("sgd", "adam"))


# --- the CLI --------------------------------------------------------------------------------------------------
def test_lr_find_cli_json_and_text(tmp_path, capsys):
    out = tmp_path / "find"
    assert main(["lr-find", "--task", "breast-cancer-logreg", "--optimizer", "adam", "--seeds", "2", "--json",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["suggested_lr"] == summary["suggestions"][summary["rule"]] > 0
    assert set(summary["suggestions"]) == {"steepest", "valley", "min_over_10", "bounded_steepest"}
    assert summary["seeds"] == 2 and os.path.exists(summary["plot"]) and summary["plot"].endswith(".png")
    assert main(["lr-find", "--task", "breast-cancer-logreg", "--optimizer", "sgd:momentum=0.9", "--rule", "valley",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "suggested lr" in text and "<- suggested_lr" in text and "valley" in text
    assert os.path.exists(out / "breast-cancer-logreg-sgd-momentum-0.9.png")
    # rates up to 1e-5 barely move the loss: no suggestion, said so, exit status 1
    assert main(["lr-find", "--task", "breast-cancer-logreg", "--optimizer", "sgd", "--end", "1e-5",
                 "--out", str(out)]) == 1
    assert "no suggestion" in capsys.readouterr().out
    assert main(["lr-find", "--task", "no-such-task", "--out", str(out)]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_lr_sweep_cli_json(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["lr-sweep", "--task", "breast-cancer-logreg", "--optimizers", "sgd,adam", "--lrs", "1e-4,0.1,100",
                 "--epochs", "5", "--workers", "1", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_lr"] == {"sgd": 0.1, "adam": 0.1}
    for opt in ("sgd", "adam"):
        grid = summary["grid"][opt]
        assert [r["lr"] for r in grid] == [1e-4, 0.1, 100.0]
        assert {"final_loss", "best_loss", "diverged", "region"} <= set(grid[0])
        assert grid[-1]["diverged"] and summary["regions"][opt]["good"] == [0.1, 0.1]
    assert os.path.exists(summary["plot"]) and os.path.exists(out / "records.jsonl")
    assert main(["lr-sweep", "--task", "breast-cancer-logreg", "--optimizers", "sgd,adam", "--lrs", "1e-4,0.1,100",
                 "--epochs", "5", "--workers", "1", "--out", str(out)]) == 0  # recorded: nothing re-run
    text = capsys.readouterr().out
    assert "best lr 0.1" in text and "too large: 100" in text and "(diverged" in text


def test_compare_lr_auto_uses_the_finder(tmp_path, capsys):
    assert main(["compare", "--task", "breast-cancer-logreg", "--optimizers", "sgd,adam:lr=0.1", "--lr", "auto",
                 "--seeds", "1", "--epochs", "5", "--full-batch", "--out", str(tmp_path), "--json", "--trials", "0"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    labels = set(summary["tasks"]["breast-cancer-logreg"]["optimizers"])
    auto = [label for label in labels if label.startswith("sgd:lr=")]
    assert len(auto) == 1 and "adam:lr=0.1" in labels
    lr = float(auto[0].split("=")[1])
    assert f"sgd lr={lr:g} (LR finder" in captured.err and 1 < lr < 30


def test_lr_auto_tries_a_longer_range_test_then_the_default(monkeypatch):
    """A slow starter gets a longer range test; where none finds a rate, the optimizer's default
    lr is used and the message says so (the compare goes on instead of stopping)."""
    from optimlab.cli import lr_find as cli_lr_find
    from optimlab.lab import sweep

    calls = []

    def fake(task, optimizer, batch_size="task", steps=100):
        calls.append((optimizer, steps))
        found = 0.05 if optimizer.startswith("sgd") and steps == cli_lr_find.AUTO_STEPS[-1] else None
        return sweep.LRFindSummary(task, optimizer, "valley", found, {}, {}, [])

    monkeypatch.setattr(sweep, "lr_find_task", fake)
    log = io.StringIO()
    out = cli_lr_find.found_lrs("digits-cnn", ["sgd:momentum=0.9", "adam", "rmsprop:lr=0.1"], log=log)
    assert out == ["sgd:momentum=0.9,lr=0.05", f"adam:lr={optimlab.REGISTRY['adam'].defaults['lr']:g}", "rmsprop:lr=0.1"]
    assert calls == [("sgd:momentum=0.9", 100), ("sgd:momentum=0.9", 400), ("adam", 100), ("adam", 400)]
    err = log.getvalue()
    assert "sgd:momentum=0.9 lr=0.05 (LR finder, valley, 400-step range test)" in err
    assert "adam lr=0.001 (its default: the LR finder found none in 400 steps" in err
