"""The verdict on "Adam converges faster and generalizes better than SGD/GD" is honest:
selection on validation only, equal tuning budgets, statistics over seeds, failures and
never-reached targets counted, generalization at the best-validation checkpoint. Every record
here is constructed by hand (no training), so the tests are quick and exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from optimlab.lab import stats
from optimlab.lab.analysis import format_table, select, summarize, verdict


def rec(label, seed, test, steps=100, val=None, optimizer=None, **kw):
    """One run record shaped like :func:`optimlab.lab.runner.run_one`'s."""
    r = {"task": "t", "label": label, "optimizer": optimizer or label.partition(":")[0], "seed": seed, "lr": 0.1,
         "metric": "test accuracy", "higher_is_better": True, "target": 0.9, "test_metric": test,
         "best_val_metric": test if val is None else val, "steps_to_target": steps,
         "seconds_to_target": None if steps is None else steps / 100, "diverged": False, "error": None,
         "message": "", "final_train_loss": 0.1, "final_val_loss": 0.2, "seconds": 1.0}
    r.update(kw)
    return r


def diverged(label, seed):
    return rec(label, seed, None, steps=None, diverged=True, best_val_metric=0.5,
               message="diverged: the training loss became nan at epoch 2")


def side(label, tests, steps=None, **kw):
    steps = steps or [100] * len(tests)
    return [rec(label, s, t, steps=n, **kw) for s, (t, n) in enumerate(zip(tests, steps))]


def judge(records):
    return verdict(summarize(records), "t")


# -- selection and budgets ---------------------------------------------------------------------


def test_configuration_is_chosen_on_validation_never_on_test():
    """adam lr=1e-3 has the better validation score (99%), lr=1e-1 the better test score: the
    comparison uses lr=1e-3. (The old lab picked the best on the test set.)"""
    recs = (side("adam:lr=1e-3", [0.950, 0.951, 0.952], val=0.99)
            + side("adam:lr=1e-1", [0.970, 0.971, 0.972], val=0.93)
            + side("sgd:lr=0.1", [0.940, 0.941, 0.942], val=0.95)
            + side("sgd:lr=1", [0.960, 0.961, 0.962], val=0.90))
    rows = summarize(recs)
    assert select(rows, "adam")["label"] == "adam:lr=1e-3"
    assert select(rows, "sgd")["label"] == "sgd:lr=0.1"
    v = verdict(rows, "t")
    assert (v["adam"], v["sgd"]) == ("adam:lr=1e-3", "sgd:lr=0.1")
    assert v["budget"] == {"adam": 2, "sgd": 2, "compared": 2, "equal": True}
    assert "never by the test set" in v["text"][0]


def test_validation_tie_goes_to_fewer_failures():
    recs = (side("adam:lr=1", [0.9, 0.9, 0.9], val=0.95)[:2] + [diverged("adam:lr=1", 2)]
            + side("adam:lr=2", [0.9, 0.9, 0.9], val=0.95))
    assert select(summarize(recs), "adam")["label"] == "adam:lr=2"


def test_families_are_not_pooled():
    """adamw is not adam: a brilliant adamw run does not stand in for adam."""
    recs = side("adamw", [0.99, 0.99, 0.98]) + side("sgd", [0.90, 0.91, 0.92])
    v = judge(recs)
    assert v["verdict"] == "not tested" and v["faster"] is None and v["generalizes_better"] is None
    v = judge(recs + side("adam", [0.80, 0.81, 0.82]))
    assert v["adam"] == "adam" and v["generalizes_better"] is False


def test_unequal_budgets_compare_the_first_n_of_each_and_say_so():
    adam = [r for i in range(8) for r in side(f"adam:lr={10.0 ** -i:g}", [0.90 + 0.01 * i, 0.91 + 0.01 * i])]
    v = judge(adam + side("sgd:lr=0.1", [0.905, 0.915]))
    assert v["budget"] == {"adam": 8, "sgd": 1, "compared": 1, "equal": False}
    assert v["adam"] == "adam:lr=1"  # the first run, not the best of eight on validation (lr=1e-07)
    assert "Unequal tuning budgets (8 adam vs 1 sgd configurations)" in v["text"][0]


def test_unequal_budgets_do_not_manufacture_a_winner():
    """8 Adam learning rates and 1 SGD one, all drawn from the same distribution (validation
    and test alike): the old lab said "Adam generalizes better" in a third of the trials."""
    rng = np.random.default_rng(7)
    wins = 0
    trials = 400
    for _ in range(trials):
        recs = []
        for label in [f"adam:lr={i}" for i in range(8)] + ["sgd:lr=0"]:
            for s in range(3):
                x = float(rng.normal(0.9, 0.01))
                recs.append(rec(label, s, x, steps=None))
        wins += judge(recs)["generalizes_better"] is not None
    assert wins / trials <= 0.06


# -- statistics ------------------------------------------------------------------------------


def _verdict_rate(n_seeds, effect, sd, trials, rng):
    """Share of trials where the verdict names a winner on generalization (no target reached,
    so speed takes no time)."""
    named = 0
    for _ in range(trials):
        a, b = rng.normal(effect, sd, n_seeds), rng.normal(0.0, sd, n_seeds)
        recs = side("adam", list(a), steps=[None] * n_seeds) + side("sgd", list(b), steps=[None] * n_seeds)
        named += judge(recs)["generalizes_better"] is not None
    return named / trials


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_no_true_difference_names_a_winner_at_most_5_percent_of_the_time(n_seeds):
    rng = np.random.default_rng(1234 + n_seeds)
    assert _verdict_rate(n_seeds, 0.0, 0.5, 2000, rng) <= 0.06


def test_power_grows_with_seeds():
    """A +0.5 point effect at a seed-to-seed sd of 0.5: more seeds, more often found."""
    rng = np.random.default_rng(99)
    p3, p10 = _verdict_rate(3, 0.5, 0.5, 600, rng), _verdict_rate(10, 0.5, 0.5, 600, rng)
    assert p10 > p3 + 0.2, (p3, p10)


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_no_true_speed_difference_names_a_faster_one_at_most_5_percent_of_the_time(n_seeds):
    """Log-normal steps, censored at a budget that about a fifth of the seeds miss."""
    rng = np.random.default_rng(55 + n_seeds)
    named, trials = 0, 1000
    for _ in range(trials):
        steps = np.exp(rng.normal(5.0, 0.3, (2, n_seeds)))
        steps = [[float(round(x)) if x < 190 else None for x in row] for row in steps]
        recs = (side("adam", [0.9] * n_seeds, steps=steps[0], test_metric=None)
                + side("sgd", [0.9] * n_seeds, steps=steps[1], test_metric=None))
        named += judge(recs)["faster"] is not None
    assert named / trials <= 0.06


def test_significant_difference_is_reported_with_its_interval_and_effect_size():
    v = judge(side("adam", [0.970, 0.975, 0.972, 0.968, 0.974]) + side("sgd", [0.930, 0.935, 0.929, 0.940, 0.931]))
    g = v["generalization"]
    assert v["generalizes_better"] is True and v["criterion"] == "test_metric"
    assert g["kind"] == "paired" and g["p"] < 0.001 and g["lo"] < g["diff"] < g["hi"] and g["lo"] > 0 and g["d"] > 2
    assert "paired t-test" in v["text"][3] and "Cohen's d" in v["text"][3] and "adam generalizes better" in v["text"][3]


def test_noise_within_the_seeds_is_no_significant_difference():
    v = judge(side("adam", [0.90, 0.97, 0.93]) + side("sgd", [0.94, 0.91, 0.95]))
    assert v["generalizes_better"] is None and v["generalization_status"] == "no_difference"
    assert v["text"][3].startswith("No significant difference") and "95% CI" in v["text"][3]


def test_unpaired_seeds_use_welch():
    recs = side("adam", [0.97, 0.975, 0.972]) + [rec("sgd", s, x) for s, x in [(10, 0.93), (11, 0.935), (12, 0.931)]]
    v = judge(recs)
    assert v["generalization"]["kind"] == "welch" and v["generalizes_better"] is True


def test_one_seed_never_decides():
    v = judge(side("adam", [0.99], steps=[10]) + side("sgd", [0.50], steps=[1000]))
    assert v["faster"] is None and v["generalizes_better"] is None
    assert v["speed_status"] == "too_few" and v["generalization_status"] == "too_few"
    assert v["verdict"].startswith("inconclusive") and "Too few seeds" in v["text"][3]


def test_identical_full_batch_seeds_are_one_run_not_three():
    """Full-batch runs the seed does not change (sd 2e-14): no p-value, no winner."""
    a = [0.95 + k * 1e-14 for k in range(3)]
    v = judge(side("adam", a, steps=[100] * 3) + side("sgd", [0.93] * 3, steps=[300] * 3))
    assert v["generalizes_better"] is None and v["generalization_status"] == "deterministic"
    assert v["faster"] is None and v["speed_status"] == "deterministic"
    assert "Deterministic runs" in v["text"][3] and "+2.0 points" in v["text"][3] and "p=" not in v["text"][3]
    assert "too few independent seeds" in v["verdict"]


# -- failures --------------------------------------------------------------------------------


def test_diverged_seeds_are_shown_and_never_hidden_behind_a_zero_spread():
    """2 of 3 seeds diverged: the row says 1/3 ok; no "± 0.0% over 3 seeds"."""
    recs = side("adam", [0.99]) + [diverged("adam", 1), diverged("adam", 2)] + side("sgd", [0.93, 0.94, 0.935])
    rows = summarize(recs)
    adam = next(r for r in rows if r["label"] == "adam")
    assert (adam["ok"], adam["runs"], adam["diverged"]) == (1, 3, 2)
    assert adam["test_metric_sd"] is None and adam["test_metric_ci"] is None
    table = format_table(rows)
    assert "1/3" in table and "99.0% (1 seed)" in table and "± 0.0" not in table
    v = verdict(rows, "t")
    assert v["generalizes_better"] is None
    assert "1/3 seeds ok (2 diverged)" in v["text"][2]


def test_the_better_side_must_not_fail_more_often():
    recs = (side("adam", [0.97, 0.975, 0.972, 0.974]) + [diverged("adam", 4)]
            + side("sgd", [0.930, 0.935, 0.929, 0.940, 0.931]))
    v = judge(recs)
    assert v["generalization_status"] == "blocked" and v["generalizes_better"] is None
    assert "fails more often" in v["text"][3] and "adam failed in 1/5 seeds, sgd in 0/5" in v["text"][3]


def test_failing_on_every_seed_decides_when_significant():
    recs = side("adam", [0.90, 0.91, 0.92, 0.90, 0.91]) + [diverged("sgd", s) for s in range(5)]
    v = judge(recs)
    assert v["generalizes_better"] is True and v["criterion"] == "failures"
    assert v["failures"]["p"] < 0.05 and "the failures decide" in v["text"][3]
    assert v["faster"] is True  # a failed seed never reaches the target


def test_crashed_runs_count_as_failures():
    recs = side("adam", [0.9, 0.91, 0.92]) + side("sgd", [0.9, 0.9]) + [
        rec("sgd", 2, None, steps=None, error="ValueError: Invalid momentum value: -1")]
    sgd = next(r for r in summarize(recs) if r["label"] == "sgd")
    assert (sgd["ok"], sgd["errors"], sgd["diverged"]) == (2, 1, 0)
    assert "ValueError: Invalid momentum value: -1" in sgd["messages"]


# -- time to target ----------------------------------------------------------------------------


def test_never_reached_seeds_count_in_the_time_to_target():
    """adam reaches in 2/5 seeds (fast), sgd in 4/5: the old lab said "adam 1.5x faster"."""
    recs = (side("adam", [0.9] * 5, steps=[100, 100, None, None, None])
            + side("sgd", [0.9] * 5, steps=[150, 150, 150, 150, None]))
    rows = summarize(recs)
    adam = next(r for r in rows if r["label"] == "adam")
    assert adam["steps_to_target"] is None and adam["reached"] == 2  # the median seed never reached it
    v = verdict(rows, "t")
    assert v["faster"] is None and v["speed"]["kind"] == "rank"
    assert "x fewer" not in v["text"][1] and "median not reached" in v["text"][1]
    assert "not reached" in format_table(rows)


def test_reaching_in_every_seed_against_none_is_faster_with_enough_seeds():
    recs = side("adam", [0.9] * 5, steps=[100, 101, 102, 103, 104]) + side("sgd", [0.9] * 5, steps=[None] * 5)
    v = judge(recs)
    assert v["faster"] is True and v["speed"]["p"] < 0.01
    # with 3 seeds a side a rank test cannot reach 5%, and the text says so
    v = judge(recs[:3] + recs[5:8])
    assert v["faster"] is None and "cannot go below p=0.1" in v["text"][1]


def test_a_tie_is_a_tie():
    v = judge(side("adam", [0.9] * 3, steps=[595] * 3) + side("sgd", [0.9] * 3, steps=[595] * 3))
    assert v["faster"] is None and v["speed_status"] == "tie"
    assert "Equally fast" in v["text"][1] and "1x" not in " ".join(v["text"])
    assert "faster: equally fast" in v["verdict"]
    v = judge(side("adam", [0.9] * 3, steps=[590, 595, 600]) + side("sgd", [0.9] * 3, steps=[595, 595, 595]))
    assert v["speed_status"] == "tie"


def test_speed_reports_steps_and_seconds_and_a_ratio_interval():
    recs = side("adam", [0.9] * 3, steps=[100, 105, 98]) + side("sgd", [0.9] * 3, steps=[300, 310, 296])
    v = judge(recs)
    assert v["faster"] is True and v["speed"]["kind"] == "log_t"
    assert v["speed"]["ratio_lo"] < v["speed"]["ratio"] < v["speed"]["ratio_hi"] and 2.5 < v["speed"]["ratio"] < 3.5
    assert "steps" in v["text"][1] and " s)" in v["text"][1] and "fewer steps (95% CI" in v["text"][1]


# -- generalization ----------------------------------------------------------------------------


def test_generalization_is_judged_at_the_best_validation_checkpoint_when_recorded():
    """The final test score says adam; the score at the best-validation checkpoint says sgd."""
    recs = (side("adam", [0.97, 0.971, 0.972], test_metric_at_best_val=0.90)
            + side("sgd", [0.93, 0.931, 0.932], test_metric_at_best_val=0.95))
    for i, r in enumerate(recs):
        r["test_metric_at_best_val"] += 0.001 * (i % 3)
    v = judge(recs)
    assert v["criterion"] == "test_metric_at_best_val" and v["generalizes_better"] is False
    assert "at the best-validation checkpoint" in v["text"][2]
    for r in recs:
        del r["test_metric_at_best_val"]
    v = judge(recs)
    assert v["criterion"] == "test_metric" and v["generalizes_better"] is True
    assert "final test accuracy (the records have no test score at the best-validation checkpoint)" in v["text"][2]


def test_generalization_gap_uses_the_end_of_training_train_loss_when_recorded():
    recs = side("adam", [0.9, 0.91], final_train_eval_loss=0.05) + side("sgd", [0.9, 0.91], final_train_eval_loss=0.15)
    rows = summarize(recs)
    gaps = {r["label"]: (r["generalization_gap"], r["generalization_gap_exact"]) for r in rows}
    assert gaps["adam"] == (pytest.approx(0.15), True) and gaps["sgd"] == (pytest.approx(0.05), True)
    assert "approximate" not in verdict(rows, "t")["text"][-1]
    rows = summarize(side("adam", [0.9, 0.91]) + side("sgd", [0.9, 0.91]))
    assert rows[0]["generalization_gap_exact"] is False and "~0.1" in format_table(rows)
    assert "approximate" in verdict(rows, "t")["text"][-1]


def test_lower_is_better_metrics():
    kw = dict(metric="test bits per character", higher_is_better=False, target=3.0)
    v = judge(side("adam", [2.1, 2.12, 2.11], **kw) + side("sgd", [2.5, 2.52, 2.49], **kw))
    assert v["generalizes_better"] is True


# -- the statistics themselves, against scipy --------------------------------------------------


def test_stats_match_scipy():
    a, b = [0.91, 0.95, 0.93, 0.97], [0.90, 0.92, 0.89, 0.93]
    iv = stats.t_interval(a)
    lo, hi = st.t.interval(0.95, len(a) - 1, loc=np.mean(a), scale=st.sem(a))
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    w = stats.mean_difference(a, b)
    assert w.p == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    p = stats.mean_difference(a, b, paired=True)
    assert p.p == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert p.lo < p.diff < p.hi and w.lo < w.diff < w.hi
    x, y = [3.1, 1.2, 5.5, 2.2, 4.0], [6.1, 7.3, 2.9, 8.8, 9.9, 5.0]
    assert stats.rank_test(x, y)[0] == pytest.approx(st.mannwhitneyu(x, y, method="exact").pvalue)


def test_rank_test_is_exact_with_ties():
    """Three censored seeds against three reached: every arrangement of 3 of the 6 is equally
    likely, and only 2 of the 20 split them this cleanly."""
    assert stats.rank_test([math.inf] * 3, [200.0] * 3) == (pytest.approx(0.1), True)
    assert stats.rank_test_floor(3, 3) == pytest.approx(0.1)


def test_censored_median():
    assert stats.censored_median([100, 200, None]) == 200
    assert stats.censored_median([100, None, None]) is None
    assert stats.censored_median([100, 200, 300, None]) == 250
    assert stats.censored_median([100, 200, None, None]) is None
