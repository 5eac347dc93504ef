"""The report role: REPORT.md (summary, approach, results, challenges, advice) and its plots."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mlsm.handlers.builtin.analyze import iteration_budget
from mlsm.handlers.builtin.context import Settings, Step
from mlsm.handlers.builtin.files import read_object, write_text
from mlsm.handlers.builtin.idea import Idea, read_idea_or_none
from mlsm.handlers.builtin.library import Template, script_template
from mlsm.handlers.builtin.plan import HONEST
from mlsm.handlers.builtin.plots import plot_curves, plot_objective
from mlsm.handlers.builtin.runs import DIVERGED, FAILED, Run, latest_space, read_runs
from mlsm.handlers.builtin.search import STARTUP
from mlsm.handlers.builtin.space import Param, fmt, tunable
from mlsm.handlers.builtin.target import Target, resolve_target

OBJECTIVE_PNG = "report_objective.png"
CURVES_PNG = "report_curves.png"


def run_report(step: Step) -> None:
    """Draw the plots beside REPORT.md, then write REPORT.md (the product, last)."""
    runs = read_runs(step.exp_dir, step.iteration)
    idea = read_idea_or_none(step.exp_dir)
    template = script_template(step.exp_dir)
    target = resolve_target(step.settings, idea, runs, template)
    baseline = runs[0] if runs and runs[0].iteration == 1 else None
    best = target.best(runs)
    plot_objective(step.exp_dir / OBJECTIVE_PNG, runs, target)
    plot_curves(step.exp_dir / CURVES_PNG, baseline, best, target)
    stop_reason = (read_object(step.exp_dir / "status.json") or {}).get("stop_reason")
    facts = Facts(runs, target, latest_space(runs), baseline, best, idea, template,
                  step.settings, stop_reason if isinstance(stop_reason, str) else None)
    write_text(step.exp_dir / "REPORT.md", render_report(facts))
    print(f"report: wrote REPORT.md, {OBJECTIVE_PNG} and {CURVES_PNG} ({len(runs)} iterations)")


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything the report says, gathered once."""

    runs: list[Run]
    target: Target
    space: list[Param] | None
    baseline: Run | None
    best: Run | None
    idea: Idea | None
    template: Template | None
    settings: Settings
    stop_reason: str | None

    def value(self, run: Run | None) -> float | None:
        return run.value(self.target.objective) if run else None

    def names(self) -> list[str]:
        """The parameters shown per run: the tunable ones, else every one the runs used."""
        if self.space and tunable(self.space):
            return [p.name for p in tunable(self.space)]
        return sorted({k for r in self.runs for k in r.params})


def render_report(f: Facts) -> str:
    """REPORT.md as markdown."""
    title = f.idea.title if f.idea else "experiment"
    return "\n\n".join([
        f"# Report: {title}", HONEST,
        "## Summary", _summary(f),
        "## Approach", _approach(f),
        "## Results", _results(f),
        "## Challenges", _challenges(f),
        "## Recommendations", _recommendations(f),
    ]) + "\n"


def _summary(f: Facts) -> str:
    obj = f.target.objective
    lines = [f"- **Status:** {_status(f)}",
             f"- **Key finding:** {_finding(f)}",
             f"- **Best vs baseline:** {_versus(f)}"]
    counts = {o: sum(r.outcome == o for r in f.runs) for o in ("ok", DIVERGED, FAILED)}
    total = sum(r.duration_s or 0.0 for r in f.runs)
    lines.append(f"- **Runs:** {len(f.runs)} iterations ({counts['ok']} ok, {counts[DIVERGED]} "
                 f"diverged, {counts[FAILED]} failed), {total:.1f} s of training in all; "
                 f"objective `{obj}` ({f.target.goal}).")
    return "\n".join(lines)


def _status(f: Facts) -> str:
    last = f.runs[-1].decision if f.runs else None
    if last and last.get("decision") == "finish":
        return f"finished after iteration {f.runs[-1].iteration}: {last.get('reason')}."
    if f.stop_reason:
        return f"stopped by mlsm: {f.stop_reason}"
    if not f.runs:
        return "no iteration ran."
    return (f"stopped by mlsm after iteration {f.runs[-1].iteration}, before the agent chose "
            "to finish (a budget or a STOP ended the run).")


def _finding(f: Facts) -> str:
    obj = f.target.objective
    if f.best is None:
        return f"no run produced a finite `{obj}`, so nothing can be compared."
    if f.baseline is None or f.value(f.baseline) is None:
        return (f"the baseline produced no `{obj}`; the best run (iteration "
                f"{f.best.iteration}) reached {fmt(f.value(f.best))}.")
    if f.best.iteration == f.baseline.iteration:
        return "no setting tried beat the baseline: its defaults stand."
    changes = [f"`{k}` {fmt(f.baseline.params.get(k))} → {fmt(f.best.params.get(k))}"
               for k in f.names() if f.baseline.params.get(k) != f.best.params.get(k)]
    what = ", ".join(changes) if changes else "the same parameters"
    return (f"changing {what} improved `{obj}` from {fmt(f.value(f.baseline))} to "
            f"{fmt(f.value(f.best))} (iteration {f.best.iteration}).")


def _versus(f: Facts) -> str:
    best, base = f.value(f.best), f.value(f.baseline)
    if best is None or f.best is None:
        return "no result to compare."
    if base is None:
        return f"best {fmt(best)} at iteration {f.best.iteration}; no baseline value."
    delta = best - base
    rel = f" ({delta / abs(base):+.1%})" if base else ""
    return (f"best `{f.target.objective}` = {fmt(best)} (iteration {f.best.iteration}) vs "
            f"baseline {fmt(base)}: {delta:+.4g}{rel}.")


def _approach(f: Facts) -> str:
    if f.template:
        script = (f"`train.py` was written from the builtin `{f.template.name}` template: "
                  f"{f.template.summary}.")
    else:
        script = "`train.py` is the person's own script; it ran unchanged in every iteration."
    lines = [f"- **Script:** {script} Only its declared parameters changed between runs.",
             f"- **Objective:** `{f.target.objective}`, {f.target.goal} (from "
             f"{f.target.source})" + (", success when " + " and ".join(
                 f"`{c}`" for c in f.target.criteria) if f.target.criteria else "") + "."]
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


def _results(f: Facts) -> str:
    names = f.names()
    obj = f.target.objective
    rows = [f"| iteration | parameters | {obj} | duration | outcome |", "|---|---|---|---|---|"]
    for run in f.runs:
        params = ", ".join(f"{k}={fmt(run.params[k])}" for k in names if k in run.params)
        value = run.value(obj)
        shown = fmt(value) if value is not None else fmt(run.metrics.get(obj, math.nan))
        duration = f"{run.duration_s:.1f} s" if run.duration_s is not None else "?"
        rows.append(f"| {run.iteration} | {params or '-'} | {shown} | {duration} | "
                    f"{_outcome(f, run)} |")
    if not f.runs:
        rows.append("| - | - | - | - | no iteration ran |")
    return "\n\n".join([
        "\n".join(rows),
        f"![{obj} per iteration, with the running best]({OBJECTIVE_PNG})",
        f"![Training curves of the baseline and the best run]({CURVES_PNG})",
    ])


def _outcome(f: Facts, run: Run) -> str:
    tags = [run.outcome]
    if run.iteration == 1:
        tags.append("baseline")
    if f.best is not None and run.iteration == f.best.iteration:
        tags.append("**best**")
    return ", ".join(tags)


def _challenges(f: Facts) -> str:
    lines = []
    for run in f.runs:
        if run.outcome == FAILED:
            err = f": `{run.error_line}`" if run.error_line else ""
            lines.append(f"- Iteration {run.iteration} failed: {run.problem}{err}.")
        elif run.outcome == DIVERGED:
            lines.append(f"- Iteration {run.iteration} diverged: {run.problem}.")
    if not lines:
        lines.append("- No run failed or diverged.")
    if f.target.criteria and not any(f.target.met(r) for r in f.runs):
        lines.append("- The success criterion " + " and ".join(
            f"`{c}`" for c in f.target.criteria) + " was not met.")
    return "\n".join(lines)


def _recommendations(f: Facts) -> str:
    lines = []
    if f.best is not None and f.baseline is not None and f.best.iteration != 1:
        values = ", ".join(f"`{k}={fmt(f.best.params[k])}`" for k in f.names()
                           if k in f.best.params)
        lines.append(f"- Make the best values the new defaults in `train.py`: {values}.")
    lines += _edges(f)
    if f.target.criteria and not any(f.target.met(r) for r in f.runs):
        lines.append("- The criterion was not reached by tuning alone: try more iterations, "
                     "a larger model or more training steps, or an agent that edits code.")
    if any(r.outcome == FAILED for r in f.runs):
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
