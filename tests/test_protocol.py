"""The lab's protocol: evaluations finer than an epoch with the training set measured at the
same points, equal quasi-random tuning budgets declared in the registry, selection on
validation with tuning seeds, fresh evaluation seeds, one-shot and tuned rows, and the
regularization sweep. Tiny tasks and budgets: the whole file runs in seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as st

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


# -- search spaces and the equal budget -------------------------------------------------------------------
from optimlab import registry  # noqa: E402
from optimlab.lab import analysis, stats  # noqa: E402
from optimlab.lab.tuning import (Protocol, choose, evaluation_specs, parse_sweep, protocol_specs,  # noqa: E402
                                 search_space, trial_configs, tune_and_evaluate)


def test_every_optimizer_with_a_learning_rate_declares_a_log_uniform_one():
    for name in registry.names():
        spec = registry._spec(name)
        lr = spec.defaults.get("lr")
        if isinstance(lr, (int, float)) and lr > 0:
            d = spec.space()["lr"]
            assert d.scale == "log" and d.low < d.high and d.low <= lr <= d.high, name
    # the maps: log-uniform puts the middle at the geometric mean; 1 - x log-uniform for momenta
    assert registry.Dim(1e-4, 1.0).at(0.5) == pytest.approx(1e-2)
    m = registry.Dim(0.0, 0.999, "log1m")
    assert m.at(0.0) == 0.0 and 1 - m.at(0.5) == pytest.approx(math.sqrt(1e-3)) and m.at(1.0) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="low=1.0, high=0.1"):
        registry.Dim(1.0, 0.1)


def test_trials_are_the_same_quasi_random_points_in_each_declared_space():
    p = Protocol(trials=8, tune=("lr", "momentum", "schedule"))
    sgd, adam = trial_configs("sgd:nesterov=true", p), trial_configs("adam:eps=1e-6", p)
    assert len(sgd) == len(adam) == 8
    s_space, a_space = registry._spec("sgd").space(), registry._spec("adam").space()
    for (hs, ss), (ha, sa) in zip(sgd, adam):
        # one point of [0,1)^3 mapped into each space: the same quantiles of lr and momentum
        u_s = math.log(hs["lr"] / s_space["lr"].low) / math.log(s_space["lr"].high / s_space["lr"].low)
        u_a = math.log(ha["lr"] / a_space["lr"].low) / math.log(a_space["lr"].high / a_space["lr"].low)
        assert u_s == pytest.approx(u_a) and 0 <= u_s < 1
        assert hs["momentum"] == pytest.approx(ha["betas"][0]) and ha["betas"][1] == 0.999  # beta1 for Adam
        assert ss == sa and ss in ("constant", "warmup_cosine")
        assert hs["nesterov"] is True and ha["eps"] == 1e-6  # options fixed in the string stay
    assert len({h["lr"] for h, _ in sgd}) == 8 and {s for _, s in sgd} == {"constant", "warmup_cosine"}
    assert search_space("sgd", ("lr", "eps")).keys() == {"lr"}  # SGD has no eps: it is not searched


def test_every_optimizer_gets_the_same_budget_on_tuning_seeds_apart_from_evaluation_seeds():
    p = Protocol(trials=4, tuning_seeds=2, seeds=3)
    specs = protocol_specs(["digits-mlp"], ["sgd:momentum=0.9", "adam", "rmsprop"], p)
    count = {}
    for s in specs:
        tags = dict(s.tags)
        count[(tags["base"], tags["phase"])] = count.get((tags["base"], tags["phase"]), 0) + 1
        assert s.seed in ((1000, 1001) if tags["phase"] == "tuning" else (0, 1, 2))
    assert set(count.values()) <= {8, 3} and len(count) == 6  # 4 trials x 2 seeds, and 3 one-shot seeds, each
    one_shot = [s for s in specs if dict(s.tags)["phase"] == "one-shot" and s.optimizer == "adam"]
    assert dict(one_shot[0].hyper)["lr"] == registry._spec("adam").defaults["lr"]  # its own default, not the task's


def _rec(label, seed, val, test, phase="tuning", trial=0, optimizer="adam", base="adam", **kw):
    r = {"task": "t", "label": label, "optimizer": optimizer, "base": base, "phase": phase, "trial": trial,
         "seed": seed, "lr": 0.1, "hyper": {"lr": 0.1 * (trial + 1)}, "metric": "test accuracy",
         "higher_is_better": True, "target": 0.99, "test_metric": test, "test_metric_at_best_val": test,
         "best_val_metric": val, "steps_to_target": None, "seconds_to_target": None, "diverged": False,
         "error": None, "message": "", "final_train_loss": 0.1, "final_train_eval_loss": 0.1,
         "final_val_loss": 0.3, "seconds": 1.0}
    r.update(kw)
    return r


def test_the_tuned_configuration_is_chosen_on_validation_never_on_test():
    recs = [_rec("adam trial 0", 1000, 0.99, 0.90, trial=0), _rec("adam trial 1", 1000, 0.93, 0.97, trial=1),
            _rec("adam trial 2", 1000, 0.95, 0.95, trial=2, diverged=True)]
    pick = choose(recs, "t", "adam")
    assert pick["trial"] == 0 and pick["hyper"] == {"lr": 0.1} and pick["trials"] == 3
    specs, chosen = evaluation_specs(recs, ["digits-mlp"], ["adam"], Protocol(trials=3, seeds=2))
    assert not specs  # the records are of task "t", not digits-mlp: nothing to evaluate there


def _judge(a, b, gap_a=None, gap_b=None, phase="tuned", trials=(8, 8)):
    recs = []
    for (vals, gaps, opt, n) in ((a, gap_a, "adam", trials[0]), (b, gap_b, "sgd", trials[1])):
        for s, x in enumerate(vals):
            g = 0.2 if gaps is None else gaps[s]
            recs.append(_rec(f"{opt} tuned", s, x, x, phase=phase, optimizer=opt, base=opt, trials=n,
                             final_val_loss=0.1 + g))
    return analysis.verdict(analysis.summarize(recs), "t", phase)


def test_with_no_true_difference_the_default_seeds_name_a_winner_at_most_5_percent_of_the_time():
    """Five evaluation seeds a side (the default), seed-to-seed noise only: the share of
    "better"/"worse" verdicts on the test metric -- and of "smaller"/"larger" on the gap -- is
    the tests' 5 % level (exactly, for normal noise). 8000 trials: the estimate's standard
    error is 0.24 points, and the bounds allow three of them for the simulation's own noise
    (a rate inflated to 6 % or more fails)."""
    rng = np.random.default_rng(2024)
    trials, named, gaps = 8000, 0, 0
    for _ in range(trials):
        a, b = rng.normal(0.9, 0.01, 5), rng.normal(0.9, 0.01, 5)
        ga, gb = rng.normal(0.2, 0.05, 5), rng.normal(0.2, 0.05, 5)
        v = _judge(list(a), list(b), list(ga), list(gb))
        named += v["generalizes_better"] is not None
        gaps += v["gap_status"] in ("smaller", "larger")
    se = math.sqrt(0.05 * 0.95 / trials)
    assert 0.05 - 3 * se <= named / trials <= 0.05 + 3 * se, named / trials  # a level-5% test: not much fewer either
    assert gaps / trials <= 0.05 + 3 * se, gaps / trials


def test_generalization_names_both_criteria_and_keeps_them_apart():
    v = _judge([0.95, 0.96, 0.97, 0.96, 0.95], [0.90, 0.91, 0.92, 0.91, 0.90],
               gap_a=[0.30, 0.32, 0.31, 0.33, 0.30], gap_b=[0.10, 0.11, 0.12, 0.10, 0.11])
    assert v["generalizes_better"] is True and v["gap_status"] == "larger"  # better test score, larger gap
    text = " ".join(v["text"])
    assert "judged on test accuracy at the best-validation checkpoint" in text
    assert "judged on validation loss − training loss" in text and "sgd tuned has the smaller gap" in text
    assert "best of 8 quasi-random trials" in v["text"][0] and v["budget"]["trials"] == {"adam": 8, "sgd": 8}


def test_unequal_tuning_budgets_give_no_verdict():
    v = _judge([0.99] * 3 + [0.98] * 2, [0.90, 0.91, 0.92, 0.91, 0.90], trials=(16, 8))
    assert v["verdict"] == "inconclusive (unequal tuning budgets)" and v["generalizes_better"] is None
    assert "Unequal tuning budgets" in v["text"][0] and v["budget"]["equal"] is False


def test_intervals_are_t_intervals_not_clipped_to_the_metric_range():
    xs = [1.0, 1.0, 0.97]
    iv = stats.t_interval(xs)
    lo, hi = st.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=st.sem(xs))
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi)) and iv.hi > 1.0


def test_the_sweep_says_whether_the_gap_closes():
    recs = []
    for v, gap in ((0.0, 0.40), (1e-3, 0.30), (1e-2, 0.10)):
        for s, jitter in enumerate((0.00, 0.01, -0.01, 0.02)):
            recs.append(_rec(f"adam wd={v}", s, 0.9, 0.9, phase="sweep", sweep_key="weight_decay", sweep_value=v,
                             final_val_loss=0.1 + gap + jitter))
    (trend,) = analysis.sweep_trends(analysis.summarize(recs))
    assert trend["status"] == "closes" and trend["gap_change"].kind == "paired"
    assert trend["gap_change"].diff == pytest.approx(-0.30)
    assert [r["sweep_value"] for r in trend["rows"]] == [0.0, 1e-3, 1e-2]
    (line,) = analysis.sweep_lines(analysis.summarize(recs))
    assert "the gap closes by 0.3 from weight_decay=0 to 0.01" in line
    # the same gaps at every value: no change
    flat = [dict(r, final_val_loss=0.5 + 0.01 * r["seed"]) for r in recs]
    assert analysis.sweep_trends(analysis.summarize(flat))[0]["status"] == "no_difference"


def test_sweep_values_are_checked():
    assert parse_sweep("weight_decay=0,1e-4,1e-2") == ("weight_decay", (0.0, 1e-4, 1e-2))
    for bad, msg in (("weight_decay", "not option=v1,v2"), ("wd=0,abc", "'abc' is not a number"),
                     ("wd=0", "at least two"), ("dropout=0,0.1", "no dropout")):
        with pytest.raises(ValueError, match=msg):
            parse_sweep(bad)
    with pytest.raises(ValueError, match="both tuned and swept"):
        Protocol(tune=("lr", "weight_decay"), sweep=("weight_decay", (0.0, 1e-3)))


# -- the whole protocol on a tiny task -----------------------------------------------------------------------
def test_tune_and_evaluate_runs_every_phase_and_the_verdict_judges_each(tmp_path):
    from optimlab.lab import Task

    x, y = _blobs(240, seed=3)
    task = Task.from_data("blobs", model=_Linear, loss=torch.nn.functional.cross_entropy, metric="accuracy",
                          train=(x[:160], y[:160]), val=(x[160:200], y[160:200]), test=(x[200:], y[200:]), epochs=2,
                          batch_size=16)
    p = Protocol(trials=3, seeds=2, sweep=("weight_decay", (0.0, 0.1)))
    recs = tune_and_evaluate(task, ["sgd:momentum=0.9", "adam"], p, str(tmp_path / "r.jsonl"), workers=1)
    phases = {}
    for r in recs:
        assert r["error"] is None
        phases.setdefault((r["phase"], r["base"]), []).append(r)
    for base in ("sgd:momentum=0.9", "adam"):
        assert len(phases[("tuning", base)]) == 3 and {r["seed"] for r in phases[("tuning", base)]} == {1000}
        assert [r["seed"] for r in phases[("one-shot", base)]] == [0, 1]
        tuned = phases[("tuned", base)]
        pick = choose(recs, "blobs", base)
        assert [r["seed"] for r in tuned] == [0, 1] and all(r["hyper"] == pick["hyper"] for r in tuned)
        assert tuned[0]["trials"] == 3 and tuned[0]["searched"] == ["lr"]
        assert {r["hyper"]["weight_decay"] for r in phases[("sweep", base)]} == {0.0, 0.1}
        # train and validation measured at the same points, and the gap recorded
        log = tuned[0]["epochs_log"]
        assert len(log) == 4 and all("train_eval_loss" in e and "val_loss" in e for e in log)  # 10 steps/epoch: 2 evals
    rows = analysis.summarize(recs)
    for phase in ("tuned", "one-shot"):
        v = analysis.verdict(rows, "blobs", phase)
        assert v["verdict"] != "not tested" and v["phase"] == phase
    assert len(analysis.sweep_lines(rows)) == 2 and all("gap" in line for line in analysis.sweep_lines(rows))
    assert "protocol" in analysis.format_table([r for r in rows if r["phase"] != "tuning"])


class _Linear(torch.nn.Linear):
    def __init__(self):
        super().__init__(2, 2)


def test_the_test_set_is_read_once_at_the_best_validation_checkpoint():
    """No test number during training; the one recorded is that of the weights at the best
    validation point -- the same as training again, deterministically, up to that step."""
    from optimlab.lab import RunSpec, Task, run_one
    from optimlab.train import evaluate

    x, y = _blobs(240, seed=5)
    task = Task.from_data("blobs", model=_Linear, loss=torch.nn.functional.cross_entropy, metric="accuracy",
                          train=(x[:160], y[:160]), val=(x[160:200], y[160:200]), test=(x[200:], y[200:]), epochs=3,
                          batch_size=16)
    rec = run_one(RunSpec(task, "sgd", (("lr", 5.0),), seed=2))  # a large rate: the best validation comes early
    assert all("test_metric" not in e and "test_loss" not in e for e in rec["epochs_log"])
    best = max(rec["epochs_log"], key=lambda e: (e["val_metric"], -e["step"]))  # the first best
    assert best["step"] < rec["steps"] and rec["test_metric_at_best_val"] != rec["test_metric"]  # not the end
    data = task.data(2)
    model = task.model(2)
    fit(model, SGD(model.parameters(), lr=5.0), torch.nn.functional.cross_entropy, data.train, epochs=3,
        batch_size=16, seed=2, max_steps=best["step"])
    assert rec["test_metric_at_best_val"] == evaluate(model, torch.nn.functional.cross_entropy, data.test, accuracy)[1]
