"""MLflow: a parent run per experiment, one nested run per iteration, through MlflowClient."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlsm.hooks.layout import iteration_dir_name
from mlsm.machine.views.export.base import Experiment, Finished
from mlsm.machine.views.files import MetricRow

EXPERIMENT = "mlsm"  # the MLflow experiment all runs go into (MLFLOW_EXPERIMENT_NAME)
METRICS_PER_CALL = 1000  # MLflow's log_batch limit
PARAMS_PER_CALL = 100
PARAM_CHARS = 6000


def default_uri(exp_dir: Path) -> str:
    """`--mlflow` without a URI: $MLFLOW_TRACKING_URI, else a SQLite store beside the
    experiment (`mlflow ui --backend-store-uri sqlite:///<that file>` shows it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{exp_dir.parent / 'mlflow.db'}"


def _ms(seconds: float | None) -> int:
    return int((time.time() if seconds is None else seconds) * 1000)


class MlflowTarget:
    """Writes to one tracking URI (file, sqlite, http...)."""

    name = "mlflow"

    def __init__(self, uri: str, live: bool = False) -> None:
        # Live, the running iteration's curves grow in the MLflow UI, at a CPU cost beside the
        # training (+14 % on a 2-CPU machine logging 2,000 steps/s); else each iteration goes
        # out when it ends, and the training never shares a CPU with the export.
        self.live = live
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # after MLflow's import, which sets them up
            logging.getLogger(name).setLevel(logging.WARNING)
        self.destination = uri
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_id: str | None = None

    def _experiment(self) -> str:
        if self._experiment_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            found = self.client.get_experiment_by_name(name)
            self._experiment_id = found.experiment_id if found is not None else \
                self.client.create_experiment(name, artifact_location=self._artifacts())
        return self._experiment_id

    def _artifacts(self) -> str | None:
        """A SQLite store keeps artifacts beside its file, not in the daemon's cwd."""
        parts = urlsplit(self.destination)
        if parts.scheme == "sqlite" and parts.path not in ("", "/:memory:"):
            db = Path(parts.path[1:] if parts.path.startswith("//") else parts.path)
            return (db.parent / "mlartifacts").resolve().as_uri()
        return None

    def open_parent(self, exp: Experiment, known: str | None) -> str:
        if known:
            return known
        objective = exp.status.objective
        tags = {"mlsm.dir": str(exp.dir), "mlsm.state": exp.status.state}
        if objective is not None:
            tags["mlsm.objective"] = f"{objective.goal} {objective.name}"
        run = self.client.create_run(self._experiment(), run_name=exp.name, tags=tags)
        return str(run.info.run_id)

    def open_iteration(self, exp: Experiment, parent: str, iteration: int,
                       known: str | None, started: float | None) -> str:
        if known:
            return known
        tags = {"mlflow.parentRunId": parent, "mlsm.iteration": str(iteration),
                "mlsm.experiment": exp.name}
        run = self.client.create_run(self._experiment(), start_time=_ms(started),
                                     run_name=f"{exp.name}/{iteration_dir_name(iteration)}",
                                     tags=tags)
        return str(run.info.run_id)

    def log_metrics(self, run: str, rows: list[MetricRow]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(key, value, _ms(t), int(step))
                   for step, t, values in rows for key, value in values.items()]
        for k in range(0, len(metrics), METRICS_PER_CALL):
            self.client.log_batch(run, metrics=metrics[k:k + METRICS_PER_CALL])

    def close_iteration(self, run: str, done: Finished) -> None:
        from mlflow.entities import Metric, Param, RunTag

        params = [Param(k, _param(v)) for k, v in sorted(done.params.items())]
        for k in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(run, params=params[k:k + PARAMS_PER_CALL])
        step = int(done.row.iteration) if done.row is not None else 0
        result = [Metric(f"result.{k}", v, _ms(done.ended), step) for k, v in done.result.items()]
        tags = [RunTag(k, v) for k, v in done.tags.items()]
        self.client.log_batch(run, metrics=result, tags=tags)
        for path in done.artifacts:
            self.client.log_artifact(run, str(path))
        self.client.set_terminated(run, _run_status(done), end_time=_ms(done.ended))

    def close_parent(self, parent: str, exp: Experiment, tags: dict[str, str],
                     artifacts: list[Path]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in artifacts:
            self.client.log_artifact(parent, str(path))
        status = "FAILED" if exp.status.state == "failed" else "FINISHED"
        self.client.set_terminated(parent, status)

    def set_state(self, parent: str, state: str) -> None:
        self.client.set_tag(parent, "mlsm.state", state)
        if state not in ("done", "failed"):
            self.client.update_run(parent, status="RUNNING")

    def shutdown(self) -> None:
        """MlflowClient holds nothing open."""


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:PARAM_CHARS]


def _run_status(done: Finished) -> str:
    if done.row is None:
        return "KILLED"
    return "FAILED" if done.row.outcome == "failed" else "FINISHED"
