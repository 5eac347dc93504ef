"""Many experiments in one daemon (--discover, --max-parallel), and the read-only commands."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from helpers import AGENT_CMD, Experiment, Mlsm, read_status, wait_for

HELD_TRAIN = '''\
import os, time
from pathlib import Path
from mlsm import hooks
while (Path(os.environ["MLSM_DIR"]) / "hold").exists():
    hooks.heartbeat()
    time.sleep(0.02)
hooks.result(loss=1.0)
'''


def _make(root: Path, name: str, idea: bool = True, train: str | None = None) -> Path:
    d = root / name
    d.mkdir()
    if idea:
        (d / "IDEA.md").write_text(f"idea {name}\n")
    if train is not None:
        (d / "train.py").write_text(train)
    return d


def _watch(exp: Experiment, dirs: list[Path], *args: str) -> Mlsm:
    return Mlsm(["watch", *map(str, dirs), "--agent", "command", "--agent-cmd", AGENT_CMD,
                 "--max-iterations", "1", "--grace", "2", *args], exp.path, exp.env)


def _state(d: Path) -> str | None:
    return read_status(d).get("state")


def test_discover_adopts_existing_new_and_late_experiments(exp: Experiment) -> None:
    root = exp.path
    a = _make(root, "a")
    b = _make(root, "b", idea=False)
    (root / ".hidden").mkdir()
    daemon = _watch(exp, [root], "--discover")
    wait_for(lambda: _state(a) == "done", 30, "a done")
    c = _make(root, "c")
    wait_for(lambda: _state(c) == "done", 30, "c (created later) done")
    assert _state(b) is None and not (b / ".mlsm").exists()
    (b / "IDEA.md").write_text("now b has an idea\n")
    wait_for(lambda: _state(b) == "done", 30, "b (gained IDEA.md) done")
    for d in (a, b, c):
        assert (d / "logs" / "events.jsonl").exists() and (d / ".mlsm" / "lock").exists()
    assert not (root / ".hidden" / ".mlsm").exists()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 130


def test_max_parallel_makes_the_others_wait_in_coding(exp: Experiment) -> None:
    (exp.path / "hold").write_text("")  # IDEA and train.py per experiment; hold in exp root
    dirs = [_make(exp.path, n, train=HELD_TRAIN.replace('os.environ["MLSM_DIR"]',
                                                          f'"{exp.path}"')) for n in ("x", "y")]
    daemon = _watch(exp, dirs, "--max-parallel", "1")

    def one_training_one_waiting() -> bool:
        states = sorted(str(_state(d)) for d in dirs)
        return states == ["coding", "training"]
    wait_for(one_training_one_waiting, 30, "one training, one waiting")
    waiting = next(d for d in dirs if _state(d) == "coding")
    assert "--max-parallel 1" in read_status(waiting)["waiting_for"]
    (exp.path / "hold").unlink()
    wait_for(lambda: all(_state(d) == "done" for d in dirs), 30, "both done")
    ends = sorted((json.loads((d / "logs/iter_001/exit.json").read_text()) for d in dirs),
                  key=lambda r: float(r["started_at"]))
    assert ends[1]["started_at"] >= ends[0]["ended_at"]  # never both at once
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def test_status_json_logs_and_graph(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "2").wait() == 0
    status = Mlsm(["status", str(exp.path), "--json"], exp.path, exp.env)
    assert status.wait() == 0
    doc = json.loads(status.output())
    assert doc["state"] == "done" and doc["iteration"] == 2 and doc["best"]["iteration"] == 2
    assert {"heartbeat_age_s", "step", "total_steps", "eta_s", "latest_metrics", "agent",
            "training", "cost_usd", "time_in_state_s", "stop_reason", "error"} <= doc.keys()
    plain = Mlsm(["status", str(exp.path)], exp.path, exp.env)
    assert plain.wait() == 0 and "DONE" in plain.output() and "iteration 2/2" in plain.output()
    logs = Mlsm(["logs", str(exp.path)], exp.path, exp.env)
    assert logs.wait() == 0 and "transition" in logs.output()
    out = Mlsm(["logs", str(exp.path), "--iteration", "2"], exp.path, exp.env)
    assert out.wait() == 0 and "done iteration 2" in out.output()
    graph = Mlsm(["graph"], exp.path, exp.env)
    assert graph.wait() == 0 and "stateDiagram-v2" in graph.output()


def test_status_refuses_non_experiments_in_one_line(exp: Experiment, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run = Mlsm(["status", str(empty)], exp.path, exp.env)
    assert run.wait() == 3
    assert run.output().strip().endswith("is not an mlsm experiment (no status.json, no IDEA.md)")
    (empty / "status.json").write_text("{broken")
    run = Mlsm(["status", str(empty)], exp.path, exp.env)
    assert run.wait() == 3 and "is corrupt" in run.output()
    assert len(run.output().strip().splitlines()) == 1


def test_stop_and_resume_commands(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("hang_plan", "")
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    exp.wait_state("planning")
    assert Mlsm(["stop", str(exp.path)], exp.path, exp.env).wait() == 0
    exp.wait_state("stopped")
    (exp.path / "hang_plan").unlink()
    assert Mlsm(["resume", str(exp.path)], exp.path, exp.env).wait() == 0
    exp.wait_state("done")
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def test_polling_observer_runs_end_to_end(exp: Experiment) -> None:
    daemon = exp.mlsm("watch", "--max-iterations", "1", "--poll", "--poll-interval", "0.1")
    wait_for(lambda: "observer=polling" in exp.runner_log(), what="polling observer")
    exp.write("IDEA.md", "x")
    exp.wait_state("done")
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def test_status_shows_progress_and_eta_of_a_running_training(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", "import time\nfrom mlsm import hooks\nfor i in range(100000):\n"
                          "    hooks.log(step=i, total_steps=100000, loss=1.0 / (i + 1))\n"
                          "    time.sleep(0.001)\n")
    daemon = exp.mlsm("watch", MLSM_HEARTBEAT_INTERVAL="0.05", MLSM_FLUSH_INTERVAL="0.05")
    exp.wait_state("training")

    def shown() -> str | None:
        run = Mlsm(["status", str(exp.path)], exp.path, exp.env)
        run.wait()
        out = run.output()
        return out if "/100000 [" in out and "ETA" in out and "loss=" in out else None
    out = wait_for(shown, 20, "progress in mlsm status")
    assert "TRAINING" in out and "heartbeat" in out and "training pid" in out
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def test_follow_view_renders_every_experiment(exp: Experiment, tmp_path: Path) -> None:
    from rich.console import Console

    from mlsm.machine.views.live import render

    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    console = Console(record=True, width=400)
    console.print(render([exp.path, tmp_path / "missing"]))
    text = console.export_text()
    assert "DONE" in text and "1/1" in text and "loss=" in text
    assert "ERROR" in text and "is not a directory" in text
