"""The analyze role: read a run's results, tell the search, and decide to continue or finish."""

from __future__ import annotations

import dataclasses

from mlsm.handlers.builtin.context import Settings, Step
from mlsm.handlers.builtin.files import write_json, write_text
from mlsm.handlers.builtin.idea import Idea, read_idea_or_none
from mlsm.handlers.builtin.runs import Run, latest_space, read_run, read_runs
from mlsm.handlers.builtin.search import sync
from mlsm.handlers.builtin.space import Param, fmt, tunable
from mlsm.handlers.builtin.target import Target, read_target
from mlsm.machine.core import results


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
    target = read_target(step.exp_dir, step.settings, idea, step.iteration)
    space = latest_space(runs)
    if space and tunable(space):
        sync(step.exp_dir, step.iteration, runs, space, target)
    decision = decide(current, runs, target, space, step.settings, idea)
    write_text(step.run_dir / "analysis.md", render_analysis(current, target, decision))
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
    entry = (f"\n{marker}\n## Iteration {step.iteration}\n- tried: {tried}\n"
             f"- result: {standing(run, target)}; outcome {outcome(run, target)}\n"
             f"- decision: {decision.decision}: {decision.reason}\n")
    write_text(path, notes.rstrip("\n") + "\n" + entry)


def outcome(run: Run, target: Target) -> str:
    """The daemon's outcome of a run (ok, failed, no_result), "diverged" added when it did."""
    row = target.row(run.iteration)
    text = row.outcome if row else "failed"
    return f"{text}, diverged" if run.diverged else text


def decide(current: Run, runs: list[Run], target: Target, space: list[Param] | None,
           settings: Settings, idea: Idea | None) -> Decision:
    """Finish when the idea succeeded, nothing can change, or a budget is spent; else continue."""
    value = target.counted(current.iteration)
    reason = _finish_reason(current, runs, target, space, settings, idea)
    if reason:
        return Decision("finish", reason, value)
    row = target.row(current.iteration)
    if row is None or row.outcome == "failed":
        failures = results.consecutive_failures(list(target.rows))
        return Decision("continue", f"the run failed ({_why(current)}); trying other "
                        f"parameters ({failures} of {settings.max_failures} failures allowed "
                        "in a row)", value)
    return Decision("continue", f"{standing(current, target)}; trying new parameters", value)


def _finish_reason(current: Run, runs: list[Run], target: Target, space: list[Param] | None,
                   settings: Settings, idea: Idea | None) -> str | None:
    """Why the search should finish now, if it should. Failures in a row and iterations since
    the best are counted by `results`, as mlsm counts them."""
    row = target.row(current.iteration)
    summary = standing(current, target)
    budget, budget_source = iteration_budget(settings, idea)
    failures = results.consecutive_failures(list(target.rows))
    waited = results.since_best(list(target.rows), target.objective)
    baseline = runs[0] if runs and runs[0].iteration == 1 else None
    checks = [
        (target.met(current, baseline), f"success criterion {_criteria(target)} met: {summary}"),
        ((row is None or row.outcome == "failed") and space is None,
         f"the run failed before declaring its parameters ({_why(current)}); the builtin "
         "agent only tunes parameters and cannot fix train.py: fix it and start again"),
        (failures >= 2 and _same_crash(current, runs),
         f"the same crash twice in a row ({_why(current)}): other parameters will not fix "
         "train.py; fix it and start again"),
        (failures >= settings.max_failures,
         f"{failures} runs in a row failed (max-failures {settings.max_failures}); last: "
         f"{_why(current)}"),
        (space is None and row is not None and row.outcome != "failed",
         "train.py declares no search space (hooks.params, or [params] in mlsm.toml), so "
         f"another run would only repeat this one: {summary}"),
        (space is not None and not tunable(space),
         f"train.py declares no tunable parameters, so there is nothing to search: {summary}"),
        (current.iteration >= budget,
         f"iteration budget spent ({budget} iterations, {budget_source}): {summary}"),
        (settings.patience > 0 and target.best_row() is not None and waited >= settings.patience,
         f"no new best {target.name} for {waited} iterations (patience {settings.patience}): "
         f"{summary}"),
    ]
    return next((reason for finished, reason in checks if finished), None)


def _criteria(target: Target) -> str:
    return " and ".join(c.describe(target.name) for c in target.criteria)


def _same_crash(current: Run, runs: list[Run]) -> bool:
    """Whether the run before this one failed with the same error line."""
    before = [r for r in runs if r.iteration == current.iteration - 1]
    return bool(before and current.error_line and before[0].error_line == current.error_line)


def _why(run: Run) -> str:
    text = run.problem or "unknown problem"
    return f"{text}: {run.error_line}" if run.error_line else text


def iteration_budget(settings: Settings, idea: Idea | None) -> tuple[int, str]:
    """The smaller of mlsm's max-iterations and a budget IDEA.md names."""
    if idea and idea.max_iterations is not None and idea.max_iterations < settings.max_iterations:
        return idea.max_iterations, "from IDEA.md"
    return settings.max_iterations, "max-iterations"


def standing(current: Run, target: Target) -> str:
    """One phrase: this run's value, the baseline's and the best so far (results.best)."""
    name = target.name
    value = target.counted(current.iteration)
    row = target.row(current.iteration)
    parts = [f"{name} = {fmt(value)}" if value is not None
             else f"no {name} ({outcome(current, target) if row else 'failed'})"]
    baseline = target.counted(1)
    if baseline is not None and current.iteration != 1:
        parts.append(f"baseline {fmt(baseline)}")
    best = target.best_row()
    if best is not None and best.iteration != current.iteration:
        parts.append(f"best {fmt(best.value)} at iteration {best.iteration}")
    elif best is not None and current.iteration != 1:
        parts.append("the best so far")
    return parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")


def render_analysis(run: Run, target: Target, decision: Decision) -> str:
    """analysis.md as markdown."""
    lines = [f"# Analysis of iteration {run.iteration}", "",
             f"- **Outcome:** {outcome(run, target)}" + (f": {run.problem}" if run.problem
                                                          else "")]
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
    source = f"(from {target.objective.source})" if target.objective else "(none settled yet)"
    lines.append(f"- **Objective:** {target.goal} `{target.name}` {source}; "
                 + standing(run, target))
    best = results.best_sentence(list(target.rows), target.objective)
    lines.append(f"- **Best so far (mlsm):** {best}")
    for c in target.criteria:
        if c.metric and not target.is_objective(c.metric) and run.metrics \
                and run.metric(c.metric) is None:
            lines.append(f"- **Criterion `{c.describe(target.name)}` cannot be checked:** the "
                         f"run reported no `{c.metric}` (it reported "
                         f"{', '.join(sorted(run.metrics))}).")
    lines += ["", f"**Decision: {decision.decision}.** {decision.reason}.", ""]
    return "\n".join(lines)
