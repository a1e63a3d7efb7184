"""Comparing optimizers on the user's own model and data: ``Task.from_data``, tasks given as
``"module:function"`` (resolved by name in each worker, also under the *spawn* start method),
Task objects in the Python API, and the one-line LR finder ``optimlab.find_lr``."""

import json
import os
import subprocess
import sys
import uuid

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import optimlab
from optimlab.cli import main
from optimlab.lab import Task, get_task, grid, lr_sweep, run_all
from optimlab.lab.runner import _for_workers
from optimlab.lab.tasks import TASKS

USER_MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn
from optimlab.lab import Task


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x):
        return self.body(x)


def make_task():
    return Task.from_data("tiny", model=Net, loss=F.cross_entropy, metric="accuracy",
                          train=blobs(256, 0), val=blobs(64, 1), test=blobs(64, 2), epochs=2, batch_size=32)


def not_a_task():
    return 42
'''


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _net():
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's, on the path of this process and of subprocesses; a fresh name
    each time (imports and resolved tasks are cached per process)."""
    name = f"mytasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "optimlab", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.slow
def test_cli_compares_optimizers_on_a_module_function_task_under_spawn(user_module, tmp_path):
    out = tmp_path / "out"
    res = _cli("compare", "--task", f"{user_module}:make_task", "--optimizers", "sgd:lr=0.1,adam:lr=1e-2",
               "--seeds", "2", "--epochs", "2", "--trials", "0", "--workers", "2", "--out", str(out), "--json", "--quiet",
               cwd=tmp_path.parent, env={"PYTHONPATH": str(tmp_path), "OPTIMLAB_START_METHOD": "spawn"})
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert set(summary["tasks"]["tiny"]["optimizers"]) == {"sgd:lr=0.1", "adam:lr=1e-2"}
    assert summary["tasks"]["tiny"]["verdict"] != "not tested"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["error"] is None and r["task"] == "tiny" for r in records)
    assert {(r["phase"], r["optimizer"], r["seed"]) for r in records} == \
        {("one-shot", o, s) for o in ("sgd", "adam") for s in (0, 1)}
    assert all(r["epochs"] == 2 and r["final_val_metric"] > 0.5 for r in records)


def test_cli_explains_a_bad_module_function_in_one_line(user_module, tmp_path, capsys, monkeypatch):
    # the real program, run from the module's folder without PYTHONPATH: it looks there too
    res = _cli("lr-find", "--task", f"{user_module}:make_tsk", "--out", str(tmp_path / "lrf"), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("optimlab lr-find: error: task ") and \
        f"has no function 'make_tsk'; did you mean {user_module}:make_task?" in res.stderr, res.stderr
    bad = {"nosuchmodule_xyz:make_task": "no module named 'nosuchmodule_xyz'",
           f"{user_module}:not_a_task": "not_a_task() returned int, not an optimlab.lab.Task",
           "nocolon": "unknown task 'nocolon'"}
    for command in ("compare", "lr-sweep", "lr-find"):
        for ref, message in bad.items():
            assert main([command, "--task", ref, "--out", str(tmp_path / "o")]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(f"optimlab {command}: error: ") and message in err, err
    monkeypatch.setenv("OPTIMLAB_START_METHOD", "spoon")
    assert main(["compare", "--task", f"{user_module}:make_task", "--out", str(tmp_path / "o")]) == 2
    assert "start method 'spoon'" in capsys.readouterr().err


def test_get_task_resolves_module_function_once_and_grid_keeps_the_reference(user_module):
    ref = f"{user_module}:make_task"
    task = get_task(ref)
    assert isinstance(task, Task) and task.name == "tiny" and task.ref == ref
    assert get_task(ref) is task  # resolved once per process
    specs = grid([task], ["sgd:lr=0.1"], seeds=2) + grid(ref, ["sgd:lr=0.1"], seeds=2)
    assert [s.task for s in specs] == [ref] * 4  # workers resolve it by name
    assert specs[0].key == specs[2].key  # the object and its reference are the same runs


def test_grid_and_lr_sweep_take_a_task_object(tmp_path):
    task = Task.from_data("own", model=_net, loss=F.cross_entropy, metric="accuracy", train=_blobs(128, 0),
                          val=_blobs(64, 1), epochs=2, batch_size=32)
    records = run_all(grid(task, ["sgd:lr=0.1", "adam:lr=1e-2"], seeds=1), str(tmp_path / "r.jsonl"), workers=1)
    assert [(r["task"], r["optimizer"], r["error"]) for r in records] == [("own", "sgd", None), ("own", "adam", None)]
    assert all(r["steps"] == 2 * 4 and r["test_metric"] is not None for r in records)  # 128 / 32 steps an epoch
    sweep = lr_sweep(task, ["sgd"], lrs=[1e-3, 0.3], epochs=1, workers=1, path=str(tmp_path / "sweep.jsonl"))
    assert sweep.task == "own" and [r["lr"] for r in sweep.rows["sgd"]] == [1e-3, 0.3]
    assert all(r["final_loss"] is not None for r in sweep.rows["sgd"]) and sweep.best_lr["sgd"] is not None


def test_a_task_built_from_lambdas_under_spawn_fails_up_front_with_the_fix(tmp_path):
    task = Task.from_data("lam", model=lambda: nn.Linear(4, 2), loss=F.cross_entropy, train=_blobs(64, 0))
    path = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match=r"task 'lam' cannot be sent to worker processes .*module level.*"
                                         r"'module:make_task'"):
        run_all(grid([task], ["sgd", "adam"]), str(path), workers=2, start_method="spawn")
    assert not path.exists() or path.read_text() == ""  # nothing ran
    with pytest.raises(ValueError, match="start method 'spoon'"):
        run_all(grid([task], ["sgd"]), str(path), workers=2, start_method="spoon")


def test_a_registered_task_travels_as_an_object_unless_workers_fork():
    task = Task.from_data("registered-own", model=_net, loss=F.cross_entropy, train=_blobs(64, 0))
    TASKS[task.name] = task
    try:
        specs = grid(["registered-own", "digits-mlp"], ["sgd"])
        assert [s.task for s in _for_workers(specs, "fork")] == ["registered-own", "digits-mlp"]
        spawned = _for_workers(specs, "spawn")
        assert spawned[0].task is task and spawned[1].task == "digits-mlp"
        assert [s.key for s in spawned] == [s.key for s in specs]
    finally:
        del TASKS[task.name]


def test_from_data_reads_a_dataloader_and_explains_mistakes():
    x, y = _blobs(100, 0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=25, shuffle=False)
    task = Task.from_data("own", model=_net, loss=F.cross_entropy, train=loader)
    data = task.data(0)
    assert torch.equal(data.train[0], x) and torch.equal(data.val[1], y)  # no val or test: the training data
    assert task.batch_size == 25 and task.metric_name == "test loss" and not task.higher_is_better
    assert task.metric(*_forward(task, data)) > 0
    with pytest.raises(TypeError, match="not a built model"):
        Task.from_data("own", model=_net(), loss=F.cross_entropy, train=(x, y))
    with pytest.raises(ValueError, match="100 inputs but 99 targets"):
        Task.from_data("own", model=_net, loss=F.cross_entropy, train=(x, y[:99]))


def _forward(task, data):
    return task.model(0)(data.val[0]), data.val[1]


def test_find_lr_on_a_dataloader_suggests_a_finite_rate_and_restores_the_model():
    torch.manual_seed(0)
    x, y = _blobs(512, 0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    res = optimlab.find_lr(model, opt, nn.CrossEntropyLoss(), loader)
    assert "find_lr" in optimlab.__all__
    assert res.suggested_lr is not None and 1e-7 < res.suggested_lr < 100
    assert len(res.lrs) > 20  # the loader (16 batches) was cycled
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {} and opt.param_groups[0]["lr"] == 1e-3


def test_find_lr_says_when_a_one_shot_iterator_runs_out():
    x, y = _blobs(64, 0)
    model = _net()
    batches = iter([(x[:32], y[:32]), (x[32:], y[32:])])
    with pytest.raises(ValueError, match="ran out after 2 batches: pass a DataLoader"):
        optimlab.find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, batches)

