"""W&B in offline mode: one run per iteration and one for the experiment, grouped by experiment.

W&B has no nested runs, so the experiment's runs share its name as their group; the
experiment's own run (job type "experiment") carries the report. Nothing leaves the machine:
`wandb sync <folder>/wandb/offline-run-*` uploads later.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from mlsm.hooks.layout import iteration_dir_name
from mlsm.machine.views.export.base import Experiment, Finished
from mlsm.machine.views.files import MetricRow

PROJECT = "mlsm"  # the W&B project (WANDB_PROJECT)


def default_folder(exp_dir: Path) -> Path:
    """Where offline runs go: $WANDB_DIR, else beside the experiment."""
    return Path(os.environ.get("WANDB_DIR") or exp_dir.parent)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "exp"


class WandbTarget:
    """Offline runs under `folder`/wandb/."""

    name = "wandb"
    live = False  # offline: nobody sees it before `wandb sync`, so it goes when training ends

    def __init__(self, folder: Path) -> None:
        import wandb

        self._wandb = wandb
        self.folder = folder
        self.destination = str(folder)
        self._runs: dict[str, Any] = {}
        self._steps: dict[str, float] = {}
        self._names: dict[str, tuple[str, str, str]] = {}  # run id → (group, name, job type)

    def _init(self, run_id: str, group: str, name: str, job_type: str) -> Any:
        w = self._wandb
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = w.Settings(silent=True, console="off", x_disable_stats=True,
                              x_disable_meta=True, x_disable_machine_info=True,
                              save_code=False, disable_git=True, x_save_requirements=False)
        run = w.init(mode="offline", dir=str(self.folder),
                     project=os.environ.get("WANDB_PROJECT") or PROJECT, group=group, name=name,
                     job_type=job_type, id=run_id, resume="allow", reinit="create_new",
                     settings=settings)
        self._runs[run_id] = run
        self._names[run_id] = (group, name, job_type)
        return run

    def _run(self, run_id: str) -> Any:
        if run_id not in self._runs:
            self._init(run_id, *self._names[run_id])
        return self._runs[run_id]

    def open_parent(self, exp: Experiment, known: str | None) -> str:
        """The experiment's run is written when the experiment ends; here only its id."""
        digest = hashlib.sha1(str(exp.dir).encode()).hexdigest()[:8]
        run_id = known or f"{_slug(exp.name)}-{digest}"
        self._names[run_id] = (exp.name, exp.name, "experiment")
        return run_id

    def open_iteration(self, exp: Experiment, parent: str, iteration: int,
                       known: str | None, started: float | None) -> str:
        run_id = known or f"{parent}-i{iteration:03d}-{os.urandom(2).hex()}"
        self._names[run_id] = (exp.name, f"{exp.name}/{iteration_dir_name(iteration)}", "iteration")
        if known is None:
            self._init(run_id, *self._names[run_id])
        return run_id

    def log_metrics(self, run: str, rows: list[MetricRow]) -> None:
        r = self._run(run)
        last = self._steps.get(run, -1.0)
        for step, _t, values in rows:
            if step >= last:  # W&B drops a step that goes back; keep the values without it
                r.log(values, step=int(step))
                last = step
            else:
                r.log(values)
        self._steps[run] = last

    def close_iteration(self, run: str, done: Finished) -> None:
        r = self._run(run)
        r.config.update(done.params, allow_val_change=True)
        r.summary.update({f"result/{k}": v for k, v in done.result.items()})
        r.tags = tuple(f"{k[5:]}:{v}"[:64] for k, v in done.tags.items()
                       if k in ("mlsm.outcome", "mlsm.decision", "mlsm.exit"))
        r.summary.update({k: v for k, v in done.tags.items()})
        for path in done.artifacts:
            r.save(str(path), base_path=str(path.parent), policy="now")
        r.finish(exit_code=0 if done.row is not None and done.row.outcome != "failed" else 1)
        self._runs.pop(run, None)

    def close_parent(self, parent: str, exp: Experiment, tags: dict[str, str],
                     artifacts: list[Path]) -> None:
        r = self._run(parent)
        r.summary.update(tags)
        best = exp.status.best
        if best:
            r.summary.update({f"best/{best['metric']}": best["value"],
                              "best/iteration": best["iteration"]})
        r.tags = (f"state:{exp.status.state}",)
        for path in artifacts:
            r.save(str(path), base_path=str(path.parent), policy="now")
        r.finish(exit_code=1 if exp.status.state == "failed" else 0)
        self._runs.pop(parent, None)

    def set_state(self, parent: str, state: str) -> None:
        """An offline run cannot be updated after the fact; the state goes in at the end."""

    def shutdown(self) -> None:
        for run in list(self._runs.values()):
            run.finish()
        self._runs.clear()
