"""The lab's protocol: evaluations finer than an epoch with the training set measured at the
same points, equal quasi-random tuning budgets declared in the registry, selection on
validation with tuning seeds, fresh evaluation seeds, one-shot and tuned rows, and the
regularization sweep. Tiny tasks and budgets: the whole file runs in seconds."""

from __future__ import annotations

import math

import pytest
import torch

from optimlab import SGD
from optimlab.train import accuracy, fit


def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None]
    return x, y


def test_fit_evaluates_every_k_steps_with_the_training_set_at_the_same_points():
    x, y = _blobs()
    model = torch.nn.Linear(2, 2)
    res = fit(model, SGD(model.parameters(), lr=0.1), torch.nn.functional.cross_entropy, (x, y), val=(x[:50], y[:50]),
              metric=accuracy, epochs=2, batch_size=20, eval_every=4, train_eval=(x[:50], y[:50]), target=0.0)
    steps = [r["step"] for r in res.epoch_records]
    assert steps == [4, 8, 10, 12, 16, 20]  # every 4th step, and each epoch's end
    assert [r["epoch"] for r in res.epoch_records] == [0.4, 0.8, 1, 1.2, 1.6, 2]
    for r in res.epoch_records:  # the same data in both slots: the same numbers at the same point
        assert r["train_eval_loss"] == r["val_loss"] and r["train_eval_metric"] == r["val_metric"]
    assert res.steps_to_target == 4  # reached at the first evaluation, not at the epoch's end
    # the training loss of each record averages the steps since the previous evaluation
    assert res.epoch_records[2]["train_loss"] == pytest.approx(sum(res.step_losses[8:10]) / 2)
    with pytest.raises(ValueError, match="eval_every: 0"):
        fit(model, SGD(model.parameters(), lr=0.1), torch.nn.functional.cross_entropy, (x, y), eval_every=0)
