"""The builtin agent never swaps a person's task for a toy, and reads success criteria as meant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlsm.handlers.builtin.analyze import run_analyze
from mlsm.handlers.builtin.code import run_code
from mlsm.handlers.builtin.context import Settings, Step, read_settings, template_names
from mlsm.handlers.builtin.idea import Criterion, parse_idea
from mlsm.handlers.builtin.library import CAN_DO, TEMPLATES, NoTemplateError, choose
from mlsm.handlers.builtin.plan import run_plan
from mlsm.handlers.builtin.report import run_report
from mlsm.machine.core import results
from mlsm.machine.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SST2 = "# Sentiment\n\nFine-tune a small pretrained transformer on SST-2; maximize val_acc.\n"
HOUSES = ("# House prices\n\nPredict house prices from the Kaggle house-prices data with a "
          "regression model; minimize val_rmse.\n")
MEMORY = (REPO / "examples" / "memory_tokens" / "IDEA.md").read_text()
SPIRALS = "# Spirals\n\nClassify three spirals with a small network; maximize val_acc.\n"


def agent(exp: Path, role: str, iteration: int = 0) -> subprocess.CompletedProcess[str]:
    """One role as the daemon runs it: `python -P -m mlsm.handlers.builtin` with MLSM_*."""
    folder = exp / "logs" / (role if role in ("plan", "report") else f"iter_{iteration:03d}")
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    env.update(MLSM_ROLE=role, MLSM_DIR=str(exp), MLSM_ITERATION=str(iteration),
               MLSM_RUN_DIR=str(folder))
    return subprocess.run([sys.executable, "-P", "-m", "mlsm.handlers.builtin"], cwd=exp,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def step(exp: Path, role: str, iteration: int = 0) -> Step:
    folder = exp / "logs" / (role if role in ("plan", "report") else f"iter_{iteration:03d}")
    folder.mkdir(parents=True, exist_ok=True)
    return Step(role, exp, iteration, folder, read_settings(exp))


def write(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def fake_run(exp: Path, iteration: int, metrics: dict[str, float]) -> None:
    folder = exp / "logs" / f"iter_{iteration:03d}"
    write(folder / "space.json", {"lr": {"type": "loguniform", "low": 1e-4, "high": 0.1,
                                         "default": 1e-3}})
    write(folder / "params_used.json", {"lr": 1e-3})
    write(folder / "result.json", {"metrics": metrics, "objective": next(iter(metrics)),
                                   "goal": "maximize" if "acc" in next(iter(metrics))
                                   else "minimize", "t": 1.0})
    write(folder / "exit.json", {"returncode": 0, "signal": None, "reason": "exited",
                                 "detail": None, "started_at": 0.0, "ended_at": 1.0,
                                 "duration_s": 1.0})


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    d = tmp_path / "exp"
    d.mkdir()
    return d


# ---------------------------------------------------------------- no silent swaps


@pytest.mark.parametrize("idea", [SST2, HOUSES, MEMORY], ids=["sst2", "house-prices",
                                                             "memory-tokens"])
def test_an_idea_no_template_implements_is_refused_with_one_line(exp: Path, idea: str) -> None:
    (exp / "IDEA.md").write_text(idea)
    proc = agent(exp, "plan")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert CAN_DO in lines[0]
    assert "--template NAME" in lines[0] and "--agent claude or codex" in lines[0]
    assert not (exp / "PLAN.md").exists()
    proc = agent(exp, "code", 1)  # a plan written by someone else: the code step refuses too
    assert proc.returncode == 3 and not (exp / "train.py").exists()


@pytest.mark.parametrize("idea, words", [
    (SST2, ["sst-2", "pretrained", "transformer", "fine-tune"]),
    (HOUSES, ["house prices", "kaggle"]),
    (MEMORY, ["memory tokens", "transformer"]),
])
def test_the_refusal_names_what_is_foreign(idea: str, words: list[str]) -> None:
    with pytest.raises(NoTemplateError) as err:
        choose(parse_idea(idea), Settings(), None)
    assert all(w in str(err.value) for w in words[:2]), str(err.value)
    assert "\n" not in str(err.value)


def test_an_idea_without_a_task_is_refused(exp: Path) -> None:
    (exp / "IDEA.md").write_text("# Something good\n\nMake something that works well.\n")
    with pytest.raises(NoTemplateError, match="names no task"):
        run_plan(step(exp, "plan"))
    assert not (exp / "PLAN.md").exists()


def test_an_objective_the_template_does_not_report_is_refused() -> None:
    idea = parse_idea("# Spirals\n\nClassify three spirals; maximize val_f1.\n")
    with pytest.raises(NoTemplateError, match="val_f1 is not a metric the classification"):
        choose(idea, Settings(), idea.objective)


@pytest.mark.parametrize("idea, template", [
    (SPIRALS, "classification"),
    ("# Fit\n\nA regression on generated data; minimize the validation MSE.\n", "regression"),
    ("# LM\n\nTrain a tiny character-level language model on some text.\n", "charlm"),
])
def test_an_idea_that_asks_for_a_template_task_gets_it(exp: Path, idea: str,
                                                       template: str) -> None:
    (exp / "IDEA.md").write_text(idea)
    run_plan(step(exp, "plan"))
    plan = (exp / "PLAN.md").read_text()
    assert f"the builtin `{template}` template" in plan
    assert f"a stand-in, not code written for this idea, chosen because IDEA.md asks for a " \
           f"{template} task" in plan


def test_template_setting_forces_a_template_and_says_so(exp: Path) -> None:
    (exp / "IDEA.md").write_text(SST2)
    write(exp / ".mlsm" / "config.json", {"template": "classification"})
    run_plan(step(exp, "plan"))
    plan = (exp / "PLAN.md").read_text()
    assert results.objective_from_plan(plan) == ("val_acc", "maximize")
    assert "chosen with --template classification" in plan
    assert '"sst-2"' in plan and "which this stand-in does not implement" in plan
    run_code(step(exp, "code", 1))
    assert (exp / "train.py").read_text().startswith("# mlsm builtin template: classification\n")
    fake_run(exp, 1, {"val_acc": 0.6, "val_loss": 1.0})
    run_report(step(exp, "report", 1))
    head = (exp / "REPORT.md").read_text().split("\n\n")[:2]
    assert head[0] == "# Report: Sentiment"
    assert head[1].startswith("**Script that ran:** the builtin `classification` template")
    assert "a stand-in, not code written for this idea, chosen with --template classification" \
        in head[1]
    assert '"sst-2"' in head[1] and "which this stand-in does not implement" in head[1]


def test_template_names_are_the_template_files_and_an_unknown_one_is_one_line(exp: Path) -> None:
    assert template_names() == tuple(sorted(TEMPLATES)) == ("charlm", "classification",
                                                             "regression")
    write(exp / ".mlsm" / "config.json", {"template": "resnet"})
    with pytest.raises(ConfigError, match="must be one of charlm, classification, regression, "
                                          "got 'resnet'"):
        read_settings(exp)
    (exp / "IDEA.md").write_text(SPIRALS)
    proc = agent(exp, "plan")
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1
    assert "'resnet'" in proc.stderr and not (exp / "PLAN.md").exists()


def test_a_forced_template_that_cannot_report_the_flag_objective_is_an_error(exp: Path) -> None:
    (exp / "IDEA.md").write_text(SPIRALS)
    write(exp / ".mlsm" / "config.json", {"template": "charlm", "objective": "val_acc"})
    with pytest.raises(ConfigError, match=r"charlm template .* not the objective val_acc"):
        run_plan(step(exp, "plan"))


def test_a_persons_train_py_is_tuned_never_swapped(exp: Path) -> None:
    (exp / "IDEA.md").write_text(SST2)  # foreign to every template, but the script is theirs
    script = ("from mlsm import hooks\ncfg = hooks.params(lr=hooks.loguniform(1e-5, 1e-3, "
              "default=3e-5))\nhooks.result(val_acc=0.9, goal='maximize')\n")
    (exp / "train.py").write_text(script)
    write(exp / ".mlsm" / "config.json", {"template": "classification"})
    run_plan(step(exp, "plan"))
    assert "the person's own `train.py`" in (exp / "PLAN.md").read_text()
    run_code(step(exp, "code", 1))
    assert (exp / "train.py").read_text() == script
    fake_run(exp, 1, {"val_acc": 0.9})
    run_report(step(exp, "report", 1))
    head = (exp / "REPORT.md").read_text().split("\n\n")[1]
    assert head.startswith("**Script that ran:** the person's own `train.py`, unchanged")


# ---------------------------------------------------------------- success criteria as meant


@pytest.mark.parametrize("text", [
    "Success: the model beats the baseline by 2%.",
    "Success criterion: 2% better than the baseline.",
    "Done when val_acc improves on the baseline by 2 percent.",
])
def test_a_percentage_over_the_baseline_is_relative(text: str) -> None:
    idea = parse_idea(f"# X\n\nObjective: maximize val_acc.\n\n{text}\n")
    (c,) = idea.criteria
    assert c.relative and c.value == pytest.approx(0.02) and not idea.unclear
    assert not c.met(0.5, 0.8, "maximize")  # an absolute `>= 0.02` would call this met
    assert c.met(0.816, 0.8, "maximize") and not c.met(0.815, 0.8, "maximize")
    assert c.met(0.49, 0.5, "minimize") and not c.met(0.495, 0.5, "minimize")
    assert not c.met(0.9, None, "maximize")  # no baseline value: cannot be met


@pytest.mark.parametrize("text", ["Success: val_acc >= 0.97.",
                                  "Success: val_acc of at least 0.97.",
                                  "Success: validation accuracy of at least 97%."])
def test_a_bound_is_absolute(text: str) -> None:
    (c,) = parse_idea(f"# X\n\n{text}\n").criteria
    assert c == Criterion("val_acc", ">=", 0.97)
    assert c.met(0.97, None, "maximize") and not c.met(0.969, 0.5, "maximize")


def test_a_criterion_that_is_not_understood_is_quoted_never_guessed(exp: Path) -> None:
    (exp / "IDEA.md").write_text(SPIRALS + "\nSuccess: reach at least 0.97 and look good.\n")
    idea = parse_idea((exp / "IDEA.md").read_text())
    assert idea.criteria == () and idea.unclear == ("Success: reach at least 0.97 and look good.",)
    run_plan(step(exp, "plan"))
    quoted = "not understood: Success: reach at least 0.97 and look good."
    assert quoted in (exp / "PLAN.md").read_text()
    fake_run(exp, 1, {"val_acc": 0.99})
    run_analyze(step(exp, "analyze", 1))
    decision = json.loads((exp / "logs" / "iter_001" / "decision.json").read_text())
    assert decision["decision"] == "continue"  # never met by a guess
    run_report(step(exp, "report", 1))
    assert quoted in (exp / "REPORT.md").read_text()


def test_a_relative_criterion_is_checked_against_the_baseline(exp: Path) -> None:
    (exp / "IDEA.md").write_text(SPIRALS + "\nSuccess: beat the baseline's val_acc by 2%.\n")
    fake_run(exp, 1, {"val_acc": 0.80})
    fake_run(exp, 2, {"val_acc": 0.81})  # +1.25 %: not enough
    fake_run(exp, 3, {"val_acc": 0.82})  # +2.5 %
    for i in (1, 2, 3):
        run_analyze(step(exp, "analyze", i))
    decisions = [json.loads((exp / "logs" / f"iter_{i:03d}" / "decision.json").read_text())
                 for i in (1, 2, 3)]
    assert [d["decision"] for d in decisions] == ["continue", "continue", "finish"]
    assert decisions[2]["reason"].startswith(
        "success criterion val_acc at least 2% better than the baseline's (relative) met")
    run_report(step(exp, "report", 3))
    report = (exp / "REPORT.md").read_text()
    assert "with the baseline's val_acc = 0.8" in report and "`val_acc >= 0.816`" in report
