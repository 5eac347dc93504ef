"""The examples run end to end through the daemon with the offline built-in agent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import REPO, Mlsm


@pytest.mark.parametrize("name", ["quickstart", "own_train"])
def test_example_improves_on_its_baseline(tmp_path: Path, name: str) -> None:
    d = tmp_path / name
    shutil.copytree(REPO / "examples" / name, d)
    run = Mlsm(["run", str(d)], tmp_path, {"PATH": "/usr/bin:/bin"})
    assert run.wait(240) == 0, run.output()
    status = json.loads((d / "status.json").read_text())
    assert status["state"] == "done" and status["complete"]
    history = status["history"]
    baseline = history[0]["value"]
    best = status["best"]
    assert best["iteration"] > 1
    better = best["value"] > baseline if best["goal"] == "maximize" else best["value"] < baseline
    assert better, (baseline, best)
    report = (d / "REPORT.md").read_text()
    for section in ("## Summary", "## Approach", "## Results", "## Challenges",
                    "## Recommendations"):
        assert section in report
    for png in ("report_objective.png", "report_curves.png"):
        assert (d / png).stat().st_size > 1000 and png in report
    assert (d / "PLAN.md").exists()
    notes = (d / "NOTES.md").read_text()  # the research memory: one entry per iteration
    for row in history:
        assert (d / "logs" / f"iter_{row['iteration']:03d}" / "train.py").exists()
        assert notes.count(f"## Iteration {row['iteration']}\n") == 1
