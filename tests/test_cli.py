import json
import subprocess
import sys

import optimlab
from optimlab.cli import main


def test_optimizers_lists_the_registry(capsys):
    assert main(["optimizers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == optimlab.names()
    assert next(r for r in rows if r["name"] == "sgd")["defaults"]["lr"] == 1e-3


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "optimlab", "optimizers"], capture_output=True, text=True, check=True)
    assert "adamw" in out.stdout and "torch.optim.AdamW" in out.stdout
