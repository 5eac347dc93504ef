"""The code role: keep or write train.py, and from iteration 2 on choose the next parameters."""

from __future__ import annotations

from mlsm.handlers.builtin.context import Step
from mlsm.handlers.builtin.files import write_json, write_text
from mlsm.handlers.builtin.idea import read_idea, read_idea_or_none
from mlsm.handlers.builtin.library import choose, script_template
from mlsm.handlers.builtin.runs import Run, latest_space, read_runs
from mlsm.handlers.builtin.search import ask, sync
from mlsm.handlers.builtin.space import Param, fmt, tunable
from mlsm.handlers.builtin.target import resolve_target


def run_code(step: Step) -> None:
    """Make sure train.py exists; for iteration >= 2 write the run's params.json."""
    train = step.exp_dir / "train.py"
    if not train.is_file():
        template, why = choose(read_idea(step.exp_dir))
        write_text(train, template.source())
        print(f"code: wrote train.py from the {template.name} template ({why})")
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


def choose_params(step: Step, runs: list[Run], space: list[Param]) -> dict[str, object]:
    """Tell the study every earlier run (idempotent), then ask it for this iteration's values."""
    target = resolve_target(step.settings, read_idea_or_none(step.exp_dir), runs,
                            script_template(step.exp_dir))
    study = sync(step.exp_dir, step.iteration, runs, space, target)
    return ask(study, step.iteration, space)
