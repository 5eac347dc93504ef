"""The code role: keep the person's train.py or write the fitting template, then pick parameters."""

from __future__ import annotations

from mlsm.handlers.builtin.context import Step
from mlsm.handlers.builtin.files import write_json, write_text
from mlsm.handlers.builtin.idea import read_idea, read_idea_or_none
from mlsm.handlers.builtin.library import choose
from mlsm.handlers.builtin.runs import Run, latest_space, read_runs
from mlsm.handlers.builtin.search import ask, sync
from mlsm.handlers.builtin.space import Param, fmt, tunable
from mlsm.handlers.builtin.target import propose, read_target, settle, status_objective


def run_code(step: Step) -> None:
    """Make sure train.py exists; for iteration >= 2 write the run's params.json."""
    train = step.exp_dir / "train.py"
    if not train.is_file():
        write_template(step)
    elif step.iteration <= 1:
        print("code: keeping the existing train.py; iteration 1 runs it with its defaults")
    if step.iteration <= 1:
        return
    runs = read_runs(step.exp_dir, step.iteration - 1)
    space = latest_space(runs)
    params = choose_params(step, runs, space) if space and tunable(space) else {}
    write_json(step.run_dir / "params.json", params)
    shown = ", ".join(f"{k}={fmt(v)}" for k, v in sorted(params.items())) or "none to tune"
    print(f"code: iteration {step.iteration} parameters: {shown}")


def write_template(step: Step) -> None:
    """Write train.py from the template that fits (the same choice the plan made), reporting the
    objective the daemon has settled; NoTemplateError (exit 3) when none fits."""
    idea = read_idea(step.exp_dir)
    objective = status_objective(step.exp_dir) or settle(step.exp_dir, step.settings, 0)
    wanted = objective.name if objective else step.settings.objective or idea.objective
    template, why = choose(idea, step.settings, wanted)
    if objective is None:
        objective, _ = propose(step.settings, idea, template, None)
    write_text(step.exp_dir / "train.py", template.source(objective))
    named = objective.name if objective and objective.name in template.metrics else None
    print(f"code: wrote train.py from the {template.name} template, chosen {why}; its "
          f"hooks.result reports {named or template.objective} as the objective")


def choose_params(step: Step, runs: list[Run], space: list[Param]) -> dict[str, object]:
    """Tell the study every earlier run (idempotent), then ask it for this iteration's values."""
    target = read_target(step.exp_dir, step.settings, read_idea_or_none(step.exp_dir),
                         step.iteration - 1)
    study = sync(step.exp_dir, step.iteration, runs, space, target)
    return ask(study, step.iteration, space)
