"""The fit loop: batch modes, divergence, checkpoints (atomic, exact resume), closures."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import optimlab
from optimlab.train import fit, save_atomic, steps_per_epoch


def _data(n=50, seed=0):
    """Points labelled by one fixed hyperplane (``seed`` only changes the points)."""
    w = torch.randn(5, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))
    return x, (x @ w > 0).long()


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("batch_size,expected", [(None, 1), (1, 50), (8, 7), (50, 1), (64, 1)])
def test_batch_modes_take_1_N_or_ceil_N_over_B_steps_per_epoch(batch_size, expected):
    model = _model()
    calls = []
    opt = optimlab.SGD(model.parameters(), lr=0.1)
    opt.register_step_post_hook(lambda *a: calls.append(1))
    res = fit(model, opt, F.cross_entropy, _data(), epochs=3, batch_size=batch_size)
    assert expected == steps_per_epoch(50, batch_size)
    assert len(calls) == res.steps == 3 * expected


def test_far_too_large_learning_rate_is_reported_as_diverged():
    model = _model()
    res = fit(model, optimlab.SGD(model.parameters(), lr=1e6), F.cross_entropy, _data(), epochs=5, batch_size=10)
    assert res.diverged and res.steps < 25
    assert "lr=1e+06" in res.message and "smaller" in res.message
    assert all(torch.isfinite(torch.tensor(res.step_losses[:-1])))


def test_closure_optimizer_trains(tmp_path):
    model = _model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    res = fit(model, opt, F.cross_entropy, _data(), val=_data(seed=1), epochs=5, batch_size=None,
              metric=optimlab.train.accuracy)
    assert res.step_losses[-1] < res.step_losses[0] and res.steps == 5


def test_validation_metrics_and_early_stopping():
    model = _model()
    res = fit(model, optimlab.Adam(model.parameters(), lr=0.05), F.cross_entropy, _data(200), val=_data(100, 1),
              metric=optimlab.train.accuracy, epochs=200, batch_size=20, early_stopping=3, target=0.6)
    assert res.stopped_early and res.epochs < 200
    rec = res.epoch_records[-1]
    assert {"train_loss", "val_loss", "val_metric"} <= set(rec)
    assert res.steps_to_target is not None and res.steps_to_target % 10 == 0


def test_resume_from_checkpoint_gives_the_same_parameters(tmp_path):
    data, val = _data(), _data(seed=1)
    full = _model()
    fit(full, optimlab.Adam(full.parameters(), lr=0.01), F.cross_entropy, data, val=val, epochs=6, batch_size=7, seed=3)

    ck = tmp_path / "run.pt"
    part = _model()
    opt = optimlab.Adam(part.parameters(), lr=0.01)
    fit(part, opt, F.cross_entropy, data, val=val, epochs=2, batch_size=7, seed=3, checkpoint=ck)  # "interrupted"
    resumed = _model(seed=99)  # a fresh process: different init, everything comes from the file
    res = fit(resumed, optimlab.Adam(resumed.parameters(), lr=0.01), F.cross_entropy, data, val=val, epochs=6,
              batch_size=7, seed=3, checkpoint=ck, resume=True)
    assert res.epochs == 6 and res.steps == 6 * 8
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_write_killed_midway_leaves_previous_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_atomic({"epoch": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    ck = torch.load(path)
    assert ck["epoch"] == 1 and torch.equal(ck["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ck.pt"], "the temporary file was not cleaned up"


def test_bad_batch_size_is_explained():
    model = _model()
    with pytest.raises(ValueError, match="batch_size: 0"):
        fit(model, optimlab.SGD(model.parameters(), lr=0.1), F.cross_entropy, _data(), batch_size=0)
