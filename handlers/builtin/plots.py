"""The report's PNG plots (matplotlib, Agg): objective per iteration, and training curves."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from mlsm.handlers.builtin.files import number, write_atomic_bytes
from mlsm.handlers.builtin.runs import Run
from mlsm.handlers.builtin.target import Target
from mlsm.machine.core import results


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    write_atomic_bytes(path, buf.getvalue())


def plot_objective(path: Path, target: Target) -> None:
    """The objective of each iteration, the running best (results.best), and the baseline."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    name, rows = target.name, list(target.rows)
    done = [(r.iteration, v) for r in rows if (v := target.counted(r.iteration)) is not None]
    if done:
        ax.plot(*zip(*done, strict=True), "o-", color="tab:blue", label=name)
        ax.step(*zip(*_running_best(target), strict=True), where="post",
                color="tab:green", label="best so far")
        if target.counted(1) is not None:
            ax.axhline(target.counted(1), ls="--", color="gray", label="baseline")
    missed = [r.iteration for r in rows if target.counted(r.iteration) is None]
    if missed:
        y = min(v for _, v in done) if done else 0.0
        ax.plot(missed, [y] * len(missed), "x", color="tab:red", ms=10,
                label="failed or no value")
    if not rows:
        ax.text(0.5, 0.5, "no iterations ran", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{name} ({target.goal})")
    ax.set_title(f"{name} per iteration")
    if rows:
        ax.set_xticks([r.iteration for r in rows])
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    _save(fig, path)


def _running_best(target: Target) -> list[tuple[int, float]]:
    """After each iteration, the best value so far as results.best names it."""
    rows = list(target.rows)
    out: list[tuple[int, float]] = []
    for k, row in enumerate(rows):
        best = results.best(rows[:k + 1], target.objective)
        if best is not None and best.value is not None:
            out.append((row.iteration, best.value))
    return out


def plot_curves(path: Path, baseline: Run | None, best: Run | None, target: Target) -> None:
    """Training loss and the objective against step, for the baseline and the best run."""
    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    shown = [(baseline, "baseline", "gray")]
    if best is not None and (baseline is None or best.iteration != baseline.iteration):
        shown.append((best, f"best (iteration {best.iteration})", "tab:blue"))
    for run, label, color in shown:
        if run is None:
            continue
        rows = run.curves()
        _series(left, rows, "loss", label, color)
        _series(right, rows, target.name, label, color)
    for ax, key in ((left, "loss"), (right, target.name)):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center",
                    transform=ax.transAxes)
    left.set_title("training loss")
    right.set_title(f"{target.name} during training")
    _save(fig, path)


def _series(ax: Any, rows: list[dict[str, Any]], key: str, label: str, color: str) -> None:
    points = []
    for row in rows:
        step, value = number(row.get("step")), number(row.get(key))
        if step is not None and value is not None and math.isfinite(value):
            points.append((step, value))
    if points:
        ax.plot(*zip(*points, strict=True), color=color, label=label, lw=1.2)
