"""Pure analysis of run records: per-configuration summaries over seeds, and a verdict on
"Adam converges faster and generalizes better than SGD/GD" that a statistician would sign.

Everything here is a function of the records (dicts from :mod:`optimlab.lab.runner`); nothing
trains, nothing plots. The numbers come from :mod:`optimlab.lab.stats`; :func:`compare`
turns them into decisions; the sentences are written last, from those decisions.

The protocol (Wilson et al. 2017; Choi et al. 2019; Schmidt et al. 2021; Dahl et al. 2023):

* **One row per configuration** (run label), and an optimizer is its own name: ``adamw`` or
  ``nadam`` are not Adam, and SGD with momentum is ``sgd`` with ``momentum`` set. The claim
  compares ``adam`` with ``sgd``.
* **Selection on validation only.** When an optimizer has several configurations, the one
  compared has the best mean ``best_val_metric`` over its successful seeds (a tie goes to the
  one that fails least, then to the one run first). The test set never chooses.
* **Equal tuning budgets.** If ``adam`` and ``sgd`` have different numbers of configurations,
  only the first N of each (in the order they were run, N the smaller count) take part, and the
  verdict says so: the best of 8 learning rates against a single one is not a fair fight.
* **Failures count.** A diverged or crashed seed is a failure; summaries show "k/n ok" and
  their statistics cover the successful seeds. Fisher's exact test on the failure counts comes
  first: a significant difference decides "generalizes better" by itself. Otherwise a side that
  wins on the metric but failed in a larger share of its seeds gets no verdict ("blocked").
* **Statistics, not spreads.** Each row has a mean and a 95% t-interval over its seeds. The
  two sides are compared with a paired t-test when the same seeds succeeded on both sides (the
  seed fixes the data split and the initialization, so the runs pair up), Welch's t-test
  otherwise, at 5% two-sided, with the difference's 95% interval and Cohen's d. Fewer than two
  seeds on a side: "too few seeds to tell". Seeds whose results are identical on each side (a
  full-batch run the seed does not change) are one run, not n: "deterministic runs", no winner.
* **Time to target uses every seed.** A seed that never reached the target (or failed) is
  censored, not dropped; medians may be "not reached". All reached: t-test on log steps (a
  ratio with its interval); otherwise Mann-Whitney U with the censored seeds ranked last.
  Steps decide (they do not depend on the machine's load); seconds are reported. Equal
  medians without a significant difference are a tie.
* **Generalization** is judged on the test metric at the best-validation checkpoint
  (``test_metric_at_best_val``) when every compared seed has it, else on the final
  ``test_metric`` -- the verdict says which. The generalization gap (validation loss minus
  training loss) uses the training loss evaluated at the end (``final_train_eval_loss``) when
  recorded; the epoch-average ``final_train_loss`` otherwise, flagged as approximate. It is
  judged on its own (the same tests, per seed) and reported next to the test metric: a
  "generalizes better" names its criterion, a "smaller gap" is a separate finding.
* **Intervals** are Student-t intervals of the mean over seeds, the same model as the tests.
  For a bounded metric (accuracy) with few seeds such an interval may reach past 100 %; it is
  shown as computed, not clipped, because clipping would hide how rough the approximation is
  (a Wilson interval describes the test set's sampling, not the seed-to-seed spread).
* **The protocol** (:mod:`optimlab.lab.tuning`) gives rows a ``phase``: one-shot rows (each
  optimizer's defaults) and tuned rows (the best of an equal number of trials, chosen on
  validation, run on fresh seeds) are judged separately (``verdict(..., phase=...)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

from . import stats

__all__ = ["summarize", "select", "compare", "verdict", "format_table", "table_order", "tuning_lines", "sweep_trends",
           "sweep_lines"]

ADAM = "adam"
SGD = "sgd"
PHASES = ("one-shot", "tuned", "sweep", "tuning")  # the protocol's phases, in the order tables show them


def _failed(r: dict) -> bool:
    return bool(r.get("error")) or bool(r.get("diverged"))


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _mean(xs) -> float | None:
    xs = [x for x in map(_num, xs) if x is not None]
    return math.fsum(xs) / len(xs) if xs else None


def _ci(iv: stats.Interval) -> list[float] | None:
    return None if iv.lo is None else [iv.lo, iv.hi]


def _summary_row(task: str, label: str, order: int, rs: list[dict]) -> dict[str, Any]:
    ok = [r for r in rs if not _failed(r)]
    first = (ok or [r for r in rs if not r.get("error")] or rs)[0]
    test = stats.t_interval([r.get("test_metric") for r in ok])
    have_at_best = bool(ok) and all(_num(r.get("test_metric_at_best_val")) is not None for r in ok)
    at_best = stats.t_interval([r.get("test_metric_at_best_val") for r in ok] if have_at_best else [])
    val = stats.t_interval([r.get("best_val_metric") for r in ok])
    exact = all(_num(r.get("final_train_eval_loss")) is not None for r in ok)
    gap = stats.t_interval([_gap(r) for r in ok])
    metric_gap = stats.t_interval([_metric_gap(r) for r in ok])
    per_seed = [{"seed": r.get("seed"), "ok": not _failed(r), "gap": _gap(r) if not _failed(r) else None,
                 "test_metric": _num(r.get("test_metric")) if not _failed(r) else None,
                 "test_metric_at_best_val": _num(r.get("test_metric_at_best_val")) if not _failed(r) else None,
                 # a failed seed counts as never reaching the target
                 "steps_to_target": None if _failed(r) else _num(r.get("steps_to_target")),
                 "seconds_to_target": None if _failed(r) else _num(r.get("seconds_to_target"))} for r in rs]
    return {
        "task": task, "label": label, "optimizer": first["optimizer"], "lr": first.get("lr"), "order": order,
        "runs": len(rs), "ok": len(ok), "errors": sum(bool(r.get("error")) for r in rs),
        "diverged": sum(bool(r.get("diverged")) and not r.get("error") for r in rs),
        "metric": first.get("metric"), "higher_is_better": first.get("higher_is_better", True),
        "target": first.get("target"),
        "test_metric": test.mean, "test_metric_sd": test.sd, "test_metric_ci": _ci(test), "test_metric_n": test.n,
        "test_metric_at_best_val": at_best.mean, "test_metric_at_best_val_sd": at_best.sd,
        "test_metric_at_best_val_ci": _ci(at_best),
        "best_val_metric": val.mean, "best_val_metric_sd": val.sd,
        "final_train_loss": _mean([r.get("final_train_loss") for r in ok]),
        "final_train_eval_loss": _mean([r.get("final_train_eval_loss") for r in ok]),
        "final_val_loss": _mean([r.get("final_val_loss") for r in ok]),
        "generalization_gap": gap.mean, "generalization_gap_ci": _ci(gap),
        "generalization_gap_exact": exact if gap.n else None,
        "metric_gap": metric_gap.mean, "metric_gap_ci": _ci(metric_gap),
        "phase": first.get("phase"), "base": first.get("base"), "trials": first.get("trials"),
        "chosen_trial": first.get("chosen_trial"), "searched": first.get("searched"),
        "hyper": first.get("hyper"), "schedule": first.get("schedule"),
        "sweep_key": first.get("sweep_key"), "sweep_value": first.get("sweep_value"),
        "reached": sum(s["steps_to_target"] is not None for s in per_seed),
        "steps_to_target": stats.censored_median([s["steps_to_target"] for s in per_seed]),
        "seconds_to_target": stats.censored_median([s["seconds_to_target"] for s in per_seed]),
        "seconds": _mean([r.get("seconds") for r in ok]),
        "per_seed": per_seed,
        "messages": sorted({r["message"] for r in rs if r.get("message") and not r.get("error")}
                           | {r["error"] for r in rs if r.get("error")}),
    }


def _gap(r: dict) -> float | None:
    """Validation loss minus training loss at the end of training: the training loss evaluated
    at the final point when recorded, else (older records, marked approximate) the last
    evaluation's running average over the steps before it."""
    train = _num(r.get("final_train_eval_loss"))
    if train is None:
        train = _num(r.get("final_train_loss"))
    val = _num(r.get("final_val_loss"))
    return None if train is None or val is None else val - train


def _metric_gap(r: dict) -> float | None:
    """Training metric minus validation metric at the end (for accuracy: how much better the
    model does on what it saw)."""
    train, val = _num(r.get("final_train_eval_metric")), _num(r.get("final_val_metric"))
    return None if train is None or val is None else train - val


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, label): success count, means with 95% t-intervals over the successful
    seeds, censored medians of the time to target over all seeds, and each seed's numbers
    (``per_seed``) for :func:`compare`. ``order`` is the position of the label's first record
    (the order the configurations were run in)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["label"])].append(r)
    rows = [_summary_row(task, label, i, rs) for i, ((task, label), rs) in enumerate(groups.items())]
    rows.sort(key=lambda r: (r["task"], r["label"]))
    return rows


def select(rows: list[dict[str, Any]], optimizer: str, first: int | None = None) -> dict[str, Any] | None:
    """The configuration of ``optimizer`` with the best mean validation metric, among its first
    ``first`` configurations in run order (all if None); a tie goes to the smaller share of
    failed seeds, then to the one run first. Rows without a validation metric come last."""
    cands = sorted((r for r in rows if r["optimizer"] == optimizer), key=lambda r: r["order"])[:first]
    if not cands:
        return None
    sign = 1 if cands[0]["higher_is_better"] else -1

    def key(r):
        v = r["best_val_metric"]
        v = float(f"{sign * v:.12g}") if v is not None else 0.0  # means that differ by rounding are a tie
        return (r["best_val_metric"] is not None, v, -(r["runs"] - r["ok"]) / max(r["runs"], 1),
                -r["order"])

    return max(cands, key=key)


def _seed_values(row: dict, key: str, only_ok: bool) -> dict[Any, float | None]:
    return {s["seed"]: s[key] for s in row["per_seed"] if s["ok"] or not only_ok}


def _pairing(a: dict, b: dict) -> list | None:
    """The shared seeds, sorted, when both sides hold exactly the same distinct seeds."""
    sa, sb = list(a), list(b)
    if None in sa or len(set(sa)) != len(sa) or set(sa) != set(sb):
        return None
    return sorted(sa, key=repr)


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Numbers and decisions for row ``a`` against row ``b`` (no sentences).

    ``speed``: a :class:`stats.TimeComparison` of steps to target over every seed, and
    ``speed_status`` one of faster / slower / tie / no_difference / too_few / deterministic /
    none_reached (for ``a``). ``failures``: a :class:`stats.FailureComparison`.
    ``criterion``: the metric judged; ``metric``: its :class:`stats.Difference` (``a - b`` in
    the metric's units); ``generalization_status`` one of better / worse / no_difference /
    too_few / deterministic / blocked; ``decided_by``: the criterion or ``"failures"``.
    ``gap``: the :class:`stats.Difference` of the generalization gaps (validation minus
    training loss at the end, per successful seed), ``gap_status`` smaller / larger /
    no_difference / too_few / deterministic (for ``a``)."""
    sign = 1 if a["higher_is_better"] else -1
    out: dict[str, Any] = {}

    steps_a, steps_b = _seed_values(a, "steps_to_target", False), _seed_values(b, "steps_to_target", False)
    seeds = _pairing(steps_a, steps_b)
    if seeds is not None:
        t = stats.time_to_target([steps_a[s] for s in seeds], [steps_b[s] for s in seeds], paired=True)
    else:
        t = stats.time_to_target(list(steps_a.values()), list(steps_b.values()))
    if t.kind == "deterministic":
        speed = "tie" if t.sign == 0 else "deterministic"
    elif t.kind in ("too_few", "none_reached"):
        speed = t.kind
    elif t.sign:
        speed = "faster" if t.sign > 0 else "slower"
    else:
        speed = "tie" if t.median_a is not None and t.median_a == t.median_b else "no_difference"
    out.update(speed=t, speed_status=speed, faster={"faster": True, "slower": False}.get(speed))

    fail = stats.failure_rates(a["runs"] - a["ok"], a["runs"], b["runs"] - b["ok"], b["runs"])
    criterion = "test_metric_at_best_val" if (a["test_metric_at_best_val"] is not None
                                              and b["test_metric_at_best_val"] is not None) else "test_metric"
    va = {k: v for k, v in _seed_values(a, criterion, True).items() if v is not None}
    vb = {k: v for k, v in _seed_values(b, criterion, True).items() if v is not None}
    seeds = _pairing(va, vb)
    if seeds is not None:
        d = stats.mean_difference([va[s] for s in seeds], [vb[s] for s in seeds], paired=True)
    else:
        d = stats.mean_difference(list(va.values()), list(vb.values()))
    rate_a, rate_b = fail.failed_a / max(fail.n_a, 1), fail.failed_b / max(fail.n_b, 1)
    decided_by = criterion
    if fail.significant:
        gen, decided_by = ("better" if rate_a < rate_b else "worse"), "failures"
    elif d.kind in ("too_few", "deterministic"):
        gen = d.kind
    elif d.significant:
        gen = "better" if sign * d.diff > 0 else "worse"
        if (rate_a > rate_b) if gen == "better" else (rate_b > rate_a):
            gen = "blocked"  # the winner on the metric fails more often
    else:
        gen = "no_difference"
    out.update(failures=fail, criterion=criterion, metric=d, generalization_status=gen, decided_by=decided_by,
               generalizes_better={"better": True, "worse": False}.get(gen))

    ga = {k: v for k, v in _seed_values(a, "gap", True).items() if v is not None}
    gb = {k: v for k, v in _seed_values(b, "gap", True).items() if v is not None}
    seeds = _pairing(ga, gb)
    if seeds is not None:
        g = stats.mean_difference([ga[s] for s in seeds], [gb[s] for s in seeds], paired=True)
    else:
        g = stats.mean_difference(list(ga.values()), list(gb.values()))
    if g.kind in ("too_few", "deterministic"):
        gap = g.kind
    else:
        gap = ("smaller" if g.diff < 0 else "larger") if g.significant else "no_difference"
    out.update(gap=g, gap_status=gap)
    return out


# ---------------------------------------------------------------------------------------------
# sentences (from the numbers above; nothing below computes a statistic)


def _is_pct(row) -> bool:
    return row["metric"] is not None and "accuracy" in row["metric"]


def _fmt(x, pct=False, digits=4):
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}g}"


def _delta(x, pct):
    if not pct:
        return f"{x:+.3g}"
    x = 100 * x
    return (f"{x:+.1f}" if abs(x) >= 0.1 or x == 0 else f"{x:+.2g}") + " points"


def _p(p):
    return f"p={p:.2g}" if p >= 1e-4 else "p<0.0001"


def _mean_ci(row, key, pct) -> str:
    m, ci = row[key], row[f"{key}_ci"]
    if m is None:
        return "no successful seed"
    if ci is None:
        return f"{_fmt(m, pct)} (one seed)"
    return f"{_fmt(m, pct)} (95% CI {_fmt(ci[0], pct)} to {_fmt(ci[1], pct)})"


def _ok_txt(row) -> str:
    txt = f"{row['ok']}/{row['runs']} seeds ok"
    why = [f"{n} {w}" for n, w in ((row["diverged"], "diverged"), (row["errors"], "crashed")) if n]
    return txt + (f" ({', '.join(why)})" if why else "")


def _budget_sentence(a, s, n_a, n_s, n, metric_name) -> str:
    if a.get("phase") == "tuned" and n_a == n_s == 1:
        searched = ", ".join(a.get("searched") or ["lr"])
        if a.get("trials") != s.get("trials"):
            return (f"Unequal tuning budgets ({a['label']}: {a.get('trials')} trials, {s['label']}: {s.get('trials')}): "
                    f"the comparison is not fair.")
        return (f"Tuned: {a['label']} and {s['label']} are each the best of {a.get('trials')} quasi-random trials "
                f"(searched: {searched}) by validation {metric_name.replace('test ', '')} on tuning seeds (never by "
                f"the test set), then run on {a['runs']} fresh seeds.")
    if a.get("phase") == "one-shot" and n_a == n_s == 1:
        return (f"One-shot: {a['label']} and {s['label']} as given, each optimizer's own defaults for the rest "
                f"(no tuning), on {a['runs']} seeds.")
    if n_a == n_s == 1:
        return f"Compared {a['label']} with {s['label']} (one configuration each)."
    chose = (f"{a['label']} and {s['label']}, each chosen by mean best validation {metric_name.replace('test ', '')} "
             f"(never by the test set)")
    if n_a == n_s:
        return f"Compared {chose}, among {n_a} {ADAM} and {n_s} {SGD} configurations."
    head = (f"Unequal tuning budgets ({n_a} {ADAM} vs {n_s} {SGD} configurations): only the first {n} of each, "
            f"in the order they were run, take part.")
    if n == 1:
        return f"{head} Compared {a['label']} with {s['label']}."
    return f"{head} Compared {chose}, among {n} of each."


def _speed_sentence(a, s, c) -> str:
    t, an, sn = c["speed"], a["label"], s["label"]

    def side(r):
        med = "median not reached" if r["steps_to_target"] is None else \
            f"median {r['steps_to_target']:g} steps, {_fmt(r['seconds_to_target'], digits=3)} s"
        return f"{r['label']} reached it in {r['reached']}/{r['runs']} seeds ({med})"

    target = a["target"]
    head = f"Speed: target {_fmt(target, _is_pct(a)) if target is not None else '-'} — {side(a)}; {side(s)}"
    status = c["speed_status"]
    if status in ("faster", "slower"):
        who = an if status == "faster" else sn
        if t.kind == "log_t":
            r = t.ratio if status == "faster" else 1 / t.ratio
            lo, hi = (t.ratio_lo, t.ratio_hi) if status == "faster" else (1 / t.ratio_hi, 1 / t.ratio_lo)
            how = f"{who} needs {r:.3g}x fewer steps (95% CI {lo:.3g}x to {hi:.3g}x, {_p(t.p)})"
        else:
            how = f"{who} is faster (Mann-Whitney U over every seed, never-reached last, {_p(t.p)})"
        return f"{head}. {how}: {'faster' if status == 'faster' else 'slower'}."
    if status == "tie":
        return f"{head}. Equally fast."
    if status == "none_reached":
        return f"{head}. Neither reached the target within the budget."
    if status == "too_few":
        return f"{head}. Too few seeds to tell (at least 2 on each side; one seed never decides)."
    if status == "deterministic":
        return (f"{head}. Deterministic runs: every seed took the same number of steps, so this is one run per "
                "side — too few independent seeds to tell.")
    floor = stats.rank_test_floor(t.n_a, t.n_b)
    if t.kind == "rank" and floor >= stats.ALPHA:
        return (f"{head}. No significant difference ({_p(t.p)}; with {t.n_a} vs {t.n_b} seeds, some never reaching "
                f"the target, a rank test cannot go below p={floor:.2g}: run more seeds).")
    return f"{head}. No significant difference in steps ({t.n_a} vs {t.n_b} seeds, {_p(t.p)})."


def _generalization_sentences(a, s, c) -> list[str]:
    pct, d, an, sn = _is_pct(a), c["metric"], a["label"], s["label"]
    metric = (a["metric"] or "test metric")
    what = (f"{metric} at the best-validation checkpoint" if c["criterion"] == "test_metric_at_best_val" else
            f"final {metric} (the records have no test score at the best-validation checkpoint)")
    head = (f"Generalization, judged on {what}: {an} {_mean_ci(a, c['criterion'], pct)}, {_ok_txt(a)}; "
            f"{sn} {_mean_ci(s, c['criterion'], pct)}, {_ok_txt(s)}.")
    status, f = c["generalization_status"], c["failures"]
    test = "paired t-test" if d.kind == "paired" else "Welch's t-test"
    if d.diff is not None and d.lo is not None:
        stat = (f"difference {_delta(d.diff, pct)} (95% CI {_delta(d.lo, pct)} to {_delta(d.hi, pct)}; {test}, "
                f"{d.n_a} vs {d.n_b} seeds, {_p(d.p)}" + (f"; Cohen's d {d.d:.2g}" if d.d is not None else "") + ")")
    else:
        stat = ""
    fails = f"{an} failed in {f.failed_a}/{f.n_a} seeds, {sn} in {f.failed_b}/{f.n_b}"
    if status in ("better", "worse") and c["decided_by"] == "failures":
        who = an if status == "better" else sn
        tail = f"{fails} (Fisher's exact {_p(f.p)}): the failures decide — {who} generalizes better."
    elif status in ("better", "worse"):
        tail = f"{stat[0].upper()}{stat[1:]}: {an if status == 'better' else sn} generalizes better."
    elif status == "blocked":
        tail = f"{stat[0].upper()}{stat[1:]}, but {fails}: the side that scores better fails more often — no verdict."
    elif status == "no_difference":
        tail = f"No significant difference: {stat}."
    elif status == "deterministic":
        tail = (f"Deterministic runs: every seed gave the same result on each side ({an} differs by "
                f"{_delta(d.diff, pct)}), so this is one run per side — too few independent seeds to tell.")
    else:
        tail = (f"Too few seeds to tell ({d.n_a} vs {d.n_b} successful seeds with a score; at least 2 on each side; "
                "one seed never decides).")
    return [head, tail]


def _gap_sentence(a, s, c) -> str | None:
    if a["generalization_gap"] is None and s["generalization_gap"] is None:
        return None
    exact = a["generalization_gap_exact"] is not False and s["generalization_gap_exact"] is not False
    note = "" if exact else (" (approximate: the records have only the epoch-average training loss, not the "
                             "training loss evaluated at the end)")
    g, status = c["gap"], c["gap_status"]
    head = (f"Generalization gap, judged on validation loss − training loss at the end{note}: {a['label']} "
            f"{_mean_ci(a, 'generalization_gap', False)}; {s['label']} {_mean_ci(s, 'generalization_gap', False)}")
    if status in ("smaller", "larger"):
        test = "paired t-test" if g.kind == "paired" else "Welch's t-test"
        who = a["label"] if status == "smaller" else s["label"]
        return (f"{head}. Difference {_delta(g.diff, False)} (95% CI {_delta(g.lo, False)} to {_delta(g.hi, False)}; "
                f"{test}, {_p(g.p)}): {who} has the smaller gap.")
    if status == "no_difference":
        return f"{head}. No significant difference in the gap ({_p(g.p)})."
    if status == "deterministic":
        return f"{head}. Deterministic runs: too few independent seeds to compare the gaps."
    return f"{head}. Too few seeds to compare the gaps."


_PARTS_FASTER = {"faster": "yes", "slower": "no", "tie": "equally fast", "no_difference": "no significant difference",
                 "too_few": "too few seeds", "deterministic": "too few independent seeds",
                 "none_reached": "neither reached the target"}
_PARTS_BETTER = {"better": "yes", "worse": "no", "no_difference": "no significant difference",
                 "too_few": "too few seeds", "deterministic": "too few independent seeds",
                 "blocked": "blocked by failures"}


def verdict(rows: list[dict[str, Any]], task: str, phase: str | None = None) -> dict[str, Any]:
    """Does "Adam converges faster and generalizes better than SGD/GD" hold on ``task``?

    ``adam`` against ``sgd``, each the validation-selected configuration of an equal number of
    tuning trials (see the module docstring for the protocol). ``phase`` (``"tuned"``,
    ``"one-shot"``, see :mod:`optimlab.lab.tuning`): judge only the rows of that phase.
    Returns ``verdict`` ("holds", "does not hold", "partly (...)", "inconclusive (...)" or
    "not tested"), ``faster`` and ``generalizes_better`` (True / False / None for no
    significant answer; judged on the test metric), ``gap_status`` (the generalization gap,
    judged separately), the sentences in ``text``, and the numbers behind them (``speed``,
    ``generalization``, ``gap``, ``failures``, ``budget``, ``criterion``)."""
    rows = [r for r in rows if r["task"] == task and (phase is None or r.get("phase") == phase)]
    n_a = sum(r["optimizer"] == ADAM for r in rows)
    n_s = sum(r["optimizer"] == SGD for r in rows)
    if not n_a or not n_s:
        return {"task": task, "phase": phase, "verdict": "not tested", "faster": None, "generalizes_better": None,
                "gap_status": None, "text": [
            f"The comparison needs runs of {ADAM} and of {SGD} on this task (other Adam variants such as adamw "
            "are optimizers of their own, not stand-ins)."]}
    n = min(n_a, n_s)
    adam, sgd = select(rows, ADAM, n), select(rows, SGD, n)
    c = compare(adam, sgd)
    text = [_budget_sentence(adam, sgd, n_a, n_s, n, adam["metric"] or "metric"), _speed_sentence(adam, sgd, c),
            *_generalization_sentences(adam, sgd, c)]
    gap = _gap_sentence(adam, sgd, c)
    if gap:
        text.append(gap)
    faster, better = c["faster"], c["generalizes_better"]
    unequal = adam.get("phase") == "tuned" and adam.get("trials") != sgd.get("trials")
    if unequal:
        faster = better = None
    detail = (f"faster: {_PARTS_FASTER[c['speed_status']]}; "
              f"generalizes better: {_PARTS_BETTER[c['generalization_status']]}")
    if unequal:
        v = "inconclusive (unequal tuning budgets)"
    elif faster is True and better is True:
        v = "holds"
    elif faster is False and better is False:
        v = "does not hold"
    elif faster is None and better is None:
        v = f"inconclusive ({detail})"
    else:
        v = f"partly ({detail})"
    return {"task": task, "phase": phase, "verdict": v, "faster": faster, "generalizes_better": better,
            "gap_status": c["gap_status"], "gap": dataclasses.asdict(c["gap"]), "adam": adam["label"],
            "sgd": sgd["label"], "text": text, "criterion": c["decided_by"],
            "budget": {ADAM: n_a, SGD: n_s, "compared": n, "equal": n_a == n_s and not unequal,
                       **({"trials": {ADAM: adam.get("trials"), SGD: sgd.get("trials")}} if adam.get("phase") == "tuned"
                          else {})},
            "speed": dataclasses.asdict(c["speed"]), "speed_status": c["speed_status"],
            "generalization": dataclasses.asdict(c["metric"]), "generalization_status": c["generalization_status"],
            "failures": dataclasses.asdict(c["failures"])}


def _hyper_txt(row) -> str:
    """The searched hyperparameters of a tuned row (β1 for ``betas``)."""
    h, searched = dict(row.get("hyper") or {}), row.get("searched") or []
    if "betas" in h and "momentum" in searched:
        h["beta1"] = h["betas"][0]
    parts = [f"{k}={_fmt(v, digits=3) if isinstance(v, float) else v}" for k, v in sorted(h.items())
             if k in searched or k == "beta1"]
    if row.get("schedule") or "schedule" in searched:
        parts.append(f"schedule={row.get('schedule') or 'constant'}")
    return ", ".join(parts)


def tuning_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per tuned row: the chosen trial, its searched hyperparameters and how many
    trials it was chosen from."""
    return [f"{r['task']} {r['label']}: trial {r['chosen_trial']} of {r['trials']} ({_hyper_txt(r)}), chosen on "
            f"validation" for r in rows if r.get("phase") == "tuned"]


def sweep_trends(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The regularization sweep per (task, optimizer string, option): its rows in value order
    and whether the gap (validation − training loss at the end) changed from the smallest
    value to the largest -- ``gap_change``, a :class:`stats.Difference` (a paired t-test over
    the shared seeds, Welch's otherwise), and ``status`` closes / widens / no_difference /
    too_few / deterministic."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        if r.get("phase") == "sweep":
            groups[(r["task"], r.get("base"), r["sweep_key"])].append(r)
    out = []
    for (task, base, key), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["sweep_value"])
        lo = {s["seed"]: s["gap"] for s in rs[0]["per_seed"] if s["gap"] is not None}
        hi = {s["seed"]: s["gap"] for s in rs[-1]["per_seed"] if s["gap"] is not None}
        seeds = _pairing(hi, lo)
        d = (stats.mean_difference([hi[k] for k in seeds], [lo[k] for k in seeds], paired=True) if seeds is not None
             else stats.mean_difference(list(hi.values()), list(lo.values())))
        if d.kind in ("too_few", "deterministic"):
            status = d.kind
        else:
            status = ("closes" if d.diff < 0 else "widens") if d.significant else "no_difference"
        out.append({"task": task, "base": base, "key": key, "rows": rs, "gap_change": d, "status": status})
    return out


def sweep_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per :func:`sweep_trends` entry: each value's test metric (at the
    best-validation checkpoint when recorded) and gap with its 95% interval, then the trend."""
    out = []
    for t in sweep_trends(rows):
        rs, key, d = t["rows"], t["key"], t["gap_change"]
        pct = _is_pct(rs[0])

        def cell(r):
            test = r["test_metric_at_best_val"] if r["test_metric_at_best_val"] is not None else r["test_metric"]
            ci = r["generalization_gap_ci"]
            ci = f" [{_fmt(ci[0], digits=3)}, {_fmt(ci[1], digits=3)}]" if ci else ""
            return f"{key}={r['sweep_value']:g}: test {_fmt(test, pct)}, gap {_fmt(r['generalization_gap'], digits=3)}{ci}"

        span = f"from {key}={rs[0]['sweep_value']:g} to {rs[-1]['sweep_value']:g}"
        if t["status"] in ("too_few", "deterministic"):
            trend = "too few independent seeds to tell whether the gap changes"
        elif t["status"] == "no_difference":
            trend = f"no significant change in the gap {span} ({_p(d.p)})"
        else:
            trend = f"the gap {t['status']} by {abs(d.diff):.3g} {span} ({_p(d.p)})"
        out.append(f"{t['task']} {t['base']}: " + "; ".join(cell(r) for r in rs) + f" — {trend}.")
    return out


def table_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as tables show them: by task, then protocol phase (one-shot, tuned, sweep), then label."""
    if not any(r.get("phase") for r in rows):
        return rows
    return sorted(rows, key=lambda r: (r["task"], PHASES.index(r["phase"]) if r.get("phase") in PHASES else len(PHASES),
                                       r["label"]))


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of summary rows: success count, test metric with its 95% interval
    over the successful seeds (final, and at the best-validation checkpoint when recorded),
    validation, generalization gap (``~`` = approximate), censored median time to target."""
    phased = any(r.get("phase") for r in rows)
    head = ["task", "optimizer", *(["protocol"] if phased else []), "lr", "ok", "test metric [95% CI]", "test @best val",
            "best val", "val-train loss", "steps->target", "s->target", "reached"]
    lines = [head]
    for r in table_order(rows):
        pct = _is_pct(r)

        def cell(key):
            m, ci = r[key], r[f"{key}_ci"]
            if m is None:
                return "-"
            return _fmt(m, pct) + (f" [{_fmt(ci[0], pct)}, {_fmt(ci[1], pct)}]" if ci else " (1 seed)")

        gap = _fmt(r["generalization_gap"], digits=3)
        if r["generalization_gap"] is not None and not r["generalization_gap_exact"]:
            gap = "~" + gap
        steps = "not reached" if r["steps_to_target"] is None and r["runs"] else _fmt(r["steps_to_target"])
        lines.append([r["task"], r["label"], *([r.get("phase") or "-"] if phased else []), _fmt(r["lr"]),
                      f"{r['ok']}/{r['runs']}", cell("test_metric"),
                      cell("test_metric_at_best_val"), _fmt(r["best_val_metric"], pct), gap, steps,
                      _fmt(r["seconds_to_target"], digits=3), f"{r['reached']}/{r['runs']}"])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
