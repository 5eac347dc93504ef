"""The results module: one objective, one best (never a failed run), budgets, the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlsm.machine.core import results
from mlsm.machine.core.results import Budgets, Objective, Row

LOSS = Objective("loss", "minimize", "result")


def _rows(*specs: tuple[str, float | None]) -> list[Row]:
    return [Row(iteration=i + 1, outcome=o, metric="loss", value=v, goal="minimize")
            for i, (o, v) in enumerate(specs)]


def test_a_failed_run_is_never_best() -> None:
    rows = _rows(("ok", 0.5), ("failed", 0.1), ("ok", 0.3))
    best = results.best(rows, LOSS)
    assert best is not None and best.iteration == 3
    assert results.best_json(rows, LOSS) == {"iteration": 3, "metric": "loss", "value": 0.3,
                                             "goal": "minimize"}
    assert results.since_best(rows, LOSS) == 0


def test_best_only_counts_the_settled_objective() -> None:
    rows = _rows(("ok", 0.5), ("ok", 0.1))
    rows[1].metric = "val_loss"
    best = results.best(rows, LOSS)
    assert best is not None and best.iteration == 1


def test_maximize_and_ties_keep_the_earliest() -> None:
    acc = Objective("acc", "maximize", "flag")
    rows = [Row(1, "ok", metric="acc", value=0.9), Row(2, "ok", metric="acc", value=0.95),
            Row(3, "ok", metric="acc", value=0.95)]
    best = results.best(rows, acc)
    assert best is not None and best.iteration == 2
    assert results.since_best(rows, acc) == 1


def test_consecutive_failures_count_only_the_tail() -> None:
    rows = _rows(("failed", None), ("ok", 0.2), ("no_result", None), ("failed", None),
                 ("failed", None))
    assert results.consecutive_failures(rows) == 2


def test_budget_reasons_in_order() -> None:
    b = Budgets(max_iterations=10, max_failures=2, patience=2)
    assert results.budget_reason(_rows(("ok", 0.5), ("ok", 0.6), ("ok", 0.7)), LOSS, 3, b) \
        == "no improvement of the best loss for 2 iterations (--patience 2)"
    assert "2 consecutive iterations failed" in str(results.budget_reason(
        _rows(("failed", None), ("failed", None)), LOSS, 2, b))
    assert results.budget_reason([], LOSS, 10, b) == "reached --max-iterations 10"
    assert results.budget_reason(_rows(("ok", 0.5)), LOSS, 1, b) is None
    spent = Budgets(max_iterations=10, max_failures=3, max_hours=1.0, hours=1.5)
    assert "--max-hours" in str(results.budget_reason([], LOSS, 1, spent))


@pytest.mark.parametrize("text,expected", [
    ("# Plan\nObjective: minimize val_rmse\n", ("val_rmse", "minimize")),
    ("**Objective:** maximize `val_acc`\n", ("val_acc", "maximize")),
    ("Objective: val_f1 (maximize)\n", ("val_f1", "maximize")),
    ("objective = bleu\n", ("bleu", None)),
    ("# Plan\nNo such line\n", None),
])
def test_objective_from_plan(text: str, expected: tuple[str, str | None] | None) -> None:
    assert results.objective_from_plan(text) == expected


def test_settle_precedence_flag_then_plan_then_result() -> None:
    result = {"metrics": {"val_loss": 1.0, "val_rmse": 2.0}, "goal": "minimize"}
    plan = "Objective: minimize val_rmse\n"
    assert results.settle("val_acc", None, "file", plan, result) == \
        Objective("val_acc", "maximize", "file")
    assert results.settle(None, None, None, plan, result) == \
        Objective("val_rmse", "minimize", "plan")
    assert results.settle(None, None, None, None, result) == \
        Objective("val_loss", "minimize", "result")
    named = {"metrics": {"a": 1.0, "b": 2.0}, "objective": "b", "goal": "maximize"}
    assert results.settle(None, None, None, None, named) == Objective("b", "maximize", "result")
    assert results.settle(None, "maximize", "flag", None, result) == \
        Objective("val_loss", "maximize", "result")
    assert results.settle(None, None, None, None, None) is None


def test_measure_prefers_result_then_logged_then_printed(tmp_path: Path) -> None:
    obj = Objective("val_mse", "minimize", "plan")
    (tmp_path / "stdout.log").write_text("epoch 1 val_mse: 0.5\nepoch 2 val_mse=0.0123\n"
                                         "val_mse_std: 9\n")
    assert results.measure(tmp_path, obj) == (0.0123, "printed")
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "val_mse": 0.4}\n{"step": 2, "val_mse": 0.2}\n{"step": 3, "x": 1}\n')
    assert results.measure(tmp_path, obj) == (0.2, "logged")
    (tmp_path / "result.json").write_text(json.dumps({"metrics": {"val_mse": 0.1}}))
    assert results.measure(tmp_path, obj) == (0.1, "result")
    assert results.measure(tmp_path, None) == (None, None)


@pytest.mark.parametrize("value", [True, float("nan"), 10 ** 400, "0.1", None])
def test_values_that_are_not_finite_numbers_are_not_measured(tmp_path: Path,
                                                             value: object) -> None:
    text = json.dumps({"metrics": {"loss": 0}}).replace("0}", f"{json.dumps(value)}}}") \
        if not isinstance(value, float) else '{"metrics": {"loss": NaN}}'
    (tmp_path / "result.json").write_text(text)
    assert results.measure(tmp_path, LOSS) == (None, None)


def test_make_row_outcomes() -> None:
    ok = {"returncode": 0, "reason": "exited", "duration_s": 1.5, "leftovers": 2}
    row = results.make_row(1, ok, LOSS, 0.3, "result")
    assert (row.outcome, row.value, row.leftovers, row.duration_s) == ("ok", 0.3, 2, 1.5)
    assert results.make_row(1, ok, LOSS, None, None).outcome == "no_result"
    crashed = {"returncode": 1, "reason": "exited"}
    assert results.make_row(2, crashed, LOSS, 0.1, "result").outcome == "failed"
    killed = {"returncode": None, "reason": "stale_heartbeat"}
    assert results.make_row(3, killed, LOSS, None, None).outcome == "failed"


def test_ledger_has_best_so_far_and_one_line_cells() -> None:
    rows = _rows(("ok", 0.5), ("failed", 0.1), ("ok", 0.3))
    rows[1].detail = "Traceback\tline\nValueError: boom"
    rows[2].decision, rows[2].decision_reason, rows[2].commit = "finish", "good\tenough", "ab" * 20
    rows[2].resumed = True
    lines = results.ledger_text(rows, LOSS).splitlines()
    assert lines[0].split("\t") == list(results.LEDGER_COLUMNS)
    cells = [line.split("\t") for line in lines[1:]]
    assert all(len(c) == len(results.LEDGER_COLUMNS) for c in cells)
    best_col = results.LEDGER_COLUMNS.index("best_so_far")
    assert [c[best_col] for c in cells] == ["0.5", "0.5", "0.3"]
    reason, resumed = (results.LEDGER_COLUMNS.index(c) for c in ("reason", "resumed"))
    assert cells[1][reason] == "Traceback line ValueError: boom"
    assert cells[2][results.LEDGER_COLUMNS.index("commit")] == "ab" * 6
    assert cells[2][reason] == "good enough"
    assert [c[resumed] for c in cells] == ["", "", "yes"]


def test_row_round_trips_and_drops_bad_values() -> None:
    row = Row(4, "ok", metric="loss", value=0.25, commit="c", decision="continue")
    assert Row.from_json(row.to_json()) == row
    assert Row.from_json({"iteration": 1, "outcome": "ok", "value": True, "junk": 1}).value \
        is None
