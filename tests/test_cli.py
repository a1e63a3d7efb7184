"""The command line as a user meets it: the real ``python -m optimlab`` in a subprocess for
every user-facing check (bad input, help, --version, output folders, Ctrl-C, kill -9)."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import optimlab
from optimlab.cli import build_parser, main
from optimlab.lab.runner import RunSpec, parse_optimizer, row_notes, run_one, split_optimizers


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "optimlab", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_optimizers_lists_the_registry(capsys):
    assert main(["optimizers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == optimlab.names()
    assert next(r for r in rows if r["name"] == "sgd")["defaults"]["lr"] == 1e-3


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "optimlab", "optimizers"], capture_output=True, text=True, check=True)
    assert "adamw" in out.stdout and "torch.optim.AdamW" in out.stdout


# --- a user's mistake: one line, exit 2, nothing computed ------------------------------------------------
# each row of issue 13's table through the real CLI; the other values of a row, and the other
# commands' checks, through main() in this process (the same code, without a torch import each)
BAD_INPUT_CLI = {
    "misspelt option": (["compare", "--optimizers", "adam:lrr=1e-3"], ["'adam:lrr=1e-3'", "did you mean lr="]),
    "one bad among good": (["compare", "--optimizers", "sgd:lr=0.1,momentum=0.9,sgd:lr=-0.1,rmsprop"],
                           ["'sgd:lr=-0.1'", "-0.1"]),
    "no seeds": (["compare", "--seeds", "0"], ["--seeds", "0 is not allowed", "at least 1"]),
    "unclosed tuple": (["compare", "--optimizers", "adam:betas=(0.9,0.99"], ["unclosed", "betas=(0.9,0.99)"]),
}
BAD_INPUT = {
    "negative lr": (["compare", "--optimizers", "sgd:lr=-0.1"], ["'sgd:lr=-0.1'", "-0.1"]),
    "lr not a number": (["compare", "--optimizers", "sgd:lr=abc"], ["'abc'", "number"]),
    "negative seeds": (["compare", "--seeds", "-2"], ["--seeds", "-2 is not allowed"]),
    "negative epochs": (["compare", "--epochs", "-1"], ["--epochs", "-1 is not allowed"]),
    "zero epochs": (["compare", "--epochs", "0"], ["--epochs", "0 is not allowed"]),
    "zero workers": (["compare", "--workers", "0"], ["--workers", "0 is not allowed"]),
    "unknown task": (["compare", "--task", "digitz"], ["'digitz'", "did you mean"]),
    "no optimizer before option": (["compare", "--optimizers", "lr=0.1,adam"], ["'lr=0.1'", "sgd:lr=0.1"]),
    "optimizer that cannot take the model": (["compare", "--task", "digits-cnn", "--optimizers", "muon"],
                                             ["'muon'", "2D parameters"]),
    "empty --out": (["compare", "--out", ""], ["--out is empty"]),
    "negative trials": (["compare", "--trials", "-1"], ["--trials", "-1 is not allowed"]),
    "unknown tuning dimension": (["compare", "--tune", "lr,beta2"], ["--tune", "beta2", "momentum"]),
    "sweep without values": (["compare", "--sweep", "weight_decay"], ["weight_decay=0,1e-4"]),
    "sweep of an option the optimizer lacks": (["compare", "--optimizers", "sgd", "--sweep", "decay=0,1e-3"],
                                               ["'sgd:decay=0.0'", "decay"]),
    "sweep of dropout": (["compare", "--sweep", "dropout=0,0.1"], ["no dropout"]),
    "lr-find: bad momentum": (["lr-find", "--optimizer", "sgd:momentum=-1"], ["'sgd:momentum=-1'", "momentum"]),
    "lr-find: end below start": (["lr-find", "--start", "1", "--end", "0.1"], ["--end 0.1", "--start 1"]),
    "lr-sweep: bad rates": (["lr-sweep", "--lrs", "1e-3,abc"], ["--lrs", "1e-3,abc"]),
    "lr-sweep: lr given": (["lr-sweep", "--optimizers", "sgd:lr=0.1"], ["drop lr="]),
    "trajectories: unknown function": (["trajectories", "--function", "nope"], ["'nope'", "rosenbrock"]),
    "trajectories: no steps": (["trajectories", "--steps", "0"], ["--steps", "0 is not allowed"]),
}


def _assert_one_line_error(returncode, stdout, stderr, fragments, where):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("optimlab") and "error:" in lines[0]
    for f in fragments:
        assert f in lines[0]
    assert stdout == ""
    assert sorted(os.listdir(where)) in ([], ["file"])  # no output folder: nothing ran


@pytest.mark.parametrize("case", list(BAD_INPUT_CLI))
def test_bad_input_is_one_line_before_any_compute(case, tmp_path):
    args, fragments = BAD_INPUT_CLI[case]
    res = cli(*args, cwd=tmp_path)
    _assert_one_line_error(res.returncode, res.stdout, res.stderr, fragments, tmp_path)


def test_unwritable_out_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = str(tmp_path / "file" / "runs")
    res = cli("compare", "--task", "rosenbrock", "--out", out, cwd=tmp_path)
    _assert_one_line_error(res.returncode, res.stdout, res.stderr, ["cannot write to --out", out], tmp_path)


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_in_process(case, tmp_path, monkeypatch, capsys):
    args, fragments = BAD_INPUT[case]
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own checks exit
        code = e.code
    out = capsys.readouterr()
    _assert_one_line_error(code, out.out, out.err, fragments, tmp_path)


# --- help and version -------------------------------------------------------------------------------------
def test_version():
    res = cli("--version")
    assert res.returncode == 0
    assert res.stdout.startswith(f"optimlab {optimlab.__version__} (torch ")


def test_help_is_for_users():
    res = cli("--help")
    assert res.returncode == 0 and "Traceback" not in res.stderr
    assert "compares PyTorch optimizers" in res.stdout and "registers the subcommands" not in res.stdout
    for name in ("compare", "trajectories", "lr-find", "lr-sweep", "tasks", "optimizers", "--version"):
        assert name in res.stdout
    res = cli("trajectories", "--help")
    assert res.returncode == 0 and "optimizer steps (default 500)" in res.stdout and "examples:" in res.stdout


def _parsers(parser, path=("optimlab",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_argument_of_every_command_has_help():
    seen = 0
    for path, parser in _parsers(build_parser()):
        assert parser.description, path
        for action in parser._actions:
            assert action.help and action.help != argparse.SUPPRESS, (path, action.option_strings or action.dest)
            seen += 1
    assert seen > 50


# --- optimizer strings ------------------------------------------------------------------------------------
def test_tuples_in_brackets_keep_their_commas():
    text = "adam:lr=1e-3,betas=(0.9,0.99),sgd:lr=0.1,momentum=0.9,adamw:betas=[0.9, 0.95],nadam:betas=(0.9/0.99)"
    specs = split_optimizers(text)
    assert specs == ["adam:lr=1e-3,betas=(0.9,0.99)", "sgd:lr=0.1,momentum=0.9", "adamw:betas=[0.9, 0.95]",
                     "nadam:betas=(0.9/0.99)"]
    assert parse_optimizer(specs[0]) == ("adam", {"lr": 1e-3, "betas": (0.9, 0.99)})
    assert parse_optimizer(specs[2])[1]["betas"] == (0.9, 0.95)
    assert parse_optimizer(specs[3])[1]["betas"] == (0.9, 0.99)


def test_a_run_that_raises_says_why():
    rec = run_one(RunSpec("rosenbrock", "sgd", (("lr", -1.0),), epochs=2, label="bad"))
    assert rec["error"] and rec["note"].startswith("error: ValueError:") and "-1" in rec["note"]
    two = [dict(rec, seed=1), dict(rec, seed=0)]
    assert row_notes(two) == {("rosenbrock", "bad"): [f"seed 0: {rec['note']}", f"seed 1: {rec['note']}"]}


# --- a comparison in its own folder, with its configuration; --json; resume ---------------------------------
@pytest.mark.slow
def test_compare_folders_notes_json_and_resume(tmp_path):
    args = ["compare", "--task", "digits-mlp", "--optimizers", "sgd:lr=100,sgd:lr=1e-9,adam:lr=1e-3,betas=(0.9,0.99)",
            "--seeds", "1", "--epochs", "1", "--workers", "2", "--trials", "0"]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # each row says why it failed, in the table
    rows = {line.split()[1]: line for line in first.stdout.splitlines() if line.startswith("digits-mlp")}
    assert "diverged at step" in rows["sgd:lr=100"] and "lower lr" in rows["sgd:lr=100"]
    assert "stuck at chance" in rows["sgd:lr=1e-9"]
    assert "diverged" not in rows["adam:lr=1e-3,betas=(0.9,0.99)"]
    assert "run/s" in first.stderr or "it/s" in first.stderr or "%|" in first.stderr  # the progress bar

    second = cli(*args, "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)  # stdout is JSON only; progress went to stderr
    assert "%|" in second.stderr
    folders = sorted(os.listdir(tmp_path / "runs" / "compare"))
    assert len(folders) == 2 and all(f.startswith("digits-mlp-") for f in folders)
    assert os.path.normpath(summary["out"]) == os.path.join("runs", "compare", folders[1])
    notes = summary["tasks"]["digits-mlp"]["optimizers"]["sgd:lr=100"]["notes"]
    assert notes and notes[0].startswith("diverged at step")

    for folder in folders:
        out = tmp_path / "runs" / "compare" / folder
        run = json.loads((out / "run.json").read_text())
        assert run["status"] == "done" and run["runs"]["total"] == 3
        assert run["command"].startswith("optimlab compare --task digits-mlp")
        assert run["seeds"] == [0] and run["budget"]["digits-mlp"] == {"epochs": 1, "batch_size": 32}
        assert run["versions"]["optimlab"] == optimlab.__version__ and run["versions"]["torch"]
        assert run["versions"]["python"] and run["hardware"]["cpu"] and run["hardware"]["cores"] >= 1
        assert run["hardware"]["threads_per_run"] == 1
        assert len((out / "records.jsonl").read_text().splitlines()) == 3  # not appended to by the other
        html = (out / "report.html").read_text()
        assert "Configuration" in html and run["versions"]["torch"] in html and "betas=(0.9,0.99)" in html
        assert "diverged at step" in html and "stuck at chance" in html

    again = cli(*args, "--out", os.path.join("runs", "compare", folders[0]), cwd=tmp_path)
    assert again.returncode == 0 and "resuming: 3 already recorded" in again.stderr
    assert len((tmp_path / "runs" / "compare" / folders[0] / "records.jsonl").read_text().splitlines()) == 3
    assert len(os.listdir(tmp_path / "runs" / "compare")) == 2


# --- Ctrl-C and kill -9 ------------------------------------------------------------------------------------
def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, cwd):
    # started as from a terminal: Ctrl-C's default action. A process inherits an ignored SIGINT
    # (Python then installs no KeyboardInterrupt handler), and a pytest-xdist worker may have it
    # ignored: measured, the compare then ran to the end and exited 0
    return subprocess.Popen([sys.executable, "-m", "optimlab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, start_new_session=True, preexec_fn=_default_sigint)


def _wait_for(cond, proc, timeout=120.0):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def _lines(path):
    return open(path).read().splitlines() if os.path.exists(path) else []


@pytest.mark.slow
def test_ctrl_c_stops_at_once_keeps_what_finished_and_says_how_to_resume(tmp_path):
    args = ["compare", "--task", "digits-mlp", "--optimizers", "sgd:lr=0.1,adam", "--seeds", "4", "--epochs", "8",
            "--workers", "2", "--out", "cmp", "--trials", "0"]
    records = tmp_path / "cmp" / "records.jsonl"
    proc = _start(args, tmp_path)
    _wait_for(lambda: len(_lines(records)) >= 1, proc)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    _, err = proc.communicate(timeout=30)
    took = time.time() - t0
    assert proc.returncode == 130 and "Traceback" not in err
    assert took < 5, took
    saved = _lines(records)
    assert 1 <= len(saved) < 8
    assert f"{len(saved)}/8 runs saved in cmp; run the same command again to finish" in err
    assert json.loads((tmp_path / "cmp" / "run.json").read_text())["status"] == "interrupted"

    again = subprocess.run([sys.executable, "-m", "optimlab", *args, "--json"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and f"resuming: {len(saved)} already recorded" in again.stderr
    final = _lines(records)
    assert final[:len(saved)] == saved and len(final) == 8  # the saved runs were kept, not run again
    assert json.loads(again.stdout)["tasks"]["digits-mlp"]["optimizers"]["adam"]["seeds"] == 4


def _children(pid):
    """Every live descendant of ``pid`` (Linux /proc; zombies count as gone)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            table[int(d)] = (state, int(ppid))
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (state, ppid) in table.items() if ppid in frontier and p not in out and state != "Z"}
        out |= frontier
    return out


def _gone(pids):
    alive = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(p)
        except OSError:
            pass
    return not alive


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_the_main_process(tmp_path):
    args = ["compare", "--task", "digits-mlp", "--optimizers", "sgd:lr=0.1,adam", "--seeds", "2", "--epochs", "200",
            "--workers", "2", "--quiet", "--out", "cmp", "--trials", "0"]
    proc = _start(args, tmp_path)
    ckpts = tmp_path / "cmp" / "checkpoints"
    # a checkpoint is written after a run's first epoch: the workers are up and training
    _wait_for(lambda: ckpts.exists() and len(os.listdir(ckpts)) >= 2, proc)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while not _gone(workers) and time.time() - t0 < 10:
        time.sleep(0.1)
    leftover = [p for p in workers if not _gone([p])]
    for p in leftover:
        os.kill(p, signal.SIGKILL)
    assert not leftover, f"still running {time.time() - t0:.1f} s after kill -9: {leftover}"
