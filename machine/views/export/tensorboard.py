"""TensorBoard: each iteration's metrics as scalars in `logs/iter_NNN/tb`, written from
metrics.jsonl by the daemon, never from the training loop.

`tensorboard --logdir DIR/logs` shows one run per iteration. One event per metrics row carries
all of its values; the result goes in as `result/<name>` at the iteration's last step. Only the
`tensorboard` package is used (its event writer and protos), never torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mlsm.hooks import rundir
from mlsm.hooks.layout import Layout
from mlsm.machine.views.export.base import Experiment, Finished
from mlsm.machine.views.files import MetricRow


class EventWriter:
    """One event file in `log_dir`: a scalar summary per call, several values at one step."""

    def __init__(self, log_dir: Path) -> None:
        files = importlib.import_module("tensorboard.summary.writer.event_file_writer")
        self._event = importlib.import_module("tensorboard.compat.proto.event_pb2").Event
        self._summary = importlib.import_module("tensorboard.compat.proto.summary_pb2").Summary
        log_dir.mkdir(parents=True, exist_ok=True)
        self._file = files.EventFileWriter(str(log_dir))
        self.last_step = 0

    def scalars(self, step: int, wall_time: float, values: dict[str, float]) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=v)
                                       for k, v in values.items()])
        self._file.add_event(self._event(wall_time=wall_time, step=step, summary=summary))
        self.last_step = max(self.last_step, step)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorboardTarget:
    """Event files beside each iteration's other files; the experiment itself has none."""

    name = "tensorboard"
    destination = rundir.TENSORBOARD  # in each run folder
    live = True  # TensorBoard re-reads its folders: a running iteration's curves grow

    def __init__(self) -> None:
        importlib.import_module("tensorboard")  # missing: ImportError, said once by the caller
        self._writers: dict[str, EventWriter] = {}

    def _writer(self, run: str) -> EventWriter:
        if run not in self._writers:
            self._writers[run] = EventWriter(Path(run))
        return self._writers[run]

    def open_parent(self, exp: Experiment, known: str | None) -> str:
        return str(exp.dir)

    def open_iteration(self, exp: Experiment, parent: str, iteration: int,
                       known: str | None, started: float | None) -> str:
        return str(Layout(exp.dir).iteration_dir(iteration) / rundir.TENSORBOARD)

    def log_metrics(self, run: str, rows: list[MetricRow]) -> None:
        writer = self._writer(run)
        for step, t, values in rows:  # the values are finite numbers already
            writer.scalars(int(step), t or 0.0, values)
        writer.flush()

    def close_iteration(self, run: str, done: Finished) -> None:
        writer = self._writer(run)
        if done.result:
            writer.scalars(writer.last_step, done.ended or 0.0,
                           {f"result/{k}": v for k, v in done.result.items()})
        writer.close()
        self._writers.pop(run, None)

    def close_parent(self, parent: str, exp: Experiment, tags: dict[str, str],
                     artifacts: list[Path]) -> None:
        """Nothing to end: the iterations' folders are the runs."""

    def set_state(self, parent: str, state: str) -> None:
        """TensorBoard has no place for an experiment's state."""

    def shutdown(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

