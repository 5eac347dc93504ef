"""The Optuna study on disk: one trial per iteration, the baseline first, asked idempotently."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Literal

from mlsm.handlers.builtin.context import private_dir
from mlsm.handlers.builtin.runs import Run
from mlsm.handlers.builtin.space import Param, tunable
from mlsm.handlers.builtin.target import Target

STUDY = "mlsm-builtin"
ITERATION = "mlsm_iteration"  # user attribute: the iteration a trial belongs to
OUTCOME = "mlsm_outcome"
SEED = 2024
STARTUP = 4  # trials before TPE takes over from random sampling (the baseline counts)
LOCK_GRACE = 5


def journal_path(exp_dir: Path) -> Path:
    """Where the study lives: an append-only Optuna journal in .mlsm/."""
    return private_dir(exp_dir) / "optuna.journal"


def study_name(space: list[Param], target: Target) -> str:
    """One study per search space and objective: a script whose declared space changes starts a
    new study (Optuna refuses to mix distributions of one name), and so does a new objective or
    direction; earlier runs are told to it again."""
    shape: list[object] = [[p.name, p.kind, p.low, p.high, [p.encode(c) for c in p.choices],
                            p.log] for p in tunable(space)]
    shape.append([target.name, target.goal])
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()
    return f"{STUDY}-{digest[:10]}"


def open_study(exp_dir: Path, space: list[Param], target: Target, iteration: int) -> Any:
    """Load the space's study (creating it the first time); the sampler is seeded
    by the iteration, so each fresh process draws differently but every rerun draws the same."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", module="optuna")
    path = journal_path(exp_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair(path)
    # a lock left by a killed agent is broken after a few seconds (no writer holds it longer)
    lock = JournalFileSymlinkLock(str(path), grace_period=LOCK_GRACE)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path), lock))
    sampler = optuna.samplers.TPESampler(seed=SEED + iteration, n_startup_trials=STARTUP)
    direction: Literal["minimize", "maximize"] = (
        "maximize" if target.goal == "maximize" else "minimize")
    return optuna.create_study(storage=storage, study_name=study_name(space, target),
                               direction=direction, sampler=sampler, load_if_exists=True)


def sync(exp_dir: Path, iteration: int, runs: list[Run], space: list[Param],
         target: Target) -> Any:
    """Open the study and make every run so far a told trial (safe to repeat)."""
    study = open_study(exp_dir, space, target, iteration)
    for run in runs:
        record(study, run, space, target)
    return study


def _repair(path: Path) -> None:
    """Cut a torn last line (a crash mid-append), which would corrupt the next append."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def trial_of(study: Any, iteration: int) -> Any:
    """The trial of an iteration (a FrozenTrial), or None."""
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(ITERATION) == iteration:
            return trial
    return None


def ask(study: Any, iteration: int, space: list[Param]) -> dict[str, Any]:
    """The parameters of an iteration: its existing trial's, else a new trial's (idempotent)."""
    trial = trial_of(study, iteration) or _adopt_orphan(study, iteration, space)
    if trial is None:
        trial = study.ask({p.name: p.distribution() for p in tunable(space)})
        trial.set_user_attr(ITERATION, iteration)
    return {p.name: p.decode(trial.params[p.name]) for p in tunable(space)
            if p.name in trial.params}


def _adopt_orphan(study: Any, iteration: int, space: list[Param]) -> Any:
    """A running trial with no iteration is one whose asker crashed before tagging it: reuse it
    when it holds every parameter, else fail it."""
    import optuna

    names = {p.name for p in tunable(space)}
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if ITERATION in frozen.user_attrs:
            continue
        if names <= set(frozen.params):
            optuna.trial.Trial(study, frozen._trial_id).set_user_attr(ITERATION, iteration)
            return frozen
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    return None


def record(study: Any, run: Run, space: list[Param], target: Target) -> None:
    """Make a finished run a told trial: register it when the search did not ask for it (the
    baseline, a person's run), then tell the value the daemon counts for it (none for a failed
    run; the worst seen for a diverged one). Safe to repeat."""
    import optuna

    trial = trial_of(study, run.iteration)
    if trial is None or trial.state == optuna.trial.TrialState.WAITING:
        trial = _register(study, run, space)
    if trial.state.is_finished():
        return
    value = target.counted(run.iteration)
    if value is None and run.diverged:
        value = _worst(study)  # steer the sampler away from a region that diverges
    row = target.row(run.iteration)
    outcome = "diverged" if run.diverged else row.outcome if row else "failed"
    optuna.trial.Trial(study, trial._trial_id).set_user_attr(OUTCOME, outcome)
    if value is None:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial.number, value)


def _register(study: Any, run: Run, space: list[Param]) -> Any:
    """Enqueue the values the run used (tagged with its iteration) and ask for them back."""
    fixed, dists = {}, {}
    for param in tunable(space):
        value = param.encode(run.params.get(param.name, param.default))
        dist = param.distribution()
        if _fits(dist, value):
            fixed[param.name], dists[param.name] = value, dist
    if trial_of(study, run.iteration) is None:
        study.enqueue_trial(fixed, user_attrs={ITERATION: run.iteration})
    trial = study.ask(dists)
    frozen = trial_of(study, run.iteration)
    if frozen is None or frozen.number != trial.number:
        raise RuntimeError(f"the Optuna study in {study.study_name!r} handed out trial "
                           f"{trial.number} instead of iteration {run.iteration}'s")
    return frozen


def _fits(dist: Any, value: Any) -> bool:
    """Whether a value lies in a distribution (values outside it are left out of the trial)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False


def _worst(study: Any) -> float | None:
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values: list[float] = [t.value for t in done if t.value is not None and math.isfinite(t.value)]
    if not values:
        return None
    return min(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else max(values)
