"""Results, the one owner: a run's files → a history row; rows → best, patience, budgets, ledger.

Everything here but `measure` is a pure function. The engine, `mlsm status`, the built-in agent,
the prompts and results.tsv all ask this module, so they name the same best and objective.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mlsm.hooks import rundir

GOALS = ("minimize", "maximize")
# Metric names that people maximise; anything else defaults to minimize (a loss, an error).
_MAXIMIZE = re.compile(r"(acc|accuracy|f1|auc|auroc|precision|recall|r2|bleu|rouge|reward|"
                       r"score|iou|map|ndcg|hit|top\d*)(_|$)|^(val_|test_|eval_)?(acc|f1|r2)",
                       re.IGNORECASE)
_GOAL_WORD = r"(minimi[sz]e|maximi[sz]e|lower|higher|min|max)"
_PLAN_LINE = re.compile(
    rf"^[^\w\n]*objective[*_ \t]*[:=][*_ \t]*(?:{_GOAL_WORD}\s+)?`?([A-Za-z_][\w./-]*)`?"
    rf"(?:\s*[(,:-]?\s*{_GOAL_WORD}\b)?", re.IGNORECASE | re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Objective:
    """The metric an experiment optimises, its direction, and who said so."""

    name: str
    goal: str
    source: str  # "flag" | "env" | "file" | "plan" | "result"

    def better(self, value: float, than: float) -> bool:
        return value < than if self.goal == "minimize" else value > than

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> Objective | None:
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) \
                or doc.get("goal") not in GOALS:
            return None
        return cls(doc["name"], doc["goal"], str(doc.get("source") or "result"))


def _goal_word(word: str | None) -> str | None:
    if not word:
        return None
    return "maximize" if word.lower().startswith(("max", "high")) else "minimize"


def default_goal(name: str) -> str:
    """maximize for accuracy-like names, minimize for everything else (losses, errors)."""
    return "maximize" if _MAXIMIZE.search(name) else "minimize"


def objective_from_plan(text: str | None) -> tuple[str, str | None] | None:
    """`Objective: minimize val_rmse` (or `Objective: val_acc (maximize)`) in PLAN.md."""
    match = _PLAN_LINE.search(text or "")
    if match is None:
        return None
    return match.group(2), _goal_word(match.group(1) or match.group(3))


def objective_from_result(result: dict[str, Any] | None) -> tuple[str, str | None] | None:
    """The objective `hooks.result` named, else its first metric."""
    metrics = (result or {}).get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return None
    named = (result or {}).get("objective")
    name = named if isinstance(named, str) and named in metrics else next(iter(metrics))
    goal = (result or {}).get("goal")
    return str(name), goal if goal in GOALS else None


def settle(configured: str | None, goal: str | None, source: str | None,
           plan_text: str | None, result: dict[str, Any] | None) -> Objective | None:
    """Decide the objective once: flag/env/mlsm.toml > PLAN.md > the first hooks.result key."""
    plan = objective_from_plan(plan_text)
    if configured:
        plan_goal = plan[1] if plan and plan[0] == configured else None
        return Objective(configured, goal or plan_goal or default_goal(configured),
                         source or "flag")
    for found, where in ((plan, "plan"), (objective_from_result(result), "result")):
        if found is not None:
            return Objective(found[0], goal or found[1] or default_goal(found[0]), where)
    return None


@dataclasses.dataclass
class Row:
    """One iteration of the history: how its training ended and what it measured."""

    iteration: int
    outcome: str  # "ok" | "failed" | "no_result"
    reason: str | None = None  # the exit reason: exited, signal, stale_heartbeat, ...
    returncode: int | None = None
    duration_s: float | None = None
    metric: str | None = None
    value: float | None = None
    goal: str | None = None
    source: str | None = None  # "result" | "logged" | "printed": where the value came from
    leftovers: int = 0  # processes of the run still alive after its main process exited
    detail: str | None = None
    commit: str | None = None
    decision: str | None = None
    decision_reason: str | None = None
    run_id: str | None = None
    resumed: bool = False  # this start continued an interrupted one (STOP, crash, preemption)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Row:
        """A row as status.json kept it; a field of the wrong type reads as absent. ValueError
        when it has no whole-number iteration or no outcome (status.py checks that first)."""
        iteration, outcome = rundir.whole(doc.get("iteration")), doc.get("outcome")
        if iteration is None or not isinstance(outcome, str):
            raise ValueError("a history row needs a whole-number iteration and an outcome")
        row = cls(iteration, outcome, value=rundir.finite(doc.get("value")),
                  duration_s=rundir.finite(doc.get("duration_s")),
                  returncode=rundir.whole(doc.get("returncode")),
                  leftovers=rundir.whole(doc.get("leftovers")) or 0)
        for name in _ROW_TEXT:
            setattr(row, name, _text(doc.get(name)))
        row.resumed = doc.get("resumed") is True
        return row


_ROW_TEXT = ("reason", "metric", "goal", "source", "detail", "commit", "decision",
             "decision_reason", "run_id")
TEXT_CAP = 2000
"""The longest reason or detail a row keeps (status.json stays small whatever a file said)."""


def _text(value: Any) -> str | None:
    return value[:TEXT_CAP] if isinstance(value, str) else None


def measure(run_dir: Path, objective: Objective | None) -> tuple[float | None, str | None]:
    """The objective's value from a run's files: hooks.result, else the last hooks.log value,
    else the last `name: value` line the script printed."""
    if objective is None:
        return None, None
    metrics = (rundir.read_result(run_dir) or {}).get("metrics")
    if isinstance(metrics, dict) and (v := rundir.finite(metrics.get(objective.name))) is not None:
        return v, "result"
    if (v := rundir.last_logged(run_dir, objective.name)) is not None:
        return v, "logged"
    if (v := rundir.last_printed(run_dir, objective.name)) is not None:
        return v, "printed"
    return None, None


def make_row(iteration: int, exit_record: dict[str, Any], objective: Objective | None,
             value: float | None, source: str | None) -> Row:
    """The history row of a finished training. A failed run keeps its value but is never best."""
    returncode, reason = rundir.whole(exit_record.get("returncode")), exit_record.get("reason")
    value = rundir.finite(value)
    ok = returncode == 0 and reason == "exited"
    outcome = "failed" if not ok else "ok" if value is not None else "no_result"
    return Row(
        iteration=iteration, outcome=outcome, reason=_text(reason), returncode=returncode,
        duration_s=rundir.finite(exit_record.get("duration_s")),
        detail=_text(exit_record.get("detail")),
        metric=objective.name if objective else None, goal=objective.goal if objective else None,
        value=value, source=source if value is not None else None,
        leftovers=max(0, rundir.whole(exit_record.get("leftovers")) or 0),
        run_id=_text(exit_record.get("run_id")),
    )


def best(rows: Iterable[Row], objective: Objective | None) -> Row | None:
    """The best successful row for the objective (the earliest on a tie); never a failed run."""
    winner: Row | None = None
    for row in rows:
        if objective is None or row.outcome != "ok" or row.value is None \
                or row.metric != objective.name:
            continue
        if winner is None or objective.better(row.value, winner.value):  # type: ignore[arg-type]
            winner = row
    return winner


def best_json(rows: Sequence[Row], objective: Objective | None) -> dict[str, Any] | None:
    """status.json's `best`: iteration, metric, value and goal of the best row."""
    row = best(rows, objective)
    if row is None or objective is None:
        return None
    return {"iteration": row.iteration, "metric": objective.name, "value": row.value,
            "goal": objective.goal}


def since_best(rows: Sequence[Row], objective: Objective | None) -> int:
    """Iterations after the best one (0 while there is no best)."""
    row = best(rows, objective)
    return 0 if row is None else sum(1 for r in rows if r.iteration > row.iteration)


def consecutive_failures(rows: Sequence[Row]) -> int:
    """Failed iterations at the end of the history (a clean exit without a value is no failure)."""
    count = 0
    for row in reversed(rows):
        if row.outcome != "failed":
            break
        count += 1
    return count


@dataclasses.dataclass(frozen=True)
class Budgets:
    """The experiment-wide limits (0 means off), and what has been spent."""

    max_iterations: int
    max_failures: int
    patience: int = 0
    max_hours: float = 0.0
    max_cost_usd: float = 0.0
    hours: float = 0.0
    cost_usd: float = 0.0


def cost_reason(b: Budgets) -> str | None:
    """A sentence when the agent's spending budget is spent."""
    if b.max_cost_usd and b.cost_usd >= b.max_cost_usd:
        return (f"the agent cost budget of ${b.max_cost_usd:g} (--max-cost-usd) is spent "
                f"(${b.cost_usd:.4f} so far)")
    return None


def hours_reason(b: Budgets) -> str | None:
    """A sentence when the wall-time budget is spent."""
    if b.max_hours and b.hours >= b.max_hours:
        return f"the wall-time budget of {b.max_hours:g} h (--max-hours) is spent"
    return None


def budget_reason(rows: Sequence[Row], objective: Objective | None, iteration: int,
                  b: Budgets) -> str | None:
    """A sentence naming the first experiment-wide budget that is spent, if any."""
    if iteration >= b.max_iterations:
        return f"reached --max-iterations {b.max_iterations}"
    failures = consecutive_failures(rows)
    if failures >= b.max_failures:
        return f"{failures} consecutive iterations failed (--max-failures {b.max_failures})"
    waited = since_best(rows, objective)
    if b.patience and best(rows, objective) and waited >= b.patience:
        return (f"no improvement of the best {objective.name if objective else 'metric'} for "
                f"{waited} iterations (--patience {b.patience})")
    return hours_reason(b) or cost_reason(b)


LEDGER_COLUMNS = ("iteration", "outcome", "exit", "objective", "value", "source",
                  "best_so_far", "duration_s", "commit", "decision", "reason", "resumed")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return " ".join(str(value).split())[:300]  # one line, no tabs, bounded


def ledger_text(rows: Sequence[Row], objective: Objective | None) -> str:
    """results.tsv: a header and one row per iteration, with the best so far beside each."""
    lines = ["\t".join(LEDGER_COLUMNS)]
    for k, row in enumerate(rows):
        so_far = best(rows[:k + 1], objective)
        cells = (row.iteration, row.outcome, row.reason, row.metric, row.value, row.source,
                 so_far.value if so_far else None, row.duration_s,
                 row.commit[:12] if row.commit else None, row.decision,
                 row.decision_reason or (row.detail if row.outcome == "failed" else None),
                 "yes" if row.resumed else None)
        lines.append("\t".join(_cell(c) for c in cells))
    return "\n".join(lines) + "\n"


def history_markdown(rows: Sequence[Row], objective: Objective | None) -> str:
    """The history as a Markdown table for agent prompts, the best row marked."""
    if not rows:
        return "(no iterations yet)"
    top = best(rows, objective)
    lines = ["| iteration | outcome | value | exit | decision |", "|---|---|---|---|---|"]
    for row in rows[-20:]:
        value = "-" if row.value is None else f"{row.metric}={row.value:.6g}"
        mark = " (best)" if top is not None and row.iteration == top.iteration else ""
        lines.append(f"| {row.iteration}{mark} | {row.outcome} | {value} | {row.reason} | "
                     f"{_cell(row.decision_reason) or '-'} |")
    return "\n".join(lines)


def best_sentence(rows: Sequence[Row], objective: Objective | None) -> str:
    """One line for prompts and reports: the best iteration and value, or why there is none."""
    if objective is None:
        return "no objective yet (no flag, no `Objective:` line in PLAN.md, no hooks.result)"
    row = best(rows, objective)
    if row is None:
        return f"no successful iteration has produced {objective.name} yet"
    return (f"iteration {row.iteration}: {objective.name} = {row.value:.6g} "
            f"({objective.goal}; from {row.source})")
