"""The plan role: read IDEA.md (and train.py when a person wrote one) and write PLAN.md."""

from __future__ import annotations

import dataclasses

from mlsm.handlers.builtin.context import Settings, Step
from mlsm.handlers.builtin.files import write_text
from mlsm.handlers.builtin.idea import Criterion, Idea, read_idea
from mlsm.handlers.builtin.library import Template, choose, detect
from mlsm.handlers.builtin.search import STARTUP
from mlsm.handlers.builtin.space import Param, fmt, scan_source, tunable
from mlsm.handlers.builtin.target import propose, status_objective
from mlsm.machine.core.results import Objective

HONEST = (
    "_Written by mlsm's **builtin** agent: a deterministic research assistant that tunes the "
    "parameters a training script declares with `hooks.params`. It does not invent new models "
    "or write code for an idea: it runs the person's own `train.py`, or one of its small "
    "stand-in templates when the idea asks for exactly that task; every decision below follows "
    "fixed rules and a seeded Optuna search, so the same idea and the same results lead to the "
    "same choices._"
)


@dataclasses.dataclass(frozen=True)
class Choice:
    """What the plan runs and optimises, and where each part came from."""

    template: Template | None  # the template the script is (or will be) written from
    why: str | None  # why a template will be written; None when train.py exists
    space: list[Param] | None
    objective: Objective | None
    source: str  # where the objective came from


def run_plan(step: Step) -> None:
    """Write PLAN.md for the idea; with no train.py and no fitting template, write nothing and
    fail with one line (NoTemplateError, exit 3)."""
    idea = read_idea(step.exp_dir)
    choice = make_choice(step, idea)
    write_text(step.exp_dir / "PLAN.md", render_plan(idea, step.settings, choice))
    script = f"the {choice.template.name} template" if choice.why and choice.template \
        else "the existing train.py"
    goal = f"{choice.objective.goal} {choice.objective.name}" if choice.objective \
        else "objective left to train.py's hooks.result"
    print(f"plan: wrote PLAN.md: {script}, {goal}")


def make_choice(step: Step, idea: Idea) -> Choice:
    """The script (the person's train.py, else a fitting template) and the objective."""
    train = step.exp_dir / "train.py"
    settled = status_objective(step.exp_dir)
    if train.is_file():
        source = train.read_text(encoding="utf-8", errors="replace")
        template, why = detect(source), None
    else:
        wanted = settled.name if settled else step.settings.objective or idea.objective
        template, why = choose(idea, step.settings, wanted)
        source = template.source()
    objective: Objective | None = settled
    where = f"mlsm's status ({settled.source})" if settled else ""
    if settled is None:
        objective, where = propose(step.settings, idea, template, source)
    return Choice(template, why, scan_source(source), objective, where)


def render_plan(idea: Idea, settings: Settings, choice: Choice) -> str:
    """PLAN.md as markdown; the objective line right after the title, as mlsm parses it."""
    head = [f"# Plan: {idea.title}"]
    if choice.objective is not None:
        head.append(f"Objective: {choice.objective.goal} {choice.objective.name}")
    parts = [*head, HONEST,
             "## What will be tuned", *_script(choice, idea), *_space(choice.space),
             "## Metric", *_metric(choice, idea),
             "## Baseline", *_baseline(choice.space),
             "## Search", *_search(choice.space),
             "## Stopping rule", *_stopping(idea, settings, choice)]
    if idea.constraints:
        parts += ["## Constraints from IDEA.md", *(f"- {c}" for c in idea.constraints),
                  "The builtin agent does not check these itself; the templates are small, "
                  "CPU-only and take seconds per run."]
    return "\n\n".join(parts) + "\n"


def _script(choice: Choice, idea: Idea) -> list[str]:
    template = choice.template
    if choice.why is None and template is not None:
        return [f"- **Script:** the existing `train.py`, written from the builtin "
                f"`{template.name}` template ({template.summary}); it runs unchanged and later "
                "iterations only change its parameters."]
    if choice.why is None:
        return ["- **Script:** the person's own `train.py`, which runs unchanged; later "
                "iterations only pass new parameter values to it (`params.json`)."]
    assert template is not None
    return [f"- **Script:** the builtin `{template.name}` template, {template.summary}. It is "
            f"a stand-in, not code written for this idea, chosen {choice.why}. It is written "
            "to `train.py` in iteration 1 and not edited afterwards; later iterations only "
            "change its parameters."]


def _space(space: list[Param] | None) -> list[str]:
    if space is None:
        return ["- **Search space:** not readable from the source; it is taken from the "
                "`space.json` that `hooks.params` writes in the baseline run."]
    if not tunable(space):
        return ["- **Search space:** `train.py` declares no tunable parameter, so there is "
                "nothing to search: the baseline will be the only run."]
    lines = ["- **Search space** (declared in `train.py` with `hooks.params`):"]
    lines += [f"  - {p.describe()}" for p in space]
    return ["\n".join(lines)]


def _metric(choice: Choice, idea: Idea) -> list[str]:
    obj = choice.objective
    if obj is None:
        lines = ["- **Metric to optimise:** not named in IDEA.md or the configuration, and "
                 "`train.py`'s `hooks.result` call is not literal: mlsm takes the metric the "
                 "first run reports as its objective."]
    else:
        lines = [f"- **Objective:** `{obj.name}`, to **{obj.goal}** (from {choice.source})."]
    if idea.objective and obj and choice.template and choice.template.reports(
            idea.objective) is None:
        lines.append(f"- IDEA.md names `{idea.objective}`, which the `{choice.template.name}` "
                     f"template does not report ({', '.join(choice.template.metrics)}).")
    lines += criteria_lines(idea.criteria, idea.unclear, obj.name if obj else None)
    return ["\n".join(lines)]


def criteria_lines(criteria: tuple[Criterion, ...], unclear: tuple[str, ...],
                   objective: str | None) -> list[str]:
    """The success criteria as PLAN.md and REPORT.md list them, unread ones quoted back."""
    lines = []
    if criteria:
        relative = any(c.relative for c in criteria)
        lines.append("- **Success criterion:** " + " and ".join(
            f"`{c.describe(objective)}`" for c in criteria) + " (checked on each successful "
            "run" + ("; relative to the baseline's value, iteration 1, in the objective's "
                     "direction" if relative else "") + ").")
    for text in unclear:
        lines.append(f"- **Success criterion:** not understood: {text} (quoted from IDEA.md; "
                     "the builtin agent does not guess its meaning and does not check it)")
    if not criteria and not unclear:
        lines.append("- **Success criterion:** none in IDEA.md; the search runs until a budget "
                     "or the patience rule ends it.")
    return lines


def _baseline(space: list[Param] | None) -> list[str]:
    text = ("Iteration 1 runs `train.py` with its defaults. That run is the baseline: every "
            "later result is compared with it, and it is the first trial of the search.")
    if space and tunable(space):
        defaults = ", ".join(f"`{p.name}={fmt(p.default)}`" for p in tunable(space))
        text += f" Defaults: {defaults}."
    return [text]


def _search(space: list[Param] | None) -> list[str]:
    if space is not None and not tunable(space):
        return ["None: there are no tunable parameters."]
    return [f"Optuna's TPE sampler, seeded, with the study stored in `.mlsm/optuna.journal` so "
            f"a restart resumes it. The first {STARTUP} trials (the baseline included) sample "
            "at random to map the space; after that TPE proposes values near the best so far. "
            "Each iteration's values are written to `logs/iter_NNN/params.json`. Runs that "
            "fail are told to Optuna as failed; runs that diverge count as the worst result "
            "seen, so the search moves away from them."]


def _stopping(idea: Idea, settings: Settings, choice: Choice) -> list[str]:
    budget = settings.max_iterations
    rules = []
    name = choice.objective.name if choice.objective else None
    if idea.criteria:
        rules.append("the success criterion is met (" + " and ".join(
            f"`{c.describe(name)}`" for c in idea.criteria) + ")")
    if idea.max_iterations is not None and idea.max_iterations < budget:
        budget = idea.max_iterations
        rules.append(f"{budget} iterations have run (the budget in IDEA.md)")
    else:
        rules.append(f"{budget} iterations have run (`max-iterations`)")
    if settings.patience:
        rules.append(f"{settings.patience} iterations pass without a new best, as mlsm counts "
                     "them (patience)")
    rules.append(f"{settings.max_failures} runs in a row fail (`max-failures`)")
    rules.append("the baseline fails before declaring its parameters (the builtin agent cannot "
                 "fix code)")
    lines = ["The analysis after each run finishes the search when:"]
    lines += [f"- {r}" for r in rules]
    if settings.max_hours or idea.minutes:
        hours = settings.max_hours
        lines.append("- Time budget: " + ", ".join(
            ([f"`max-hours` {hours:g} h, enforced by mlsm"] if hours else [])
            + ([f"IDEA.md mentions {idea.minutes:g} minutes"] if idea.minutes else [])) + ".")
    return ["\n".join(lines)]
