"""The README's journeys, run as a person would: a plain script, an argparse script tuned from
mlsm.toml, both with the offline built-in agent and the real `mlsm` command."""

from __future__ import annotations

import json

from helpers import Experiment

PLAIN = """\
import os
print("epoch 1 val_mse: 0.25")
print("epoch 2 val_mse: 0.125")
"""

ARGPARSE = """\
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.5)
parser.add_argument("--width", type=int, default=4)
args = parser.parse_args()
loss = (args.lr - 0.01) ** 2 + 1.0 / args.width
print(f"val_loss={loss:.6f}")
"""


def test_a_plain_script_runs_once_and_the_report_says_why(exp: Experiment) -> None:
    exp.write("train.py", PLAIN)
    exp.write("IDEA.md", "Minimize val_mse of my script.\n")
    run = exp.mlsm("run", "--agent", "builtin", "--objective", "val_mse", agent=False)
    assert run.wait(120) == 0, run.output()
    status = exp.status()
    assert status["best"] == {"iteration": 1, "metric": "val_mse", "value": 0.125,
                              "goal": "minimize"}
    assert [r["source"] for r in status["history"]] == ["printed"]
    reason = json.loads((exp.path / "logs" / "iter_001" / "decision.json").read_text())["reason"]
    assert "declares no search space" in reason
    assert "train.py" in (exp.path / "REPORT.md").read_text()


def test_an_argparse_script_is_tuned_from_mlsm_toml(exp: Experiment) -> None:
    exp.write("train.py", ARGPARSE)
    exp.write("IDEA.md", "Minimize val_loss of my argparse script.\n")
    exp.write("mlsm.toml", 'objective = "val_loss"\nmax-iterations = 4\n\n[params]\n'
                           'lr = "loguniform(0.001, 1.0)"\nwidth = [4, 8, 16, 32]\n')
    run = exp.mlsm("run", "--agent", "builtin", agent=False)
    assert run.wait(180) == 0, run.output()
    status = exp.status()
    rows = status["history"]
    assert len(rows) == 4 and all(r["outcome"] == "ok" for r in rows)
    assert status["best"]["iteration"] > 1  # a tuned run beat the script's own defaults
    assert status["best"]["value"] < rows[0]["value"]
    iter2 = exp.path / "logs" / "iter_002"
    used = json.loads((iter2 / "params_used.json").read_text())
    assert set(used) == {"lr", "width"}
    assert json.loads((iter2 / "space.json").read_text())["width"]["choices"] == [4, 8, 16, 32]
    started = [e for e in exp.events() if e["event"] == "training_started"]
    assert "--lr" not in started[0]["cmd"]  # the baseline: the script's own defaults
    assert started[1]["cmd"][-4:] == ["--lr", str(used["lr"]), "--width", str(used["width"])]


def test_a_bad_params_table_is_one_line_at_start(exp: Experiment) -> None:
    exp.write("train.py", ARGPARSE)
    exp.write("IDEA.md", "x\n")
    exp.write("mlsm.toml", '[params]\nlr = "gaussian(0, 1)"\n')
    run = exp.mlsm("run", "--agent", "builtin", agent=False)
    assert run.wait(60) == 3
    assert "[params] lr = 'gaussian(0, 1)' is not a search space" in run.output()
