"""Task definitions match their published sources (MNIST-1D's sizes and splits, DeepOBS's noisy
quadratic), and optimizer diagnostics match norms computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import optimlab
from optimlab.diagnostics import compact, track
from optimlab.lab.tasks import MNIST1D_PAPER, NQ_NOISE, TASKS, _nq_hessian, noisy_quadratic_loss
from optimlab.train import accuracy, fit


# -- MNIST-1D ------------------------------------------------------------------------------------
def test_mnist1d_is_the_papers_split_with_a_generated_validation_set():
    from mnist1d.data import get_dataset_args, make_dataset

    data = TASKS["mnist1d-cnn"].data()
    assert data.train[0].shape == (4000, 40) and data.test[0].shape == (1000, 40)  # the paper's 4 000 / 1 000
    assert data.val[0].shape == (1000, 40)
    paper = make_dataset(get_dataset_args())  # seed 42: the paper's data set, regenerated here
    assert torch.equal(data.train[0], torch.tensor(paper["x"]).float())
    assert torch.equal(data.test[1], torch.tensor(paper["y_test"]).long())
    # validation: the same generator, another seed -- no sequence shared with train or test
    seen = {tuple(r.tolist()) for r in torch.cat([data.train[0], data.test[0]])}
    assert not any(tuple(r.tolist()) in seen for r in data.val[0])
    assert set(data.val[1].tolist()) == set(range(10))
    for kind in MNIST1D_PAPER:
        t = TASKS[f"mnist1d-{kind}"]
        assert (t.epochs * math.ceil(4000 / t.batch_size), t.optimizer, t.lr) == (6000, "adam", 1e-2)  # the paper's recipe
        assert f"{MNIST1D_PAPER[kind]:.0%}" in t.description


def test_mnist1d_models_have_the_papers_shapes():
    x = torch.randn(3, 40)
    for kind in MNIST1D_PAPER:
        assert TASKS[f"mnist1d-{kind}"].model(0)(x).shape == (3, 10)
    gru = TASKS["mnist1d-gru"].model(0)
    assert gru.rnn.bidirectional and gru.rnn.hidden_size == 6 and gru.out.in_features == 2 * 6 * 40


def test_accuracy_counts_exactly():
    out = torch.zeros(1000, 2)
    out[:900, 1] = 1  # 900 of 1 000 right: exactly 0.9, not float32's 0.89999998
    assert accuracy(out, torch.ones(1000, dtype=torch.long)) == 0.9


# -- DeepOBS's noisy quadratic -------------------------------------------------------------------
def test_noisy_quadratic_is_deepobs_quadratic_deep():
    task = TASKS["noisy-quadratic"]
    data = task.data()
    rng = np.random.RandomState(42)  # DeepOBS draws the eigenvalues first from RandomState(42)
    eig = np.sort(np.concatenate([rng.uniform(0, 1, 90), rng.uniform(30, 60, 10)]))
    h = _nq_hessian()
    torch.testing.assert_close(h, h.T)
    torch.testing.assert_close(torch.linalg.eigvalsh(h), torch.from_numpy(eig), rtol=0, atol=1e-10)
    # data: float32 draws of N(0, 0.6^2), train from seed 42 and test from seed 43, 1 000 x 100
    for split, seed in (("train", 42), ("test", 43)):
        x = getattr(data, split)[0]
        want = np.float32(np.random.RandomState(seed).normal(0.0, NQ_NOISE, (1000, 100)))
        assert torch.equal(x, torch.from_numpy(want).double())
    assert not torch.equal(data.val[0], data.train[0]) and data.val[0].shape == (1000, 100)
    model = task.model(0)
    assert torch.equal(model.theta.detach(), torch.ones(100, dtype=torch.float64))  # DeepOBS starts at ones
    # the loss: batch mean of 1/2 (theta - x)' Q (theta - x), by hand; the metric reads the given set
    xb = data.test[0][:5]
    by_hand = sum(0.5 * (model.theta - xi) @ h @ (model.theta - xi) for xi in xb) / 5
    torch.testing.assert_close(task.loss_fn(model)(model(xb), xb), by_hand)
    assert task.metric(model(data.test[0]), data.test[1]) != task.metric(model(data.val[0]), data.val[1])
    assert task.target < float(noisy_quadratic_loss(1 - data.val[0]))  # the start is far from the target


# -- diagnostics ---------------------------------------------------------------------------------
def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_diagnostics_match_norms_by_hand():
    model = _net()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = optimlab.Adam(model.named_parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    tracker = opt.track_diagnostics(every=2)
    for _ in range(3):
        _step(model, opt, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()  # the 4th step: recorded
    (g,) = opt.diagnostics()
    assert [r["step"] for r in tracker.history] == [2, 4]
    updates = [p.detach() - b for p, b in zip(model.parameters(), before)]
    norm = lambda ts: math.sqrt(sum(float((t.double() ** 2).sum()) for t in ts))  # noqa: E731
    assert g["grad_norm"] == pytest.approx(norm(grads), rel=1e-6)
    assert g["update_norm"] == pytest.approx(norm(updates), rel=1e-6)
    assert g["update_ratio"] == pytest.approx(norm(updates) / norm(before), rel=1e-6)
    assert g["layers"]["0.weight"]["grad_norm"] == pytest.approx(norm(grads[:1]), rel=1e-6)
    assert g["layers"]["2.bias"]["update_norm"] == pytest.approx(norm(updates[3:]), rel=1e-6)
    # Adam's effective step per coordinate: lr / (sqrt(v / (1 - beta2^t)) + eps), from torch.optim's own v
    ref_model = _net()
    ref = torch.optim.Adam(ref_model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(4):
        _step(ref_model, ref, x, y)
    eff = torch.cat([(1e-2 / ((ref.state[p]["exp_avg_sq"] / (1 - 0.99 ** 4)).sqrt() + 1e-8)).reshape(-1)
                     for p in ref_model.parameters()])
    assert g["effective_lr"]["median"] == pytest.approx(eff.median().item(), rel=1e-4)
    assert g["effective_lr"]["max"] == pytest.approx(eff.max().item(), rel=1e-4)
    assert g["clipped_fraction"] == 0 and g["skipped_fraction"] == 0
    tracker.close()
    assert opt.diagnostics()[0]["update_norm"] is None  # untracked: what can be read now


def test_diagnostics_count_clipped_and_skipped_steps_and_write_scalars():
    model = _net()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    class Writer:
        def __init__(self):
            self.rows = []

        def add_scalar(self, tag, value, step):
            self.rows.append((tag, value, step))

    w = Writer()
    opt = optimlab.SGD(model.parameters(), lr=0.1, clip_grad_norm=1e-3, skip_nonfinite=True)
    opt.track_diagnostics(every=1, writer=w)
    _step(model, opt, x, y)  # norm far above 1e-3: clipped
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    next(model.parameters()).grad[0, 0] = float("nan")
    opt.step()  # skipped
    (g,) = opt.diagnostics()
    assert g["skipped_fraction"] == 0.5 and g["update_norm"] == 0.0
    assert g["clipped_fraction"] == 0.5 and g["effective_lr"] is None  # SGD has no adaptive step
    assert ("optimizer/group0/skipped_fraction", 0.5, 2) in w.rows and ("optimizer/group0/clipped_fraction", 1.0, 1) in w.rows
    with pytest.raises(ValueError, match="every=0"):
        opt.track_diagnostics(every=0)
    with pytest.raises(TypeError, match="add_scalar"):
        track(opt, writer=object())


def test_fit_records_diagnostics_every_k_steps_and_writes_them():
    model = _net()
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    tags = []

    class Writer:
        def add_scalar(self, tag, value, step):
            tags.append((tag, step))

    opt = optimlab.RMSprop(model.parameters(), lr=1e-2)
    res = fit(model, opt, torch.nn.functional.cross_entropy, (x, y), val=(x, y), metric=accuracy, epochs=3,
              batch_size=16, diagnostics_every=3, writer=Writer())
    assert [r["step"] for r in res.diagnostics] == [3, 6, 9, 12]
    rows = compact(res.diagnostics)
    assert all(r["update_norm"] > 0 and r["effective_lr"] > 0 for r in rows)
    assert ("val/metric", 12) in tags and ("optimizer/group0/update_ratio", 12) in tags
    assert not opt._optimizer_step_post_hooks  # fit's tracker is removed at the end


# -- performance profiles ------------------------------------------------------------------------
def _rec(task, label, seed, vals, hib=True, diverged=False):
    """A run record whose validation metric is ``vals[i]`` at step ``10 * (i + 1)``."""
    log = [{"step": 10 * (i + 1), "seconds": 0.5 * (i + 1), "val_metric": v} for i, v in enumerate(vals)]
    return {"task": task, "label": label, "seed": seed, "epochs_log": log, "higher_is_better": hib,
            "diverged": diverged, "error": None}


def test_performance_profile_on_constructed_records():
    from optimlab.lab.profiles import TAUS, derive_targets, performance_profile, ratios, times_to_target

    recs = [
        # t1: A's seeds reach best 0.9, 0.8, 0.7 (median 0.8), B's 0.85 in all -> target 0.85
        _rec("t1", "A", 0, [0.5, 0.9]), _rec("t1", "A", 1, [0.5, 0.8]), _rec("t1", "A", 2, [0.7, 0.7]),
        _rec("t1", "B", 0, [0.85]), _rec("t1", "B", 1, [0.85]), _rec("t1", "B", 2, [0.2, 0.85]),
        # t2 (lower is better): A reaches 0.1 at step 30, B at step 10; B diverges in one seed
        _rec("t2", "A", 0, [0.5, 0.3, 0.1], hib=False), _rec("t2", "A", 1, [0.5, 0.3, 0.1], hib=False),
        _rec("t2", "B", 0, [0.1], hib=False), _rec("t2", "B", 1, [0.1], hib=False),
        _rec("t2", "B", 2, [0.1], hib=False, diverged=True),
    ]
    targets = derive_targets(recs)
    assert targets == {"t1": 0.85, "t2": 0.1}
    times = times_to_target(recs, targets)
    # t1: A reaches 0.85 only in seed 0 (step 20): 1 of 3 -> never; B: steps 10, 10, 20 -> 10
    # t2: A: 30, 30 -> 30; B: 10, 10, never -> 10 (2 of 3 seeds)
    assert times == {"t1": {"A": math.inf, "B": 10.0}, "t2": {"A": 30.0, "B": 10.0}}
    assert ratios(times) == {"t1": {"A": math.inf, "B": 1.0}, "t2": {"A": 3.0, "B": 1.0}}
    prof = performance_profile(times)
    assert prof["B"] == [1.0] * len(TAUS)
    assert prof["A"] == [0.5 if tau >= 3 else 0.0 for tau in TAUS]  # within 3x on t2 only
    assert times_to_target(recs, targets, unit="seconds")["t2"] == {"A": 1.5, "B": 0.5}
    assert derive_targets(recs, baselines=["A"]) == {"t1": 0.8, "t2": 0.1}


def test_benchmark_cli_prints_a_profile(tmp_path, capsys):
    from optimlab.cli import main

    out = tmp_path / "b"
    assert main(["benchmark", "--task", "rosenbrock", "--task", "beale", "--optimizers", "adam:lr=0.05,sgd:lr=1e-3",
                 "--seeds", "1", "--epochs", "150", "--workers", "1", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "performance profile" in text and (out / "profile.png").exists()
    import json

    summary = json.loads((out / "profile.json").read_text())
    assert set(summary["profile"]) == {"adam:lr=0.05", "sgd:lr=1e-3"}
    # each task's fastest optimizer has ratio 1, so some optimizer is at 1 at tau = 1 on each task
    assert sum(rho[0] for rho in summary["profile"].values()) >= 1.0
    assert main(["benchmark", "--tune", "-2", "--out", str(out)]) == 2
