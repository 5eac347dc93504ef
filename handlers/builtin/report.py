"""The report role: REPORT.md (summary, approach, results, challenges, advice) and its plots."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mlsm.handlers.builtin.analyze import iteration_budget
from mlsm.handlers.builtin.context import Settings, Step
from mlsm.handlers.builtin.files import write_text
from mlsm.handlers.builtin.idea import Idea, read_idea_or_none
from mlsm.handlers.builtin.library import Template, script_template, why_template
from mlsm.handlers.builtin.plan import HONEST, criteria_lines
from mlsm.handlers.builtin.plots import plot_curves, plot_objective
from mlsm.handlers.builtin.runs import Run, latest_space, read_runs
from mlsm.handlers.builtin.search import STARTUP
from mlsm.handlers.builtin.space import Param, fmt, tunable
from mlsm.handlers.builtin.target import Target, read_target
from mlsm.hooks.layout import Layout
from mlsm.machine.core import results
from mlsm.machine.core.results import Row

OBJECTIVE_PNG = "report_objective.png"
CURVES_PNG = "report_curves.png"


def run_report(step: Step) -> None:
    """Draw the plots beside REPORT.md, then write REPORT.md (the product, last)."""
    runs = read_runs(step.exp_dir, step.iteration)
    idea = read_idea_or_none(step.exp_dir)
    target = read_target(step.exp_dir, step.settings, idea, step.iteration)
    best_row = target.best_row()
    by_iteration = {r.iteration: r for r in runs}
    baseline = by_iteration.get(1)
    best = by_iteration.get(best_row.iteration) if best_row else None
    plot_objective(step.exp_dir / OBJECTIVE_PNG, target)
    plot_curves(step.exp_dir / CURVES_PNG, baseline, best, target)
    facts = Facts(runs, target, latest_space(runs), baseline, best_row, best, idea,
                  script_template(step.exp_dir), step.settings)
    write_text(Layout(step.exp_dir).report, render_report(facts))
    print(f"report: wrote REPORT.md, {OBJECTIVE_PNG} and {CURVES_PNG} "
          f"({len(target.rows)} iterations)")


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything the report says, gathered once; the best is results.best's."""

    runs: list[Run]
    target: Target
    space: list[Param] | None
    baseline: Run | None
    best_row: Row | None
    best: Run | None
    idea: Idea | None
    template: Template | None
    settings: Settings

    def value(self, run: Run | None) -> float | None:
        return self.target.counted(run.iteration) if run else None

    def run(self, iteration: int) -> Run | None:
        return next((r for r in self.runs if r.iteration == iteration), None)

    def names(self) -> list[str]:
        """The parameters shown per run: the tunable ones, else every one the runs used."""
        if self.space and tunable(self.space):
            return [p.name for p in tunable(self.space)]
        return sorted({k for r in self.runs for k in r.params})

    def met(self) -> bool:
        return any(self.target.met(r, self.baseline) for r in self.runs)


def render_report(f: Facts) -> str:
    """REPORT.md as markdown: first which script really ran, then the sections."""
    title = f.idea.title if f.idea else "experiment"
    return "\n\n".join([
        f"# Report: {title}", f"**Script that ran:** {script_line(f)}", HONEST,
        "## Summary", _summary(f),
        "## Approach", _approach(f),
        "## Results", _results(f),
        "## Challenges", _challenges(f),
        "## Recommendations", _recommendations(f),
    ]) + "\n"


def script_line(f: Facts) -> str:
    """Which script really ran: the person's train.py, or a template and why it stood in."""
    if not f.target.rows:
        return "none: no iteration ran."
    if f.template is None:
        return ("the person's own `train.py`, unchanged in every iteration; the builtin agent "
                "only passed it new values for the parameters it declares.")
    return (f"the builtin `{f.template.name}` template, {f.template.summary}: a stand-in, not "
            f"code written for this idea, chosen {why_template(f.template, f.idea, f.settings)}.")


def _summary(f: Facts) -> str:
    rows = list(f.target.rows)
    lines = [f"- **Status:** {_status(f)}",
             f"- **Key finding:** {_finding(f)}",
             f"- **Best vs baseline:** {_versus(f)}",
             f"- **Best (as mlsm records it):** {results.best_sentence(rows, f.target.objective)}"]
    counts = {o: sum(r.outcome == o for r in rows) for o in ("ok", "no_result", "failed")}
    diverged = sum(r.diverged for r in f.runs)
    total = sum(r.duration_s or 0.0 for r in rows)
    lines.append(f"- **Runs:** {len(rows)} iterations ({counts['ok']} ok, {counts['no_result']} "
                 f"without a value, {counts['failed']} failed; {diverged} diverged), "
                 f"{total:.1f} s of training in all; objective `{f.target.name}` "
                 f"({f.target.goal}).")
    return "\n".join(lines)


def _status(f: Facts) -> str:
    last = f.runs[-1].decision if f.runs else None
    if last and last.get("decision") == "finish":
        return f"finished after iteration {f.runs[-1].iteration}: {last.get('reason')}."
    if f.target.stop_reason:
        return f"stopped by mlsm: {f.target.stop_reason}"
    if not f.target.rows:
        return "no iteration ran."
    return (f"stopped by mlsm after iteration {f.target.rows[-1].iteration}, before the agent "
            "chose to finish (a budget or a STOP ended the run).")


def _finding(f: Facts) -> str:
    obj = f.target.name
    if f.best_row is None:
        return f"no successful run produced `{obj}`, so nothing can be compared."
    if f.value(f.baseline) is None:
        return (f"the baseline produced no `{obj}`; the best run (iteration "
                f"{f.best_row.iteration}) reached {fmt(f.best_row.value)}.")
    assert f.baseline is not None
    if f.best_row.iteration == f.baseline.iteration:
        return "no setting tried beat the baseline: its defaults stand."
    best_params = f.best.params if f.best else {}
    changes = [f"`{k}` {fmt(f.baseline.params.get(k))} → {fmt(best_params.get(k))}"
               for k in f.names() if f.baseline.params.get(k) != best_params.get(k)]
    what = ", ".join(changes) if changes else "the same parameters"
    return (f"changing {what} improved `{obj}` from {fmt(f.value(f.baseline))} to "
            f"{fmt(f.best_row.value)} (iteration {f.best_row.iteration}).")


def _versus(f: Facts) -> str:
    base = f.value(f.baseline)
    if f.best_row is None or f.best_row.value is None:
        return "no result to compare."
    best = f.best_row.value
    if base is None:
        return f"best {fmt(best)} at iteration {f.best_row.iteration}; no baseline value."
    delta = best - base
    rel = f" ({delta / abs(base):+.1%})" if base else ""
    return (f"best `{f.target.name}` = {fmt(best)} (iteration {f.best_row.iteration}) vs "
            f"baseline {fmt(base)}: {delta:+.4g}{rel}.")


def _approach(f: Facts) -> str:
    if f.template:
        script = (f"`train.py` was written from the builtin `{f.template.name}` template: "
                  f"{f.template.summary}.")
    else:
        script = "`train.py` is the person's own script; it ran unchanged in every iteration."
    obj = f.target.objective
    source = f"settled by mlsm from {obj.source}" if obj else "none settled"
    lines = [f"- **Script:** {script} Only its declared parameters changed between runs.",
             f"- **Objective:** `{f.target.name}`, {f.target.goal} ({source}).",
             *criteria_lines(f.target.criteria, f.idea.unclear if f.idea else (),
                             obj.name if obj else None), *_thresholds(f)]
    if f.space:
        lines.append("- **Search space:**\n" + "\n".join(f"  - {p.describe()}" for p in f.space))
    lines.append(f"- **Search:** iteration 1 ran the defaults (the baseline, the study's first "
                 f"trial); later iterations took values from Optuna's seeded TPE sampler "
                 f"(random for the first {STARTUP} trials), told each result, and stopped on "
                 "the rules in PLAN.md.")
    budget, source = iteration_budget(f.settings, f.idea)
    lines.append(f"- **Budget:** {budget} iterations ({source}), patience "
                 f"{f.settings.patience or 'off'}, max-failures {f.settings.max_failures}.")
    return "\n".join(lines)


def _thresholds(f: Facts) -> list[str]:
    """What each relative criterion needed, given the baseline's value."""
    lines = []
    for c in f.target.criteria:
        goal = f.target.goal_of(c)
        base = f.target.metric(f.baseline, c.metric) if c.relative else None
        limit = c.threshold(base, goal) if base is not None else None
        if limit is not None:
            op = (">" if c.value == 0 else ">=") if goal == "maximize" else (
                "<" if c.value == 0 else "<=")
            name = c.metric or f.target.name
            lines.append(f"  - with the baseline's {name} = {fmt(base)}, `{c.describe(name)}` "
                         f"means `{name} {op} {fmt(limit)}`.")
    return lines


def _results(f: Facts) -> str:
    """One line per history row; the best row (results.best) is marked, a failed one never."""
    names, obj = f.names(), f.target.name
    lines = [f"| iteration | parameters | {obj} | duration | outcome |", "|---|---|---|---|---|"]
    for row in f.target.rows:
        run = f.run(row.iteration)
        params = ", ".join(f"{k}={fmt(run.params[k])}" for k in names if run and k in run.params)
        value = f.target.value(row.iteration)
        seconds = row.duration_s if row.duration_s is not None else run and run.duration_s
        duration = f"{seconds:.1f} s" if isinstance(seconds, float) else "?"
        lines.append(f"| {row.iteration} | {params or '-'} | "
                     f"{fmt(value) if value is not None else '-'} | {duration} | "
                     f"{_outcome(f, row)} |")
    if not f.target.rows:
        lines.append("| - | - | - | - | no iteration ran |")
    return "\n\n".join([
        "\n".join(lines),
        f"![{obj} per iteration, with the running best]({OBJECTIVE_PNG})",
        f"![Training curves of the baseline and the best run]({CURVES_PNG})",
    ])


def _outcome(f: Facts, row: Row) -> str:
    run = f.run(row.iteration)
    tags = [row.outcome] + (["diverged"] if run and run.diverged else [])
    if row.iteration == 1:
        tags.append("baseline")
    if f.best_row is not None and row.iteration == f.best_row.iteration:
        tags.append("**best**")
    return ", ".join(tags)


def _challenges(f: Facts) -> str:
    lines = []
    for row in f.target.rows:
        run = f.run(row.iteration)
        problem = (run.problem if run else None) or row.detail or row.reason or "unknown problem"
        err = f": `{run.error_line}`" if run and run.error_line else ""
        if row.outcome == "failed":
            lines.append(f"- Iteration {row.iteration} failed: {problem}{err}.")
        elif run and run.diverged:
            lines.append(f"- Iteration {row.iteration} diverged: {problem}.")
        elif row.outcome == "no_result":
            lines.append(f"- Iteration {row.iteration} produced no `{f.target.name}`: "
                         f"{problem}.")
    if not lines:
        lines.append("- No run failed or diverged.")
    if f.target.criteria and not f.met():
        lines.append("- The success criterion " + " and ".join(
            f"`{c.describe(f.target.name)}`" for c in f.target.criteria) + " was not met.")
    return "\n".join(lines)


def _recommendations(f: Facts) -> str:
    lines = []
    if f.best is not None and f.baseline is not None and f.best.iteration != 1:
        values = ", ".join(f"`{k}={fmt(f.best.params[k])}`" for k in f.names()
                           if k in f.best.params)
        lines.append(f"- Make the best values the new defaults in `train.py`: {values}.")
    lines += _edges(f)
    if f.target.criteria and not f.met():
        lines.append("- The criterion was not reached by tuning alone: try more iterations, "
                     "a larger model or more training steps, or an agent that edits code.")
    if any(r.outcome == "failed" for r in f.target.rows):
        lines.append("- Read the failed runs' `stderr.log` in `logs/iter_NNN/` before the next "
                     "attempt.")
    lines.append("- Each setting ran once with one seed: rerun the best setting with a few "
                 "seeds before trusting a small difference.")
    return "\n".join(lines)


def _edges(f: Facts) -> list[str]:
    """Advice to widen a range whose best value sits at one of its ends."""
    if f.best is None or f.best.iteration == 1 or not f.space:
        return []
    out = []
    for p in tunable(f.space):
        value = f.best.params.get(p.name)
        end = _edge(p, value)
        if end:
            out.append(f"- `{p.name}` = {fmt(value)} in the best run sits at the {end} end of "
                       "its range: widen the range in `hooks.params` and search again.")
    return out


def _edge(p: Param, value: Any) -> str | None:
    if p.kind == "choice":
        numbers = [c for c in p.choices if isinstance(c, int | float) and not isinstance(c, bool)]
        if len(numbers) < 2 or numbers != sorted(p.choices) or value not in p.choices:
            return None  # only an ordered list of numbers has ends worth widening
        index = p.choices.index(value)
        return "lower" if index == 0 else "upper" if index == len(p.choices) - 1 else None
    if not isinstance(value, int | float) or p.low is None or p.high is None:
        return None
    scale = math.log if p.log else float
    low, high, x = scale(p.low), scale(p.high), scale(max(value, p.low) if p.log else value)
    position = (x - low) / (high - low)
    return "lower" if position <= 0.05 else "upper" if position >= 0.95 else None
