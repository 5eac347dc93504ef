"""The daemon's answers the builtin agent acts on: objective, history, best (status + results)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

from mlsm.handlers.builtin.context import Settings, iter_dir
from mlsm.handlers.builtin.idea import Criterion, Idea, match_metric
from mlsm.handlers.builtin.library import Template
from mlsm.handlers.builtin.runs import Run
from mlsm.handlers.inputs import read_text_file
from mlsm.hooks import layout, rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.core import results
from mlsm.machine.core.results import Objective, Row
from mlsm.machine.core.status import read_status


@dataclasses.dataclass(frozen=True)
class Target:
    """The objective and history as the daemon keeps them in status.json (rows it has not
    recorded yet are made from the run folders by the same `results` functions), plus the
    success criteria from IDEA.md. Best, patience and failures come from `results` only."""

    objective: Objective | None
    rows: tuple[Row, ...]
    criteria: tuple[Criterion, ...] = ()
    stop_reason: str | None = None

    @property
    def name(self) -> str:
        return self.objective.name if self.objective else "the objective"

    @property
    def goal(self) -> str:
        return self.objective.goal if self.objective else "minimize"

    def best_row(self) -> Row | None:
        """results.best: the daemon's best iteration (never a failed one)."""
        return results.best(list(self.rows), self.objective)

    def row(self, iteration: int) -> Row | None:
        return next((r for r in self.rows if r.iteration == iteration), None)

    def value(self, iteration: int) -> float | None:
        """The objective value the daemon measured for an iteration, whatever its outcome."""
        row = self.row(iteration)
        if row is None or self.objective is None or row.metric != self.objective.name:
            return None
        return row.value

    def counted(self, iteration: int) -> float | None:
        """The value of a successful iteration (the only kind that can be best), else None."""
        row = self.row(iteration)
        return self.value(iteration) if row is not None and row.outcome == "ok" else None

    def is_objective(self, name: str | None) -> bool:
        """Whether a name from IDEA.md (None: unnamed) means the objective."""
        return name is None or (self.objective is not None
                                and match_metric(name, [self.objective.name]) is not None)

    def metric(self, run: Run | None, name: str | None) -> float | None:
        """A successful run's value of the metric a criterion names (None: the objective)."""
        row = self.row(run.iteration) if run is not None else None
        if run is None or row is None or row.outcome != "ok":
            return None
        return self.counted(run.iteration) if self.is_objective(name) else run.metric(str(name))

    def goal_of(self, criterion: Criterion) -> str:
        """The direction a criterion is checked in: the objective's for its own metric."""
        if criterion.metric is None or self.is_objective(criterion.metric):
            return self.goal
        return criterion.direction or results.default_goal(criterion.metric)

    def met(self, run: Run, baseline: Run | None) -> bool:
        """Whether a run meets every criterion (False when there are none)."""
        if not self.criteria:
            return False
        for c in self.criteria:
            value = self.metric(run, c.metric)
            base = self.metric(baseline, c.metric) if c.relative else None
            if value is None or not c.met(value, base, self.goal_of(c)):
                return False
        return True


def read_target(exp_dir: Path, settings: Settings, idea: Idea | None, last: int) -> Target:
    """The Target after iteration `last`: status.json's objective, history and stop reason."""
    status = read_status(exp_dir)
    objective = status.objective if status and status.objective else settle(
        exp_dir, settings, last)
    known = {r.iteration: r for r in (status.history if status else []) if r.iteration <= last}
    rows = [known.get(i) or _row(exp_dir, i, objective) for i in range(1, last + 1)
            if i in known or iter_dir(exp_dir, i).is_dir()]
    return Target(objective, tuple(rows), idea.criteria if idea else (),
                  status.stop_reason if status else None)


def settle(exp_dir: Path, settings: Settings, last: int) -> Objective | None:
    """The objective the daemon settles when status.json names none yet: results.settle on
    the same inputs (the configured objective, PLAN.md, the first hooks.result)."""
    plan, _ = read_text_file(Layout(exp_dir).plan, "PLAN.md")
    first = next((doc for i in range(1, last + 1)
                  if (doc := rundir.read_result(iter_dir(exp_dir, i))) is not None), None)
    return results.settle(settings.objective, settings.goal, None, plan, first)


def status_objective(exp_dir: Path) -> Objective | None:
    """The objective status.json holds, if the daemon has settled one."""
    status = read_status(exp_dir)
    return status.objective if status else None


def _row(exp_dir: Path, iteration: int, objective: Objective | None) -> Row:
    """A history row the daemon has not recorded (yet), made as the daemon makes it."""
    folder = iter_dir(exp_dir, iteration)
    value, source = results.measure(folder, objective)
    return results.make_row(iteration, rundir.read_exit(folder) or {}, objective, value, source)


def propose(settings: Settings, idea: Idea, template: Template | None,
            script: str | None) -> tuple[Objective | None, str]:
    """The objective PLAN.md declares while the daemon has settled none, and where it is from:
    the configured one, else IDEA.md's (as the script names it), else the script's own."""
    if settings.objective:
        return _objective(settings.objective, settings, idea, None), "the mlsm configuration"
    declared = declared_result(script) if script else None
    if template is not None:
        name = template.reports(idea.objective) or template.objective
        where = layout.IDEA if template.reports(idea.objective) else f"the {template.name} template"
        return _objective(name, settings, idea, None), where
    if idea.objective:
        names = declared[0] if declared else []
        name = match_metric(idea.objective, names) or idea.objective
        return _objective(name, settings, idea, declared), layout.IDEA
    if declared and declared[1]:
        return _objective(declared[1], settings, idea, declared), "train.py's hooks.result"
    return None, "nowhere yet"


def _objective(name: str, settings: Settings, idea: Idea,
               declared: tuple[list[str], str | None, str | None] | None) -> Objective:
    """`name` with its direction: configured, IDEA.md's, the script's, else by its name."""
    goal = settings.goal
    if goal is None and idea.goal and idea.objective and match_metric(idea.objective, [name]):
        goal = idea.goal
    if goal is None and declared and declared[1] == name:
        goal = declared[2]
    return Objective(name, goal or results.default_goal(name), "plan")


def declared_result(source: str) -> tuple[list[str], str | None, str | None] | None:
    """What a script's `hooks.result(...)` call declares, read without running it: its metric
    names, its objective (the `objective=` literal, else the first metric) and its goal."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "result":
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            names = [k for k in kw if k not in ("goal", "objective")]
            objective = _literal(kw.get("objective")) or (names[0] if names else None)
            goal = _literal(kw.get("goal"))
            return names, objective, goal if goal in results.GOALS else None
    return None


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None
    return value if isinstance(value, str) else None
