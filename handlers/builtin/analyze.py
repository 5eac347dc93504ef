"""The analyze role: read a run's results, tell the search, and decide to continue or finish."""

from __future__ import annotations

import dataclasses

from mlsm.handlers.builtin.context import Settings, Step
from mlsm.handlers.builtin.files import write_json, write_text
from mlsm.handlers.builtin.idea import Idea, read_idea_or_none
from mlsm.handlers.builtin.library import script_template
from mlsm.handlers.builtin.runs import FAILED, Run, latest_space, read_run, read_runs
from mlsm.handlers.builtin.search import sync
from mlsm.handlers.builtin.space import Param, fmt, tunable
from mlsm.handlers.builtin.target import Target, match_metric, resolve_target


@dataclasses.dataclass(frozen=True)
class Decision:
    """What decision.json says."""

    decision: str
    reason: str
    metric: float | None


def run_analyze(step: Step) -> None:
    """Write analysis.md and decision.json for the run of this iteration."""
    current = read_run(step.exp_dir, step.iteration)
    runs = [*read_runs(step.exp_dir, step.iteration - 1), current]
    idea = read_idea_or_none(step.exp_dir)
    target = resolve_target(step.settings, idea, runs, script_template(step.exp_dir))
    space = latest_space(runs)
    if space and tunable(space):
        sync(step.exp_dir, step.iteration, runs, space, target)
    decision = decide(current, runs, target, space, step.settings, idea)
    write_text(step.run_dir / "analysis.md", render_analysis(current, runs, target, decision))
    doc: dict[str, object] = {"decision": decision.decision, "reason": decision.reason}
    if decision.metric is not None:
        doc["metric"] = decision.metric
    write_json(step.run_dir / "decision.json", doc)
    update_notes(step, current, target, decision)
    print(f"analyze: iteration {step.iteration}: {decision.decision}: {decision.reason}")


def update_notes(step: Step, run: Run, target: Target, decision: Decision) -> None:
    """Append this iteration to NOTES.md, the research memory (once, even if re-run)."""
    path = step.exp_dir / "NOTES.md"
    marker = f"<!-- mlsm iteration {step.iteration} -->"
    try:
        notes = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        notes = "# Research notes\n\nOne entry per iteration, written by the builtin agent.\n"
    if marker in notes:
        return
    tried = ", ".join(f"{k}={fmt(v)}" for k, v in run.params.items()) or "the script as given"
    value = run.value(target.objective)
    result = f"{target.objective} = {fmt(value)}" if value is not None else (
        f"no {target.objective} ({run.problem or run.outcome})")
    entry = (f"\n{marker}\n## Iteration {step.iteration}\n- tried: {tried}\n"
             f"- result: {result}; outcome {run.outcome}\n"
             f"- decision: {decision.decision}: {decision.reason}\n")
    write_text(path, notes.rstrip("\n") + "\n" + entry)


def decide(current: Run, runs: list[Run], target: Target, space: list[Param] | None,
           settings: Settings, idea: Idea | None) -> Decision:
    """Finish when the idea succeeded, nothing can change, or a budget is spent; else continue."""
    value = current.value(target.objective)
    summary = standing(current, runs, target)
    budget, budget_source = iteration_budget(settings, idea)
    met = target.met(current)
    failures = consecutive_failures(runs)
    best = target.best(runs)
    checks = [
        (met is not None, f"success criterion {' and '.join(map(str, met or []))} met: {summary}"),
        (current.outcome == FAILED and space is None,
         f"the run failed before declaring its parameters ({_why(current)}); the builtin "
         "agent only tunes parameters and cannot fix train.py: fix it and start again"),
        (failures >= settings.max_failures,
         f"{failures} runs in a row failed (max-failures {settings.max_failures}); last: "
         f"{_why(current)}"),
        (space is not None and not tunable(space),
         f"train.py declares no tunable parameters, so there is nothing to search: {summary}"),
        (current.iteration >= budget,
         f"iteration budget spent ({budget} iterations, {budget_source}): {summary}"),
        (settings.patience > 0 and best is not None
         and current.iteration - best.iteration >= settings.patience,
         f"no improvement for {settings.patience} iterations (patience): {summary}"),
    ]
    for finished, reason in checks:
        if finished:
            return Decision("finish", reason, value)
    if current.outcome == FAILED:
        return Decision("continue", f"the run failed ({_why(current)}); trying other "
                        f"parameters ({failures} of {settings.max_failures} failures allowed "
                        "in a row)", value)
    return Decision("continue", f"{summary}; trying new parameters", value)


def _why(run: Run) -> str:
    text = run.problem or "unknown problem"
    return f"{text}: {run.error_line}" if run.error_line else text


def iteration_budget(settings: Settings, idea: Idea | None) -> tuple[int, str]:
    """The smaller of mlsm's max-iterations and a budget IDEA.md names."""
    if idea and idea.max_iterations is not None and idea.max_iterations < settings.max_iterations:
        return idea.max_iterations, "from IDEA.md"
    return settings.max_iterations, "max-iterations"


def consecutive_failures(runs: list[Run]) -> int:
    """How many of the latest runs failed, counting back from the last."""
    count = 0
    for run in reversed(runs):
        if run.outcome != FAILED:
            break
        count += 1
    return count


def standing(current: Run, runs: list[Run], target: Target) -> str:
    """One phrase: this run's value, the baseline's and the best so far."""
    name = target.objective
    value = current.value(name)
    parts = [f"{name} = {fmt(value)}" if value is not None
             else f"no {name} ({current.outcome})"]
    baseline = runs[0].value(name) if runs and runs[0].iteration == 1 else None
    if baseline is not None and current.iteration != 1:
        parts.append(f"baseline {fmt(baseline)}")
    best = target.best(runs)
    if best is not None and best.iteration != current.iteration:
        parts.append(f"best {fmt(best.value(name))} at iteration {best.iteration}")
    elif best is not None and current.iteration != 1:
        parts.append("the best so far")
    return parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")


def render_analysis(run: Run, runs: list[Run], target: Target, decision: Decision) -> str:
    """analysis.md as markdown."""
    lines = [f"# Analysis of iteration {run.iteration}", "",
             f"- **Outcome:** {run.outcome}" + (f": {run.problem}" if run.problem else "")]
    if run.error_line:
        lines.append(f"- **Last error line in stderr.log:** `{run.error_line}`")
    if run.params:
        lines.append("- **Parameters:** " + ", ".join(
            f"`{k}={fmt(v)}`" for k, v in sorted(run.params.items())))
    if run.metrics:
        lines.append("- **Final metrics:** " + ", ".join(
            f"`{k}={fmt(v)}`" for k, v in sorted(run.metrics.items())))
    if run.duration_s is not None:
        lines.append(f"- **Duration:** {run.duration_s:.1f} s")
    lines.append(f"- **Objective:** {target.goal} `{target.objective}` (from {target.source}); "
                 + standing(run, runs, target))
    for c in target.criteria:
        if run.metrics and match_metric(c.metric, list(run.metrics)) is None:
            lines.append(f"- **Criterion `{c}` cannot be checked:** the run reported no "
                         f"`{c.metric}` (it reported {', '.join(sorted(run.metrics))}).")
    lines += ["", f"**Decision: {decision.decision}.** {decision.reason}.", ""]
    return "\n".join(lines)
