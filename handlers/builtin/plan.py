"""The plan role: read IDEA.md (and train.py when a person wrote one) and write PLAN.md."""

from __future__ import annotations

from mlsm.handlers.builtin.context import Settings, Step
from mlsm.handlers.builtin.files import write_text
from mlsm.handlers.builtin.idea import Idea, read_idea
from mlsm.handlers.builtin.library import Template, choose, detect
from mlsm.handlers.builtin.search import STARTUP
from mlsm.handlers.builtin.space import Param, fmt, scan_source, tunable
from mlsm.handlers.builtin.target import Target, resolve_target

HONEST = (
    "_Written by mlsm's **builtin** agent: a deterministic research assistant that tunes the "
    "parameters a training script declares with `hooks.params`. It does not invent new models "
    "or edit code beyond choosing a starting template; every decision below follows fixed rules "
    "and a seeded Optuna search, so the same idea and the same results lead to the same "
    "choices._"
)


def run_plan(step: Step) -> None:
    """Write PLAN.md for the idea in the experiment directory."""
    idea = read_idea(step.exp_dir)
    train = step.exp_dir / "train.py"
    template: Template | None
    if train.is_file():
        source = train.read_text(encoding="utf-8", errors="replace")
        template, why = detect(source), None
    else:
        template, why = choose(idea)
        source = template.source()
    target = resolve_target(step.settings, idea, [], template)
    text = render_plan(idea, step.settings, why is None, template, why, scan_source(source),
                       target)
    write_text(step.exp_dir / "PLAN.md", text)
    script = f"the {template.name} template" if why and template else "the existing train.py"
    print(f"plan: wrote PLAN.md: {script}, {target.goal} {target.objective}")


def render_plan(idea: Idea, settings: Settings, own: bool, template: Template | None,
                why: str | None, space: list[Param] | None, target: Target) -> str:
    """PLAN.md as markdown."""
    parts = [f"# Plan: {idea.title}", HONEST,
             "## What will be tuned", *_script(own, template, why), *_space(space),
             "## Metric", *_metric(target),
             "## Baseline", *_baseline(space),
             "## Search", *_search(space),
             "## Stopping rule", *_stopping(idea, settings, target)]
    if idea.constraints:
        parts += ["## Constraints from IDEA.md", *(f"- {c}" for c in idea.constraints),
                  "The builtin agent does not check these itself; the templates are small, "
                  "CPU-only and take seconds per run."]
    return "\n\n".join(parts) + "\n"


def _script(own: bool, template: Template | None, why: str | None) -> list[str]:
    if own and template is not None:
        return [f"- **Script:** the existing `train.py`, written from the builtin "
                f"`{template.name}` template ({template.summary}); it runs unchanged and later "
                "iterations only change its parameters."]
    if own:
        return ["- **Script:** the person's own `train.py`, which runs unchanged; later "
                "iterations only pass new parameter values to it (`params.json`)."]
    assert template is not None
    return [f"- **Script:** the builtin `{template.name}` template, {template.summary}. "
            f"Chosen because {why}. It is written to `train.py` in iteration 1 and not edited "
            "afterwards; later iterations only change its parameters."]


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


def _metric(target: Target) -> list[str]:
    lines = [f"- **Objective:** `{target.objective}`, to **{target.goal}** "
             f"(from {target.source})."]
    if target.criteria:
        lines.append("- **Success criterion:** " + " and ".join(f"`{c}`" for c in target.criteria)
                     + " (checked on each run's final metrics).")
    else:
        lines.append("- **Success criterion:** none in IDEA.md; the search runs until a budget "
                     "or the patience rule ends it.")
    return ["\n".join(lines)]


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


def _stopping(idea: Idea, settings: Settings, target: Target) -> list[str]:
    budget = settings.max_iterations
    rules = []
    if target.criteria:
        rules.append("the success criterion is met (" + " and ".join(
            f"`{c}`" for c in target.criteria) + ")")
    if idea.max_iterations is not None and idea.max_iterations < budget:
        budget = idea.max_iterations
        rules.append(f"{budget} iterations have run (the budget in IDEA.md)")
    else:
        rules.append(f"{budget} iterations have run (`max-iterations`)")
    if settings.patience:
        rules.append(f"{settings.patience} iterations in a row bring no improvement (patience)")
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
