"""Which metric the search optimises, in which direction, and when the idea has succeeded."""

from __future__ import annotations

import dataclasses
import re

from mlsm.handlers.builtin.context import Settings
from mlsm.handlers.builtin.idea import Criterion, Idea
from mlsm.handlers.builtin.library import Template
from mlsm.handlers.builtin.runs import Run

_MAXIMIZE = re.compile(r"acc|auc|f1|score|reward|precision|recall|r2|iou|bleu|map\b")


@dataclasses.dataclass(frozen=True)
class Target:
    """The objective, its direction, the success criteria, and where each choice came from."""

    objective: str
    goal: str
    criteria: tuple[Criterion, ...]
    source: str

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` beats value `b`."""
        return a > b if self.goal == "maximize" else a < b

    def best(self, runs: list[Run]) -> Run | None:
        """The run with the best objective value (the earliest on a tie)."""
        best: tuple[Run, float] | None = None
        for run in runs:
            value = run.value(self.objective)
            if value is not None and (best is None or self.better(value, best[1])):
                best = (run, value)
        return best[0] if best else None

    def met(self, run: Run) -> list[Criterion] | None:
        """The criteria a run meets when it meets them all; None when it does not (or when
        there are none)."""
        if not self.criteria:
            return None
        checks = [(c, _metric(run, c.metric)) for c in self.criteria]
        if all(v is not None and c.met(v) for c, v in checks):
            return list(self.criteria)
        return None


def _metric(run: Run, name: str) -> float | None:
    found = match_metric(name, list(run.metrics))
    return run.value(found) if found else None


def match_metric(name: str, available: list[str]) -> str | None:
    """The reported metric a name from IDEA.md means: exact, then `val_` prefixed, then
    `accuracy` read as `acc`."""
    short = name.replace("accuracy", "acc")
    for candidate in (name, f"val_{name}", short, f"val_{short}"):
        if candidate in available:
            return candidate
    return None


def resolve_target(settings: Settings, idea: Idea | None, runs: list[Run],
                   template: Template | None) -> Target:
    """Objective: config, then IDEA.md, then what train.py reported, then the template's; once
    runs have reported metrics, the first of these that names one of them. Direction: config,
    then IDEA.md, then train.py, then the metric's name."""
    reported = list(dict.fromkeys(m for r in runs for m in r.metrics))
    result_objective = next((r.result_objective for r in runs if r.result_objective), None)
    candidates = [
        (settings.objective, "mlsm config"),
        (idea.objective if idea else None, "IDEA.md"),
        (result_objective, "train.py's hooks.result"),
        (template.objective if template else None, "the template's default"),
        (reported[0] if reported else None, "the first metric train.py reported"),
        ("val_loss", "mlsm's default"),
    ]
    named: list[tuple[str, str]] = [(n, s) for n, s in candidates if n]
    matched = [(m, s) for n, s in named if (m := match_metric(n, reported))]
    objective, source = matched[0] if matched else named[0]
    if matched and matched[0][1] != named[0][1]:
        source += f"; {named[0][0]!r} from {named[0][1]} is not a reported metric"
    return Target(objective, _goal(objective, settings, idea, runs, template),
                  idea.criteria if idea else (), source)


def _goal(objective: str, settings: Settings, idea: Idea | None, runs: list[Run],
          template: Template | None) -> str:
    if settings.goal:
        return settings.goal
    if idea and idea.goal and idea.objective and match_metric(idea.objective, [objective]):
        return idea.goal
    for run in runs:
        if run.result_goal in ("minimize", "maximize") and run.result_objective == objective:
            return run.result_goal
    if template and template.objective == objective:
        return template.goal
    return "maximize" if _MAXIMIZE.search(objective) else "minimize"
