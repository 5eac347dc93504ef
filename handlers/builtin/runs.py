"""Each iteration's own files (parameters, metrics, curves, what went wrong) for plots and search.

Whether a run counts (its outcome, its value, the best) is the daemon's answer: see target.py.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from mlsm.handlers.builtin.context import iter_dir
from mlsm.handlers.builtin.files import (
    last_error_line,
    number,
    read_metrics,
    read_object,
)
from mlsm.handlers.builtin.idea import match_metric
from mlsm.handlers.builtin.space import Param, read_space
from mlsm.hooks import rundir

_EXPLODE = 3.0  # a loss that ends this many times above where it started has diverged


@dataclasses.dataclass(frozen=True)
class Run:
    """One iteration as its files tell it."""

    iteration: int
    dir: Path
    params: dict[str, Any]
    metrics: dict[str, float]
    duration_s: float | None
    problem: str | None  # what went wrong, in a sentence; None when nothing did
    diverged: bool
    error_line: str | None
    space: list[Param] | None
    decision: dict[str, Any] | None

    def metric(self, name: str) -> float | None:
        """The finite final value of the metric IDEA.md calls `name` (result.json), if any."""
        found = match_metric(name, list(self.metrics))
        value = self.metrics.get(found) if found else None
        return value if value is not None and math.isfinite(value) else None

    def curves(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (read on demand: only the report draws them)."""
        return read_metrics(self.dir / "metrics.jsonl")


def read_runs(exp_dir: Path, last: int) -> list[Run]:
    """Every iteration from 1 to `last` that has a logs folder."""
    return [read_run(exp_dir, i) for i in range(1, last + 1) if iter_dir(exp_dir, i).is_dir()]


def latest_space(runs: list[Run]) -> list[Param] | None:
    """The search space the most recent run declared."""
    return next((r.space for r in reversed(runs) if r.space is not None), None)


def read_run(exp_dir: Path, iteration: int) -> Run:
    """Read one iteration's files; anything missing is described, never raised."""
    folder = iter_dir(exp_dir, iteration)
    result = read_object(folder / "result.json")
    exit_doc = read_object(folder / rundir.EXIT)
    metrics = _result_metrics(result)
    failure = _exit_problem(exit_doc)
    problem, diverged = _diagnose(exit_doc, result, metrics, folder)
    return Run(
        iteration=iteration,
        dir=folder,
        params=_params(folder),
        metrics=metrics,
        duration_s=number((exit_doc or {}).get("duration_s")),
        problem=problem,
        diverged=diverged,
        error_line=last_error_line(folder / "stderr.log") if failure or not exit_doc else None,
        space=read_space(folder / "space.json"),
        decision=read_object(folder / "decision.json"),
    )


def _params(folder: Path) -> dict[str, Any]:
    """The values the run used (params_used.json), else the overrides it was given."""
    return read_object(folder / "params_used.json") or read_object(folder / "params.json") or {}


def _result_metrics(result: dict[str, Any] | None) -> dict[str, float]:
    raw = (result or {}).get("metrics")
    if not isinstance(raw, dict):
        return {}
    values = {str(k): number(v) for k, v in raw.items()}
    return {k: v for k, v in values.items() if v is not None}


def _diagnose(exit_doc: dict[str, Any] | None, result: dict[str, Any] | None,
              metrics: dict[str, float], folder: Path) -> tuple[str | None, bool]:
    """(a sentence saying what went wrong or None, whether the run diverged)."""
    failure = _exit_problem(exit_doc)
    if failure:
        return failure, False
    if exit_doc is None:
        return "the run left no exit.json (it did not finish)", False
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        return f"the final {', '.join(bad)} is not a finite number", True
    divergence = diverged(read_metrics(folder / "metrics.jsonl"))
    if divergence:
        return divergence, True
    if result is None:
        return "the script exited without calling hooks.result (no result.json)", False
    return None, False


def _exit_problem(exit_doc: dict[str, Any] | None) -> str | None:
    if exit_doc is None:
        return None
    reason = exit_doc.get("reason")
    code = exit_doc.get("returncode")
    detail = exit_doc.get("detail")
    suffix = f" ({detail})" if isinstance(detail, str) and detail else ""
    if reason in (None, "exited"):
        return None if code in (0, None) else f"train.py exited with code {code}{suffix}"
    what = {
        "signal": f"train.py was killed by signal {exit_doc.get('signal') or '?'}",
        "stale_heartbeat": "train.py stopped sending heartbeats and was stopped",
        "run_timeout": "train.py ran past the run timeout and was stopped",
        "stopped": "the run was stopped (STOP)",
        "max_hours": "the run was stopped when the time budget ran out",
        "lost": "the run was lost (the daemon could not find it after a restart)",
    }.get(str(reason), f"the run ended abnormally ({reason})")
    return what + suffix


def diverged(rows: list[dict[str, Any]]) -> str | None:
    """Why a run's logged losses show divergence (non-finite, or exploding), else None."""
    series: dict[str, list[tuple[Any, float]]] = {}
    for row in rows:
        for key, raw in row.items():
            value = number(raw)
            if "loss" in key and value is not None:
                series.setdefault(key, []).append((row.get("step"), value))
    for key, points in sorted(series.items()):
        for step, value in points:
            if not math.isfinite(value):
                return f"{key} became {value} at step {step}"
        first, last = points[0][1], points[-1][1]
        if first > 0 and last > _EXPLODE * first:
            return f"{key} exploded from {first:.4g} to {last:.4g}"
    return None
