"""Lifecycle hooks: called on entering a state, with its environment, time-limited, never fatal."""

from __future__ import annotations

import os

from helpers import Experiment


def _executable(path: os.PathLike[str] | str, body: str) -> None:
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)


def test_hooks_run_on_entering_states(exp: Experiment) -> None:
    hooks = exp.path / ".mlsm" / "hooks"
    hooks.mkdir(parents=True)
    _executable(hooks / "on-done", 'echo "$MLSM_STATE $MLSM_PREVIOUS_STATE $MLSM_DIR" > done.txt\n')
    _executable(hooks / "on-training", "exit 7\n")  # a failing hook is logged, not fatal
    exp.write("mlsm.toml", '[hooks]\non-planning = "sh -c \'echo $MLSM_ITERATION > plan.txt\'"\n'
                           'on-coding = "sleep 30"\n')
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--max-iterations", "1", "--hook-timeout", "0.5")
    assert run.wait() == 0, run.output()
    assert (exp.path / "done.txt").read_text().split() == ["done", "reporting", str(exp.path)]
    assert (exp.path / "plan.txt").read_text().strip() == "0"
    events = {e["event"]: e for e in exp.events()}
    assert events["hook_failed"]["returncode"] == 7 and events["hook_failed"]["state"] == "training"
    assert events["hook_timeout"]["state"] == "coding"
    assert exp.status()["state"] == "done"
