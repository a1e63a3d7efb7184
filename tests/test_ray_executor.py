"""The lab on Ray (``run_all(executor="ray")``, ``--executor ray``): each run a Ray task on a
local Ray instance started here, the records the same as the local process pool's (every field
but the timings), already-recorded runs skipped, an interrupt cancelling the tasks still running,
and Ray never imported by ``import optimlab``. Ray is in the README's install (``.[test,ray]``)."""

import json
import os
import subprocess
import sys
import time

import pytest
import ray

from optimlab.cli import main
from optimlab.lab import RayExecutor, grid, load_records, run_all
from optimlab.lab.executors import get_executor

USER_MODULE = '''
import time

import torch
import torch.nn.functional as F
from torch import nn
from optimlab.lab import Task


def echo_after(item):
    time.sleep(item[0])
    return item[1]


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def make_task():
    return Task.from_data("ray-blobs", model=lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)),
                          loss=F.cross_entropy, metric="accuracy", train=blobs(128, 0), val=blobs(32, 1),
                          test=blobs(32, 2), epochs=2, batch_size=32)
'''

TIMING = {"seconds", "wall_seconds", "seconds_to_target"}  # differ from run to run, wherever it runs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray instance with 2 CPUs whose workers, like this process, import the user's
    task module from its folder (as a user's own tasks come from PYTHONPATH)."""
    folder = tmp_path_factory.mktemp("user_tasks")
    (folder / "ray_user_tasks.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(folder)}})
    yield
    ray.shutdown()
    sys.path.remove(str(folder))


def _specs():
    return grid(["breast-cancer-logreg", "ray_user_tasks:make_task"], ["sgd:lr=0.5", "adam:lr=0.05"], seeds=2,
                epochs=3)


def _deterministic(obj):
    """A record without its timings (nested ones too: the epochs' logs, the cost)."""
    if isinstance(obj, dict):
        return {k: _deterministic(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_deterministic(v) for v in obj]
    return obj


def test_ray_records_match_the_local_pool_and_resume_skips_recorded_runs(cluster, tmp_path, monkeypatch):
    specs = _specs()
    local = run_all(specs, str(tmp_path / "local.jsonl"), workers=2)
    assert all(r["error"] is None for r in local), [r["error"] for r in local]
    # an interrupted comparison: every other run already recorded (marked, to see it is not run again)
    path = tmp_path / "ray.jsonl"
    seeded = [dict(r, marker=i) for i, r in enumerate(local) if i % 2 == 0]
    path.write_text("".join(json.dumps(r) + "\n" for r in seeded))

    sent = []
    run = RayExecutor.run
    monkeypatch.setattr(RayExecutor, "run", lambda self, fn, items, *a: (sent.extend(items), run(self, fn, items, *a)))
    records = run_all(specs, str(path), executor="ray")

    assert sorted(s.key for s in sent) == sorted(s.key for i, s in enumerate(specs) if i % 2)  # missing ones, on Ray

    assert [r["key"] for r in records] == [s.key for s in specs]
    assert len(load_records(str(path))) == len(specs)  # only the missing runs were appended
    for i, (mine, ref) in enumerate(zip(records, local)):
        assert ("marker" in mine) == (i % 2 == 0)
        assert _deterministic(mine) == _deterministic(dict(ref, **({"marker": i} if i % 2 == 0 else {})))
    assert {r["task"] for r in records} == {"breast-cancer-logreg", "ray-blobs"}
    sent.clear()
    assert run_all(specs, str(path), executor=RayExecutor()) == records  # nothing left: nothing runs
    assert sent == []


def test_an_interrupt_cancels_the_running_tasks(cluster):
    cpus = ray.cluster_resources()["CPU"]
    seen = []

    def on_result(result):
        seen.append(result)
        raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):  # the first (0 s) ends; the two sleeping 60 s are cancelled
        RayExecutor().run(time.sleep, [0, 60, 60], (), on_result, workers=2)
    assert seen == [None]
    deadline = time.perf_counter() + 20
    while ray.available_resources().get("CPU", 0) < cpus and time.perf_counter() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == cpus  # the cancelled tasks hold no CPU
    assert time.perf_counter() - t0 < 30


def test_workers_caps_the_tasks_in_flight(cluster):
    """``workers=1``: one task at a time, so the slow first one comes back before the quick ones."""
    from ray_user_tasks import echo_after

    order = []
    RayExecutor().run(echo_after, [(0.6, "a"), (0.0, "b"), (0.0, "c")], (), order.append, workers=1)
    assert order == ["a", "b", "c"]
    with pytest.raises(ValueError, match="workers=0"):
        RayExecutor().run(echo_after, [(0, "a")], (), order.append, workers=0)


def test_bad_executor_and_missing_ray_are_clear(monkeypatch, tmp_path, capsys):
    with pytest.raises(ValueError, match="'spark'.*'local', 'ray'"):
        get_executor("spark")
    with pytest.raises(ValueError, match="cpus_per_run=0"):
        RayExecutor(cpus_per_run=0)
    out = str(tmp_path / "cli")
    assert main(["compare", "--task", "breast-cancer-logreg", "--optimizers", "sgd", "--seeds", "1",
                 "--ray-address", "auto", "--out", out]) == 2
    assert "--ray-address auto needs --executor ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'optimlab\[ray\]'"):
        run_all(_specs()[:1], str(tmp_path / "r.jsonl"), executor="ray")
    assert main(["compare", "--task", "breast-cancer-logreg", "--optimizers", "sgd", "--seeds", "1",
                 "--executor", "ray", "--out", out]) == 2
    assert "pip install 'optimlab[ray]'" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "records.jsonl"))


def test_import_optimlab_does_not_import_ray():
    code = "import sys, optimlab, optimlab.lab, optimlab.cli; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
