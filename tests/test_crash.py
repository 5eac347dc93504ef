"""Crash safety: kill -9 the daemon anywhere, restart, and lose or duplicate nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter

import pytest
from helpers import Experiment, Mlsm, gone, wait_for

from mlsm.handlers.launchers import local
from mlsm.machine.core import store
from mlsm.machine.core.status import Status, write_status

COUNTED_TRAIN = '''\
import os, random, time
from pathlib import Path
from mlsm import hooks
exp = Path(os.environ["MLSM_DIR"])
with (Path(os.environ["TEST_SHARED"]) / "launches.log").open("a") as fh:
    fh.write(os.environ["MLSM_ITERATION"] + "\\n")
hold = exp / "hold_training"
end = time.monotonic() + random.uniform(0.0, 0.3)
while hold.exists() or time.monotonic() < end:
    hooks.heartbeat()
    time.sleep(0.01)
hooks.result(loss=1.0 / int(os.environ["MLSM_ITERATION"]))
'''


def _launches(exp: Experiment) -> Counter[str]:
    try:
        return Counter((exp.shared / "launches.log").read_text().split())
    except OSError:
        return Counter()


def _kill_daemon_mid_training(exp: Experiment) -> int:
    """Start a held training, kill -9 the daemon once it really runs; the training's pid."""
    exp.write("IDEA.md", "x")
    exp.write("hold_training", "")
    daemon = exp.mlsm("watch", "--max-iterations", "1", FAKE_TRAIN_BODY=COUNTED_TRAIN)
    exp.wait_state("training")
    pid: int = wait_for(lambda: (exp.status().get("training") or {}).get("pid"),
                        what="training")
    # Wait until it really runs: killed before its "go", the shim would rightly never start it.
    wait_for(lambda: _launches(exp)["1"] == 1, what="the training to start")
    daemon.proc.kill()  # kill -9: no cleanup at all
    daemon.wait()
    return pid


def test_training_survives_a_daemon_kill_and_is_reattached(exp: Experiment) -> None:
    pid = _kill_daemon_mid_training(exp)
    started_at = exp.status()["started_at"]
    assert not gone(pid)
    second = exp.mlsm("watch", "--max-iterations", "1", FAKE_TRAIN_BODY=COUNTED_TRAIN)
    wait_for(lambda: "training_reattached" in exp.runner_log(), what="re-attach")
    assert exp.status()["training"]["pid"] == pid
    (exp.path / "hold_training").unlink()
    status = exp.wait_state("done")
    assert _launches(exp) == Counter({"1": 1})
    assert status["started_at"] == started_at  # the wall-time budget carries on
    assert status["history"][0]["outcome"] == "ok"
    second.signal(signal.SIGTERM)
    second.wait()


def test_training_that_ended_while_down_is_picked_up(exp: Experiment) -> None:
    pid = _kill_daemon_mid_training(exp)
    (exp.path / "hold_training").unlink()
    wait_for(lambda: gone(pid), what="training to end on its own")
    assert exp.mlsm("run", "--max-iterations", "1", FAKE_TRAIN_BODY=COUNTED_TRAIN).wait() == 0
    assert "training_ended_while_down" in exp.runner_log()
    assert _launches(exp) == Counter({"1": 1})


def test_orphaned_agent_is_killed_and_its_step_retried(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("hang_plan", "")
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    wait_for((exp.path / "hung_plan.pid").exists, what="hung agent")
    agent_pid = int((exp.path / "hung_plan.pid").read_text().split()[0])
    daemon.proc.kill()
    daemon.wait()
    assert not gone(agent_pid)
    (exp.path / "hang_plan").unlink()
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    assert gone(agent_pid)
    assert "orphan_agent_killed" in exp.runner_log()
    assert exp.agent_calls().count("plan 0") == 2
    transcripts = sorted(p.name for p in (exp.path / "logs" / "plan").glob("agent_plan*"))
    assert transcripts == ["agent_plan.2.log", "agent_plan.log"]  # nothing overwritten


def test_after_a_reboot_recorded_processes_are_gone(exp: Experiment) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        exp.write("IDEA.md", "x")
        exp.write("PLAN.md", "# plan\n")
        exp.write("train.py", COUNTED_TRAIN)
        status = Status(max_iterations=1, state="training", iteration=1,
                        started_at=store.now_iso())
        status.training = {
            "pid": bystander.pid, "pgid": bystander.pid, "boot_id": "another-boot",
            "start_ticks": local.start_ticks(bystander.pid), "run_id": "old",
            "cmd": ["python", "train.py"], "started_at": store.now_iso(),
            "run_dir": str(exp.path / "logs" / "iter_001")}
        write_status(exp.path, status)
        assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
        assert bystander.poll() is None  # same pid number, but not ours: left alone
        assert "training_rerun" in exp.runner_log()
        assert _launches(exp) == Counter({"1": 1})
    finally:
        bystander.kill()
        bystander.wait()


def _chaos(exp: Experiment, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    exp.write("IDEA.md", "x")
    env = {"FAKE_TRAIN_BODY": COUNTED_TRAIN, "MLSM_HEARTBEAT_INTERVAL": "0.05"}
    args = ("--max-iterations", "3")
    kills = 0
    for _ in range(trials):
        target = len(exp.events()) + rng.randint(1, 12)
        run = exp.mlsm("run", *args, **env)
        def progressed(target: int = target, run: Mlsm = run) -> bool:
            return len(exp.events()) >= target or run.proc.poll() is not None
        wait_for(progressed, 30, "journal progress")
        if run.proc.poll() is not None:
            break
        run.proc.kill()  # kill -9 at a random point of the journal
        run.wait()
        kills += 1
    final = exp.mlsm("run", *args, **env)
    assert final.wait(120) == 0, final.output()
    status = exp.status()
    assert status["state"] == "done" and status["iteration"] == 3
    assert [row["iteration"] for row in status["history"]] == [1, 2, 3]  # none lost or doubled
    assert _launches(exp) == Counter({"1": 1, "2": 1, "3": 1})  # no duplicated launch
    assert kills > 0
    json.dumps(status)
    _ = os


def test_crash_at_random_points_quick(exp: Experiment) -> None:
    _chaos(exp, trials=6, seed=7)


@pytest.mark.chaos
@pytest.mark.parametrize("seed", range(30))
def test_crash_at_random_points_chaos(exp: Experiment, seed: int) -> None:
    _chaos(exp, trials=12, seed=seed)
