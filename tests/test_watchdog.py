"""Heartbeats, budgets and the standalone `mlsm watchdog`, with real daemons and trainings."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import Experiment, Mlsm, gone, kill_matching, wait_for

from mlsm.handlers.launchers import local
from mlsm.machine.core import store
from mlsm.machine.core.status import Status, write_status
from mlsm.machine.core.store import read_json_object
from mlsm.machine.views import health

FAST_BEATS = {"MLSM_HEARTBEAT_INTERVAL": "0.05", "FAKE_DECISION": "finish"}
BEAT_UNTIL_MARKER = '''\
import os, time
from pathlib import Path
from mlsm import hooks
marker = Path(os.environ["MLSM_DIR"]) / "hang_now"
step = 0
while True:
    step += 1
    hooks.heartbeat(step)
    if marker.exists():
        break
    time.sleep(0.02)
import signal
while True:
    signal.pause()
'''


def _exit(exp: Experiment, it: int = 1) -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        (exp.path / "logs" / f"iter_{it:03d}" / "exit.json").read_text())
    return doc


def test_stale_heartbeat_is_killed_in_time_with_a_stack_dump(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", BEAT_UNTIL_MARKER)
    exp.write("hang_now", "")  # beat once, then hang
    run = exp.mlsm("run", "--heartbeat-timeout", "1", **FAST_BEATS)
    assert run.wait() == 7, run.output()  # DONE, no training produced a result
    record = _exit(exp)
    assert record["reason"] == "stale_heartbeat"
    assert isinstance(record["seconds"], float) and 1.0 <= record["seconds"] < 3.0
    run_dir = exp.path / "logs" / "iter_001"
    beat = json.loads((run_dir / "heartbeat.json").read_text())
    assert float(record["ended_at"]) - beat["t"] <= 1.0 + 2.0  # timeout + 2 s
    assert "most recent call first" in (run_dir / "stderr.log").read_text()
    assert exp.status()["history"][0]["reason"] == "stale_heartbeat"
    assert "analyze 1" in exp.agent_calls()


def test_printing_without_heartbeats_falls_back_to_output_growth(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", "import time\nfor i in range(25):\n    print('step', i, flush=True)\n"
                          "    time.sleep(0.1)\nimport signal\nsignal.pause()\n")
    run = exp.mlsm("run", "--startup-grace", "0.5", "--output-timeout", "1.5", **FAST_BEATS)
    assert run.wait() == 7  # DONE, no training produced a result
    record = _exit(exp)
    assert record["reason"] == "stale_heartbeat" and "no heartbeat ever" in str(record["detail"])
    stdout = (exp.path / "logs" / "iter_001" / "stdout.log").read_text()
    assert "step 24" in stdout  # it was left alone while it printed
    assert "hooks.heartbeat(step)" in exp.runner_log()


def test_expect_next_within_is_honoured(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", "import os, time\nfrom pathlib import Path\nfrom mlsm import hooks\n"
                          "hooks.heartbeat(1)\nhooks.heartbeat(2, expect_next_within=10)\n"
                          "done = Path(os.environ['MLSM_DIR']) / 'slow_phase_over'\n"
                          "while not done.exists():\n    time.sleep(0.01)\n"
                          "hooks.heartbeat(3)\nhooks.result(loss=0.5)\n")
    run = exp.mlsm("run", "--heartbeat-timeout", "1", **FAST_BEATS)
    beat_file = exp.path / "logs" / "iter_001" / "heartbeat.json"

    def silent_past_timeout() -> bool:
        beat = read_json_object(beat_file) or {}
        return beat.get("expect_next_within") == 10 and time.time() - beat["t"] > 2.0
    wait_for(silent_past_timeout, 20, "twice the heartbeat timeout without a beat")
    assert exp.state() == "training"  # still alive: expect_next_within holds the sentinel off
    exp.write("slow_phase_over", "")
    assert run.wait() == 0
    record = _exit(exp)
    assert record["reason"] == "exited" and record["returncode"] == 0


def test_run_timeout_kills_the_tree(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", BEAT_UNTIL_MARKER)
    run = exp.mlsm("run", "--run-timeout", "1", **FAST_BEATS)
    assert run.wait() == 7  # DONE, no training produced a result
    assert _exit(exp)["reason"] == "run_timeout"


def test_max_failures_moves_to_reporting(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--max-failures", "2", "--max-iterations", "6",
                   FAKE_TRAIN_BODY="raise SystemExit(2)\n")
    assert run.wait() == 7  # DONE, no training produced a result
    status = exp.status()
    assert status["iteration"] == 2 and "2 consecutive iterations failed" in status["stop_reason"]
    assert "report 2" in exp.agent_calls() and status["state"] == "done"


def test_patience_moves_to_reporting(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--patience", "2", "--max-iterations", "9",
                   FAKE_TRAIN_BODY="from mlsm import hooks\nhooks.result(loss=1.0)\n")
    assert run.wait() == 0
    status = exp.status()
    assert status["iteration"] == 3 and "--patience 2" in status["stop_reason"]
    assert status["best"]["iteration"] == 1


def test_max_hours_kills_training_and_still_reports(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", BEAT_UNTIL_MARKER)
    run = exp.mlsm("run", "--max-hours", "0.0004", "--max-iterations", "5",
                   MLSM_HEARTBEAT_INTERVAL="0.05")
    assert run.wait(90) == 7, run.output()
    status = exp.status()
    assert _exit(exp)["reason"] == "max_hours"
    assert "wall-time budget" in status["stop_reason"] and status["iteration"] == 1
    assert (exp.path / "REPORT.md").exists()


def test_watchdog_kills_hung_training_of_a_dead_daemon(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", BEAT_UNTIL_MARKER)
    daemon = exp.mlsm("watch", "--heartbeat-timeout", "1", MLSM_HEARTBEAT_INTERVAL="0.05")
    exp.wait_state("training")
    pid = wait_for(lambda: (exp.status().get("training") or {}).get("pid"), what="training pid")
    wait_for((exp.path / "logs" / "iter_001" / "heartbeat.json").exists, what="first beat")
    daemon.proc.kill()  # kill -9: no cleanup at all
    daemon.wait()
    assert not gone(pid)
    healthy = Mlsm(["watchdog", str(exp.path)], exp.path.parent, exp.env)
    assert healthy.wait() == 5, healthy.output()  # the run is fine, its daemon is not
    assert "no daemon is running, but the run is in TRAINING" in healthy.output()
    assert "healthy" in healthy.output() and "daemon not running" in healthy.output()
    exp.write("hang_now", "")

    def stale() -> bool:
        check = Mlsm(["watchdog", str(exp.path)], exp.path.parent, exp.env)
        return check.wait() == 5 and "is stale" in check.output()
    wait_for(stale, 10, "watchdog to see the stale heartbeat")
    act = Mlsm(["watchdog", str(exp.path), "--kill"], exp.path.parent, exp.env)
    assert act.wait() == 6, act.output()
    assert "stale" in act.output() and "killed" in act.output()
    assert gone(pid)
    assert _exit(exp)["reason"] == "stale_heartbeat"
    assert any(e["event"] == "watchdog_killed" for e in exp.events())
    # The next daemon picks the ended run up from exit.json and carries on.
    run = exp.mlsm("run", FAKE_DECISION="finish")
    assert run.wait() == 7  # DONE, no training produced a result
    assert "training_ended_while_down" in exp.runner_log()


def test_watchdog_never_kills_a_recycled_pid(exp: Experiment, tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        status = Status(max_iterations=3, state="training", iteration=1,
                        started_at=store.now_iso())
        status.training = {
            "pid": bystander.pid, "pgid": bystander.pid, "boot_id": local.boot_id(),
            "start_ticks": (local.start_ticks(bystander.pid) or 0) + 12345,
            "run_id": "recycled", "cmd": ["python", "train.py"], "started_at": store.now_iso(),
        }
        write_status(exp.path, status)
        run = Mlsm(["watchdog", str(exp.path), "--kill"], exp.path.parent, exp.env)
        assert run.wait() == 5, run.output()  # a run in TRAINING without a daemon
        assert "belongs to another process" in run.output()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_watchdog_errors_clearly(exp: Experiment) -> None:
    run = Mlsm(["watchdog", str(exp.path)], exp.path.parent, exp.env)
    assert run.wait() == 3
    assert "has no status.json" in run.output()



def test_watchdog_reports_and_kills_leftovers_of_finished_runs(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    env = {**exp.env, "MLSM_EXPERIMENT": str(exp.path.resolve()), "MLSM_RUN_ID": "finished"}
    stray = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], env=env,
                             start_new_session=True)
    try:
        found = Mlsm(["watchdog", str(exp.path)], exp.path.parent, exp.env)
        assert found.wait() == 5, found.output()
        assert f"leftover processes of a finished run (pids {stray.pid}, run finished)" \
            in found.output()
        killed = Mlsm(["watchdog", str(exp.path), "--kill"], exp.path.parent, exp.env)
        assert killed.wait() == 6, killed.output()
        assert stray.wait(10) is not None
        assert any(e["event"] == "watchdog_killed" and e["kind"] == "strays"
                   for e in exp.events())
        assert Mlsm(["watchdog", str(exp.path)], exp.path.parent, exp.env).wait() == 0
    finally:
        stray.kill()
        stray.wait()


HOPPER = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    if os.fork():
        os._exit(0)
    time.sleep(0.01)
"""


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` is alive (its zombies do not count). A hopper's pid
    lives ~10 ms, so each look reads the newest pids first, and twenty looks must miss it."""
    for _ in range(20):
        for pid in sorted((int(n) for n in os.listdir("/proc") if n.isdigit()), reverse=True):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def test_watchdog_kills_a_pid_hopper_left_by_a_finished_run(exp: Experiment) -> None:
    """A leftover that forks and exits every 10 ms has a new pid before a pass over /proc ends.
    The pass reads the newest pids first and takes each one's run id in the same read, and the
    kill looks again while the run's group has members: one `--kill` ends it (40 of 40 here;
    2 of 10 before, when the pass went oldest first and read the run id a second time)."""
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    env = {**exp.env, "MLSM_EXPERIMENT": str(exp.path.resolve()), "MLSM_RUN_ID": "finished"}
    hopper = subprocess.Popen([sys.executable, "-c", HOPPER], env=env, start_new_session=True)
    try:
        wait_for(lambda: hopper.poll() is not None, what="the hopper's first hop")
        assert _group_alive(hopper.pid)
        killed = Mlsm(["watchdog", str(exp.path), "--kill"], exp.path.parent, exp.env)
        assert killed.wait() == 6, killed.output()
        assert "leftover processes of a finished run" in killed.output()
        assert not _group_alive(hopper.pid), "the hopper outlived `mlsm watchdog --kill`"
    finally:
        kill_matching(lambda info: (info.get("environ") or {}).get("MLSM_EXPERIMENT")
                      == env["MLSM_EXPERIMENT"])


def _ago(seconds: float) -> str:
    return dt.datetime.fromtimestamp(time.time() - seconds, dt.UTC).isoformat()


def _beat(run_dir: Path, rank: int, age: float, world: int) -> None:
    name = "heartbeat.json" if rank == 0 else f"heartbeat.rank_{rank}.json"
    (run_dir / name).write_text(json.dumps({"t": time.time() - age, "seq": 1, "step": 1,
                                            "pid": 1, "rank": rank, "world": world}))


def test_watchdog_judges_every_rank_not_only_rank_0(exp: Experiment) -> None:
    """Under torchrun rank 0 may beat on while rank 2 hangs (or never started): the one-shot
    check names the rank that went silent first, as the daemon's own watch does."""
    run_id = "ranks"
    env = {**exp.env, "MLSM_EXPERIMENT": str(exp.path.resolve()), "MLSM_RUN_ID": run_id}
    training = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], env=env)
    try:
        run_dir = exp.path / "logs" / "iter_001"
        run_dir.mkdir(parents=True)
        status = Status(max_iterations=3, state="training", iteration=1,
                        started_at=store.now_iso())
        status.training = {
            "pid": training.pid, "pgid": training.pid, "boot_id": local.boot_id(),
            "start_ticks": local.start_ticks(training.pid), "run_id": run_id,
            "experiment": str(exp.path.resolve()), "run_dir": str(run_dir),
            "cmd": ["torchrun", "train.py"], "started_at": _ago(400),
        }
        write_status(exp.path, status)
        _beat(run_dir, 0, 1, world=3)
        _beat(run_dir, 1, 2, world=3)
        [ok] = [f for f in health.check(exp.path) if "training (" in f.message]
        assert ok.level == "ok" and "3 ranks" in ok.message  # rank 2 is still in its grace
        status.training["started_at"] = _ago(4000)
        write_status(exp.path, status)
        [late] = [f for f in health.check(exp.path) if f.kill == "training"]
        assert "rank 2 went silent first" in late.message, late.message
        _beat(run_dir, 2, 1, world=3)
        _beat(run_dir, 1, 700, world=3)
        [stale] = [f for f in health.check(exp.path) if f.kill == "training"]
        assert "rank 1 went silent first: no heartbeat for 700s" in stale.message, stale.message
    finally:
        training.kill()
        training.wait()
