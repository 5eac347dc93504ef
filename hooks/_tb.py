"""The optional TensorBoard copy of the metrics: torch's SummaryWriter, else tensorboard's own."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

Rows = list[tuple[Any, float, dict[str, Any]]]


class _Writer(Protocol):
    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None,
                   walltime: float | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Mirror:
    """Writes flushed metric rows as TensorBoard scalars under `log_dir`."""

    def __init__(self, log_dir: str) -> None:
        self._writer = _open(log_dir)

    def write(self, rows: Rows) -> None:
        """Each row is (step, wall time, metrics); values that are not numbers are skipped."""
        for step, t, metrics in rows:
            global_step = _int(step)
            for key, value in metrics.items():
                number = _float(value)
                if number is not None:
                    self._writer.add_scalar(key, number, global_step, t)
        self._writer.flush()  # flushed metrics are on disk for both readers alike

    def close(self) -> None:
        self._writer.close()


def _open(log_dir: str) -> _Writer:
    # import_module, not import: keeps mypy out of torch and tensorboard, which are optional
    try:
        module = importlib.import_module("torch.utils.tensorboard")
    except ImportError:  # no torch, or torch without tensorboard: try tensorboard alone
        return _EventWriter(log_dir)
    writer: _Writer = module.SummaryWriter(log_dir=log_dir)
    return writer


class _EventWriter:
    """Scalar events straight into an event file, for when torch is not installed."""

    def __init__(self, log_dir: str) -> None:
        files = importlib.import_module("tensorboard.summary.writer.event_file_writer")
        self._event = importlib.import_module("tensorboard.compat.proto.event_pb2").Event
        self._summary = importlib.import_module("tensorboard.compat.proto.summary_pb2").Summary
        self._file = files.EventFileWriter(log_dir)

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None,
                   walltime: float | None = None) -> None:
        value = self._summary.Value(tag=tag, simple_value=scalar_value)
        summary = self._summary(value=[value])
        self._file.add_event(self._event(wall_time=walltime or 0.0, step=global_step or 0,
                                         summary=summary))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except Exception:  # a foreign step object may raise anything
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except Exception:  # a foreign value (multi-element tensor) may raise anything
        return None
