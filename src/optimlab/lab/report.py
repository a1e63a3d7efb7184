"""The HTML report: one self-contained file (plots embedded as PNG data) with, per task, the
verdict on "Adam converges faster and generalizes better than SGD/GD" for each protocol (tuned,
one-shot), the comparison table with 95% intervals and generalization gaps, the chosen tuning
trials, the regularization sweep, and loss / metric / train-vs-validation / time-to-target plots.

    >>> path = write_report(records, "runs/report.html", pngs_dir="runs")
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
from typing import Any

from .analysis import summarize, sweep_lines, table_order, tuning_lines, verdict
from .runner import row_notes

__all__ = ["write_report", "task_figures"]


def task_figures(records: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The figures for one task: loss curves, validation metric, training vs validation loss,
    time to target (the one-shot and tuned rows, not each tuning trial), and the sweep's gap."""
    from .. import plots

    rs = [r for r in records if r["task"] == task and r.get("phase") not in ("tuning", "sweep")]
    figures = {
        "loss": plots.loss_curves(rs, title=f"{task}: training loss"),
        "metric": plots.metric_curves(rs, title=f"{task}: validation metric"),
        "target": plots.time_to_target(rs, title=f"{task}: steps to target"),
    }
    if any(e.get("train_eval_loss") is not None for r in rs for e in r.get("epochs_log") or []):
        figures["train-val"] = plots.train_val_curves(rs, title=f"{task}: training vs validation loss")
    swept = [r for r in records if r["task"] == task and r.get("phase") == "sweep"]
    if swept:
        figures["sweep"] = plots.sweep_gap(summarize(swept), title=f"{task}: generalization gap vs {swept[0]['sweep_key']}")
    if any(r.get("diagnostics") for r in rs):  # optimizer diagnostics (optimlab.diagnostics)
        figures["diagnostics"] = plots.diagnostics(rs, title=f"{task}: optimizer diagnostics")
    return figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _cell(x, pct=False):
    if x is None:
        return "–"
    return f"{100 * x:.2f}%" if pct else f"{x:.4g}"


def _ci_cell(r, key, pct=False) -> str:
    ci = r.get(f"{key}_ci")
    return _cell(r[key], pct) + (f" [{_cell(ci[0], pct)}, {_cell(ci[1], pct)}]" if ci else "")


def _table(rows, notes=None) -> str:
    notes = notes or {}
    head = ("optimizer", "protocol", "lr", "test metric at best val [95% CI]", "final test metric [95% CI]", "best val",
            "train loss (end)", "val loss (end)", "gap: val − train loss [95% CI]", "gap: train − val metric",
            "median steps to target", "median s to target", "reached", "diverged / failed", "s per run", "note")
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in table_order(rows):
        pct = r["metric"] is not None and "accuracy" in r["metric"]
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["label"], r.get("phase") or "–", _cell(r["lr"]), _ci_cell(r, "test_metric_at_best_val", pct),
            _ci_cell(r, "test_metric", pct), _cell(r["best_val_metric"], pct),
            _cell(r["final_train_eval_loss"] if r["final_train_eval_loss"] is not None else r["final_train_loss"]),
            _cell(r["final_val_loss"]), _ci_cell(r, "generalization_gap"), _cell(r["metric_gap"], pct),
            _cell(r["steps_to_target"]), _cell(r["seconds_to_target"]), f"{r['reached']}/{r['runs']}",
            r["diverged"] + r["errors"], _cell(r["seconds"]))) +
            f"<td class=note>{'<br>'.join(html.escape(n) for n in notes.get((r['task'], r['label']), []))}</td></tr>")
    out.append("</table>")
    messages = [m for r in rows for m in r["messages"]]
    if messages:
        out.append("<ul class=notes>" + "".join(f"<li>{html.escape(m)}</li>" for m in sorted(set(messages))) + "</ul>")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.verdict{background:#f6f8fa;border-left:4px solid #4a7;padding:.6em 1em}
.plots img{width:49%;min-width:420px}.notes{font-size:12px;color:#a33}td.note{text-align:left;color:#a33}
.config td{text-align:left}.config th{text-align:left}"""


def _configuration(config: dict[str, Any]) -> str:
    """The comparison's configuration as recorded in ``run.json``: command, budget, seeds,
    versions, hardware."""
    def cell(v):
        if isinstance(v, dict):
            return "; ".join(f"{k}: {cell(x)}" for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return ", ".join(map(cell, v))
        return str(v)

    keys = ("command", "tasks", "optimizers", "seeds", "budget", "lr", "workers", "versions", "hardware", "started",
            "finished", "out")
    shown = [(k, config[k]) for k in keys if config.get(k) is not None]
    return ("<h2>Configuration</h2><table class=config>" +
            "".join(f"<tr><th>{html.escape(k)}</th><td>{'<code>' if k == 'command' else ''}{html.escape(cell(v))}"
                    f"{'</code>' if k == 'command' else ''}</td></tr>" for k, v in shown) + "</table>")


def write_report(records: list[dict[str, Any]], path: str, pngs_dir: str | None = None,
                 title: str = "optimlab comparison", config: dict[str, Any] | None = None) -> str:
    """Write the report to ``path`` (and each plot as a PNG in ``pngs_dir`` if given); returns
    the path. ``config`` (the command's ``run.json``: command line, budget, seeds, versions,
    hardware) is shown at the top; each row's notes (diverged, error, stuck at chance) in its
    last column."""
    rows = summarize(records)
    notes = row_notes(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{len(records)} runs, generated {datetime.datetime.now():%Y-%m-%d %H:%M}. Each optimizer gets the "
             "same budget (epochs, batch size, tuning trials) and the same seeds; a tuned configuration is chosen on "
             "validation with tuning seeds and run on fresh ones; the test metric is read at the best-validation "
             "checkpoint and at the end; validation (and the training set, for the gap) is measured twice per epoch, "
             "which is also the resolution of the time to target. Intervals are 95% t-intervals over seeds, "
             "not clipped to the metric's range.</p>"]
    if config:
        parts.append(_configuration(config))
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task and r.get("phase") != "tuning"]
        phases = [p for p in ("tuned", "one-shot") if any(r.get("phase") == p for r in task_rows)]  # tuned first
        parts.append(f"<h2>{html.escape(task)}</h2>")
        for phase in phases or [None]:
            v = verdict(rows, task, phase)
            parts.append(f"<div class=verdict><b>{html.escape(phase + ': ') if phase else ''}Adam converges faster and "
                         f"generalizes better than SGD/GD — {html.escape(v['verdict'])}.</b><br>"
                         + "<br>".join(html.escape(t) for t in v["text"]) + "</div>")
        parts.append(_table(task_rows, notes))
        for head, lines in (("Tuning", tuning_lines(task_rows)), ("Regularization sweep", sweep_lines(task_rows))):
            if lines:
                parts.append(f"<h3>{head}</h3><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
        parts.append("<div class=plots>")
        for name, fig in task_figures(records, task).items():
            png = _png(fig)
            if pngs_dir:
                os.makedirs(pngs_dir, exist_ok=True)
                with open(os.path.join(pngs_dir, f"{task}-{name}.png"), "wb") as f:
                    f.write(png)
            parts.append(f'<img alt="{task} {name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
        parts.append("</div>")
    parts.append("</body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(parts))
    os.replace(tmp, path)
    return path
