"""The builtin agent names the objective and the best run exactly as mlsm's results module does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlsm.handlers.builtin.analyze import run_analyze
from mlsm.handlers.builtin.code import run_code
from mlsm.handlers.builtin.context import Step, read_settings
from mlsm.handlers.builtin.plan import run_plan
from mlsm.handlers.builtin.report import run_report
from mlsm.handlers.builtin.target import read_target
from mlsm.hooks import rundir
from mlsm.machine.core import results
from mlsm.machine.core.results import Objective
from mlsm.machine.core.status import Status, write_status

LOSS = Objective("val_loss", "minimize", "plan")


def step(exp: Path, role: str, iteration: int = 0) -> Step:
    folder = exp / "logs" / (role if role in ("plan", "report") else f"iter_{iteration:03d}")
    folder.mkdir(parents=True, exist_ok=True)
    return Step(role, exp, iteration, folder, read_settings(exp))


def write(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def run(exp: Path, iteration: int, metrics: dict[str, float] | None, *, code: int = 0,
        logged: dict[str, float] | None = None, objective: str | None = None) -> Path:
    """The files one finished training leaves (no space: the person's script declares none)."""
    folder = exp / "logs" / f"iter_{iteration:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        write(folder / "result.json", {"metrics": metrics, "objective": objective or
                                       next(iter(metrics)), "goal": "minimize", "t": 1.0})
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.8, **(logged or {})}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(folder / "exit.json", {"returncode": code, "signal": None, "reason": "exited",
                                 "detail": None, "started_at": 0.0, "ended_at": 2.0,
                                 "duration_s": 2.0})
    return folder


def daemon_status(exp: Path, objective: Objective, last: int, **extra: Any) -> Status:
    """status.json as the daemon writes it: one results.make_row per finished training."""
    rows = []
    for i in range(1, last + 1):
        folder = exp / "logs" / f"iter_{i:03d}"
        value, source = results.measure(folder, objective)
        rows.append(results.make_row(i, rundir.read_exit(folder) or {}, objective, value,
                                     source))
    status = Status(iteration=last, objective=objective, history=rows, **extra)
    write_status(exp, status)
    return status


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    d = tmp_path / "exp"
    d.mkdir()
    (d / "IDEA.md").write_text("# Tune my model\n\nObjective: minimize val_loss.\n")
    (d / "train.py").write_text("from mlsm import hooks\nhooks.result(val_loss=0.1)\n")
    return d


def three_with_failed_middle(exp: Path) -> None:
    run(exp, 1, {"val_loss": 0.5})
    run(exp, 2, {"val_loss": 0.1}, code=1)  # the lowest loss, but the run failed
    run(exp, 3, {"val_loss": 0.3})


# ---------------------------------------------------------------- best: results.best only


@pytest.mark.parametrize("with_status", [True, False])
def test_report_best_of_three_is_never_the_failed_one(exp: Path, with_status: bool) -> None:
    three_with_failed_middle(exp)
    if with_status:
        daemon = daemon_status(exp, LOSS, 3)
        assert daemon.best == {"iteration": 3, "metric": "val_loss", "value": 0.3,
                               "goal": "minimize"}
    run_report(step(exp, "report", 3))
    report = (exp / "REPORT.md").read_text()
    assert "**Best (as mlsm records it):** iteration 3: val_loss = 0.3 (minimize" in report
    assert "best `val_loss` = 0.3 (iteration 3) vs baseline 0.5" in report
    assert "| 2 | - | 0.1 | 2.0 s | failed |" in report
    assert "| 3 | - | 0.3 | 2.0 s | ok, **best** |" in report
    assert report.count("**best**") == 1
    assert "Iteration 2 failed: train.py exited with code 1." in report


def test_analyze_names_the_same_best_as_results(exp: Path) -> None:
    three_with_failed_middle(exp)
    daemon = daemon_status(exp, LOSS, 3)
    run_analyze(step(exp, "analyze", 3))
    decision = json.loads((exp / "logs" / "iter_003" / "decision.json").read_text())
    assert decision["metric"] == 0.3 and "the best so far" in decision["reason"]
    target = read_target(exp, read_settings(exp), None, 3)
    assert target.best_row() == results.best(daemon.history, daemon.objective)
    assert "iteration 3: val_loss = 0.3" in (exp / "logs" / "iter_003" / "analysis.md").read_text()


def test_status_history_outranks_the_files(exp: Path) -> None:
    """The daemon's row is the truth even where the run folder tells another story."""
    run(exp, 1, {"val_loss": 0.5})
    run(exp, 2, {"val_loss": 0.1})
    status = daemon_status(exp, LOSS, 2)
    status.history[1].outcome = "failed"  # e.g. leftovers or a kill the files do not show
    write_status(exp, status)
    run_report(step(exp, "report", 2))
    report = (exp / "REPORT.md").read_text()
    assert "| 1 | - | 0.5 | 2.0 s | ok, baseline, **best** |" in report
    assert "| 2 | - | 0.1 | 2.0 s | failed |" in report


def test_a_value_the_script_only_logged_counts_as_the_daemon_counts_it(exp: Path) -> None:
    run(exp, 1, {"val_loss": 0.5})
    run(exp, 2, None, logged={"val_loss": 0.2})  # no hooks.result: measure() reads the log
    write(exp / ".mlsm" / "config.json", {"objective": "val_loss"})
    run_analyze(step(exp, "analyze", 2))
    target = read_target(exp, read_settings(exp), None, 2)
    assert target.rows[1].source == "logged" and target.best_row() is target.rows[1]
    decision = json.loads((exp / "logs" / "iter_002" / "decision.json").read_text())
    assert decision["metric"] == 0.2


def test_status_objective_outranks_the_first_result_key(exp: Path) -> None:
    run(exp, 1, {"val_acc": 0.7, "val_loss": 0.5})
    run(exp, 2, {"val_acc": 0.9, "val_loss": 0.6})
    daemon_status(exp, Objective("val_loss", "minimize", "flag"), 2)
    run_report(step(exp, "report", 2))
    report = (exp / "REPORT.md").read_text()
    assert "| iteration | parameters | val_loss | duration | outcome |" in report
    assert "| 1 | - | 0.5 | 2.0 s | ok, baseline, **best** |" in report
    assert "settled by mlsm from flag" in report


def test_without_status_the_objective_is_settled_as_the_daemon_would(exp: Path) -> None:
    (exp / "PLAN.md").write_text("# Plan: x\n\nObjective: maximize val_acc\n")
    run(exp, 1, {"val_loss": 0.5, "val_acc": 0.7})
    target = read_target(exp, read_settings(exp), None, 1)
    assert target.objective == results.settle(None, None, None, "Objective: maximize val_acc",
                                              None)
    assert target.objective is not None and target.objective.source == "plan"


def test_patience_is_counted_by_results(exp: Path) -> None:
    write(exp / ".mlsm" / "config.json", {"patience": 2})
    write(run(exp, 1, {"val_loss": 0.5}) / "space.json",
          {"lr": {"type": "loguniform", "low": 1e-4, "high": 0.1, "default": 1e-3}})
    run(exp, 2, {"val_loss": 0.4})
    run(exp, 3, {"val_loss": 0.1}, code=1)  # failed: not a new best, but an iteration waited
    run(exp, 4, {"val_loss": 0.45})
    rows = daemon_status(exp, LOSS, 4).history
    assert results.since_best(rows, LOSS) == 2
    run_analyze(step(exp, "analyze", 4))
    reason = json.loads((exp / "logs" / "iter_004" / "decision.json").read_text())["reason"]
    assert reason.startswith("no new best val_loss for 2 iterations (patience 2)")


def test_failures_in_a_row_are_counted_by_results(exp: Path) -> None:
    write(exp / ".mlsm" / "config.json", {"max_failures": 2})
    write(run(exp, 1, {"val_loss": 0.5}) / "space.json",
          {"lr": {"type": "loguniform", "low": 1e-4, "high": 0.1, "default": 1e-3}})
    run(exp, 2, None)  # a clean exit without a value is no failure
    run(exp, 3, None, code=1)
    run(exp, 4, None, code=1)
    assert results.consecutive_failures(daemon_status(exp, LOSS, 4).history) == 2
    run_analyze(step(exp, "analyze", 4))
    reason = json.loads((exp / "logs" / "iter_004" / "decision.json").read_text())["reason"]
    assert reason.startswith("2 runs in a row failed")


# ---------------------------------------------------------------- the objective PLAN.md declares


def plan_text(exp: Path) -> str:
    run_plan(step(exp, "plan"))
    return (exp / "PLAN.md").read_text()


def test_plan_declares_the_objective_right_after_the_title(exp: Path) -> None:
    text = plan_text(exp)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == "# Plan: Tune my model"
    assert lines[1] == "Objective: minimize val_loss"
    assert results.objective_from_plan(text) == ("val_loss", "minimize")


def test_plan_keeps_the_objective_the_daemon_settled(exp: Path) -> None:
    daemon_status(exp, Objective("val_acc", "maximize", "flag"), 0)
    text = plan_text(exp)
    assert results.objective_from_plan(text) == ("val_acc", "maximize")
    assert "(from mlsm's status (flag))" in text


def test_plan_reads_the_persons_result_call_when_the_idea_names_no_objective(exp: Path) -> None:
    (exp / "IDEA.md").write_text("# Tune it\n\nMake my script better.\n")
    (exp / "train.py").write_text(
        "from mlsm import hooks\nhooks.result(val_f1=0.5, val_loss=1.0, objective='val_f1',"
        " goal='maximize')\n")
    assert results.objective_from_plan(plan_text(exp)) == ("val_f1", "maximize")


def test_plan_without_a_known_objective_declares_none(exp: Path) -> None:
    (exp / "IDEA.md").write_text("# Tune it\n\nMake my script better.\n")
    (exp / "train.py").write_text("import mlsm.hooks as h\nh.result(**compute())\n")
    text = plan_text(exp)
    assert results.objective_from_plan(text) is None
    assert "mlsm takes the metric the first run reports" in text


def test_an_idea_about_val_rmse_plans_reports_and_trains_for_val_rmse(tmp_path: Path) -> None:
    exp = tmp_path / "rmse"
    exp.mkdir()
    (exp / "IDEA.md").write_text("# Curve fit\n\nFit a regression on generated data; "
                                 "minimize val_rmse.\n")
    text = plan_text(exp)
    assert results.objective_from_plan(text) == ("val_rmse", "minimize")
    run_code(step(exp, "code", 1))
    source = (exp / "train.py").read_text()
    assert '\nOBJECTIVE = "val_rmse"' in source and '\nGOAL = "minimize"' in source
    assert "objective=OBJECTIVE, goal=GOAL" in " ".join(source.split())
    objective = results.settle(None, None, None, text, None)
    run(exp, 1, {"val_loss": 0.09, "val_mse": 0.09, "val_rmse": 0.3}, objective="val_rmse")
    run(exp, 2, {"val_loss": 0.04, "val_mse": 0.04, "val_rmse": 0.2}, objective="val_rmse")
    assert objective is not None
    daemon_status(exp, objective, 2)
    run_report(step(exp, "report", 2))
    report = (exp / "REPORT.md").read_text()
    assert "| iteration | parameters | val_rmse | duration | outcome |" in report
    assert "iteration 2: val_rmse = 0.2 (minimize" in report
