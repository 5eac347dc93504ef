"""End to end with a real daemon, real watcher, real processes and the scripted fake agent."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from fake_agent import TRAIN as FAKE_TRAIN
from helpers import Experiment, Mlsm, gone, host_pids, wait_for

TREE_TRAIN = (Path(__file__).parent / "scripts" / "tree_train.py").read_text()


def test_idea_to_done_over_several_iterations(exp: Experiment) -> None:
    exp.write("IDEA.md", "Make the loss small.\n")
    run = exp.mlsm("run", "--max-iterations", "3")
    assert run.wait() == 0, run.output()
    status = exp.status()
    assert status["state"] == "done" and status["complete"] is True
    assert status["iteration"] == 3
    assert [r["outcome"] for r in status["history"]] == ["ok", "ok", "ok"]
    assert status["best"]["iteration"] == 3 and status["best"]["value"] == pytest.approx(0.25)
    assert "max-iterations 3" in status["stop_reason"]
    for it in (1, 2, 3):
        run_dir = exp.path / "logs" / f"iter_{it:03d}"
        assert (run_dir / "train.py").read_text() == FAKE_TRAIN.format(it=it)  # what it ran
        assert f"done iteration {it}" in (run_dir / "stdout.log").read_text()
        assert json.loads((run_dir / "exit.json").read_text())["returncode"] == 0
        assert (run_dir / "agent_code.log").is_file()
    assert exp.agent_calls() == ["plan 0", "code 1", "analyze 1", "code 2", "analyze 2",
                                 "code 3", "analyze 3", "report 3"]
    transitions = [e for e in exp.events() if e["event"] == "transition"]
    assert [t["dest"] for t in transitions][:4] == ["planning", "coding", "training", "analyzing"]
    assert transitions[-1]["dest"] == "done"
    assert "transition" in exp.runner_log()
    ledger = (exp.path / "results.tsv").read_text().splitlines()
    assert len(ledger) == 4 and ledger[0].startswith("iteration\toutcome")
    assert [line.split("\t")[:2] for line in ledger[1:]] == [["1", "ok"], ["2", "ok"], ["3", "ok"]]


def test_mlsm_diff_shows_what_changed_between_iterations(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "2").wait() == 0
    shown = Mlsm(["diff", str(exp.path), "1", "2", "train.py"], exp.path.parent, exp.env)
    assert shown.wait() == 0, shown.output()
    assert "+hooks.result(loss=1.0 / (2 + 1)" in shown.output()
    bad = Mlsm(["diff", str(exp.path), "1", "9"], exp.path.parent, exp.env)
    assert bad.wait() == 3
    assert "mlsm: error: iteration 9 has no commit" in bad.output()


def test_snapshot_is_the_train_py_each_iteration_ran(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "2").wait() == 0
    first = (exp.path / "logs" / "iter_001" / "train.py").read_text()
    second = (exp.path / "logs" / "iter_002" / "train.py").read_text()
    assert "1.0 / (1 + 1)" in first and "1.0 / (2 + 1)" in second


def test_watch_starts_on_idea_and_keeps_watching_after_done(exp: Experiment) -> None:
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    wait_for(lambda: "waiting_for_idea" in exp.runner_log(), what="daemon ready")
    exp.write("IDEA.md", "go")
    exp.wait_state("done")
    assert daemon.proc.poll() is None  # still watching
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 130


def test_hand_written_plan_skips_planning(exp: Experiment) -> None:
    exp.write("PLAN.md", "# My plan\n")
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    assert "plan 0" not in exp.agent_calls()
    assert (exp.path / "PLAN.md").read_text() == "# My plan\n"
    assert not (exp.path / "logs" / "plan").exists()
    assert exp.status()["history"][0]["iteration"] == 1
    assert (exp.path / "logs" / "iter_001" / "exit.json").exists()


def test_persons_train_py_is_the_baseline(exp: Experiment) -> None:
    mine = "print('my baseline')\n"
    exp.write("train.py", mine)
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "2").wait() == 0
    assert (exp.path / "logs" / "iter_001" / "train.py").read_text() == mine
    assert "my baseline" in (exp.path / "logs" / "iter_001" / "stdout.log").read_text()
    assert "code 1" not in exp.agent_calls() and "code 2" in exp.agent_calls()


def test_syntax_error_reaches_analyzing_with_the_error(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--max-iterations", "1", FAKE_TRAIN_BODY="def broken(:\n")
    assert run.wait() == 7  # DONE, but no training produced the objective
    assert "analyze 1" in exp.agent_calls()
    stderr = (exp.path / "logs" / "iter_001" / "stderr.log").read_text()
    assert "SyntaxError" in stderr
    row = exp.status()["history"][0]
    assert row["outcome"] == "failed" and row["returncode"] == 1


@pytest.mark.parametrize("role,state", [("plan", "planning"), ("code", "coding"),
                                        ("analyze", "analyzing"), ("report", "reporting")])
def test_stop_in_agent_state_kills_tree_and_resumes(exp: Experiment, role: str,
                                                    state: str) -> None:
    marker = exp.write(f"hang_{role}", "")
    exp.write("IDEA.md", "x")
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    pidfile = exp.path / f"hung_{role}.pid"
    wait_for(pidfile.exists, what="hung agent")
    exp.wait_state(state)
    pids = [int(p) for p in pidfile.read_text().split()]
    wait_for(lambda: len(_descendants(pids[0])) >= 1, what="agent's grandchild")
    tree = pids + _descendants(pids[0])
    (exp.path / "STOP").touch()
    status = exp.wait_state("stopped")
    assert status["previous_state"] == state
    wait_for(lambda: all(gone(p) for p in tree), 10, "agent tree gone")
    marker.unlink()
    (exp.path / "STOP").unlink()
    exp.wait_state("done")
    assert exp.agent_calls().count(f"{role} {1 if role in ('code', 'analyze') else _it(role)}") == 2
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 130


def _it(role: str) -> int:
    return 0 if role == "plan" else 1


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def test_stop_in_training_kills_every_process_and_reruns(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", TREE_TRAIN)
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    pids_dir = exp.shared / "pids"
    names = ("child", "grandchild", "setsid_grandchild", "setsid", "ignores_term",
             "orphan_parent", "orphan", "main")
    wait_for(lambda: all((pids_dir / n).exists() for n in names), what="training tree")
    pids = host_pids(exp.path, [int((pids_dir / n).read_text()) for n in names])
    assert len(set(pids)) >= len(names) - 2  # the two intermediate parents exit at once
    (exp.path / "STOP").touch()
    exp.wait_state("stopped")
    wait_for(lambda: all(gone(p) for p in pids), 10, "every training process gone")
    assert _tagged_survivors(exp.path) == []
    # Resume with a quick training: the interrupted attempt's logs are kept aside.
    exp.write("train.py", "from mlsm import hooks\nhooks.result(loss=1.0)\n")
    (exp.path / "STOP").unlink()
    exp.wait_state("done")
    run_dir = exp.path / "logs" / "iter_001"
    assert (run_dir / "attempt_1" / "train.py").read_text() == TREE_TRAIN
    assert json.loads((run_dir / "exit.json").read_text())["returncode"] == 0
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def _tagged_survivors(d: Path) -> list[int]:
    import psutil

    out = []
    for proc in psutil.process_iter():
        try:
            if (proc.cwd().startswith(str(d)) and proc.status() != psutil.STATUS_ZOMBIE
                    and "mlsm.machine.cli" not in " ".join(proc.cmdline())):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


def test_report_mid_run_ends_it(exp: Experiment) -> None:
    exp.write("hang_code", "")
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run")
    wait_for((exp.path / "hung_code.pid").exists, what="hung code agent")
    pid = int((exp.path / "hung_code.pid").read_text().split()[0])
    exp.write("REPORT.md", "# Written by hand\n")
    assert run.wait() == 7  # DONE by the person's report, with no training result
    status = exp.status()
    assert status["state"] == "done" and status["complete"] is True
    assert gone(pid)


def test_stop_present_at_start_keeps_it_stopped(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    (exp.path / "STOP").touch()
    daemon = exp.mlsm("watch")
    status = exp.wait_state("stopped")
    assert status["previous_state"] == "idle"
    assert exp.agent_calls() == []
    (exp.path / "STOP").unlink()
    exp.wait_state("planning", "coding", "training", "analyzing", "done")
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 130


def test_sigterm_mid_training_is_resumable(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("train.py", "import time\nfrom mlsm import hooks\nwhile True:\n"
                          "    hooks.heartbeat(); time.sleep(0.05)\n")
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    status = exp.wait_state("training")
    wait_for(lambda: exp.status().get("training"), what="training recorded")
    pid = exp.status()["training"]["pid"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 130
    assert gone(pid)
    status = exp.status()
    assert status["state"] == "training" and status["training"]["interrupted"] is True
    exp.write("train.py", "from mlsm import hooks\nhooks.result(loss=2.0)\n")
    assert exp.mlsm("run").wait() == 0
    assert (exp.path / "logs" / "iter_001" / "attempt_1" / "stdout.log").exists()


def test_second_daemon_is_refused_naming_the_pid(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("hang_plan", "")
    first = exp.mlsm("watch")
    exp.wait_state("planning")
    second = exp.mlsm("watch")
    assert second.wait() == 4
    assert f"pid {first.proc.pid}" in second.output()


def test_deleted_and_recreated_root_is_adopted_afresh(exp: Experiment) -> None:
    import shutil

    exp.write("IDEA.md", "first")
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    first = exp.wait_state("done")
    shutil.rmtree(exp.path)
    wait_for(lambda: daemon.proc.poll() is not None or "root_missing" in daemon.output(),
             10, "the daemon to notice")
    exp.path.mkdir()
    exp.write("IDEA.md", "second")
    second = exp.wait_state("done")
    assert second["started_at"] != first["started_at"]
    assert "root_replaced" in exp.runner_log()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 130


def test_stop_touched_and_removed_at_once_is_not_lost(exp: Experiment) -> None:
    marker = exp.write("hang_plan", "")
    exp.write("IDEA.md", "x")
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    wait_for((exp.path / "hung_plan.pid").exists, what="hung agent")
    pid = int((exp.path / "hung_plan.pid").read_text().split()[0])
    marker.unlink()
    (exp.path / "STOP").touch()
    (exp.path / "STOP").unlink()
    exp.wait_state("done")
    assert gone(pid)
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def test_start_over_archives_the_attempt_and_keeps_the_persons_files(exp: Experiment) -> None:
    mine = "from mlsm import hooks\nhooks.result(loss=0.5)\n"
    exp.write("train.py", mine)
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    assert (exp.path / "REPORT.md").exists()
    again = exp.mlsm("run", "--max-iterations", "1")  # DONE stays DONE: nothing runs twice
    assert again.wait() == 0 and exp.agent_calls().count("report 1") == 1
    done = Mlsm(["restart", str(exp.path)], exp.path.parent, exp.env)
    assert done.wait() == 0 and "previous attempt archived in" in done.output()
    archived = next((exp.path / ".mlsm" / "archive").iterdir())
    assert {p.name for p in archived.iterdir()} >= {"status.json", "logs", "REPORT.md",
                                                    "results.tsv", "PLAN.md"}
    assert (exp.path / "train.py").read_text() == mine  # the person's own file stays
    assert (exp.path / "IDEA.md").exists() and not (exp.path / "status.json").exists()
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    assert exp.agent_calls().count("report 1") == 2  # a whole new run
    assert exp.status()["history"][0]["iteration"] == 1


def test_deleting_status_by_hand_never_reuses_old_logs(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--max-iterations", "1", FAKE_DECISION="finish").wait() == 0
    (exp.path / "status.json").unlink()
    (exp.path / "REPORT.md").unlink()
    run = exp.mlsm("run", "--max-iterations", "1", FAKE_DECISION="continue")
    assert run.wait() == 0
    assert "stale_logs_archived" in exp.runner_log()
    decision = json.loads((exp.path / "logs" / "iter_001" / "decision.json").read_text())
    assert decision["decision"] == "continue"  # this run's analysis, not the old one's


def test_restart_with_a_daemon_running_and_a_changed_idea(exp: Experiment) -> None:
    exp.write("IDEA.md", "first idea")
    daemon = exp.mlsm("watch", "--max-iterations", "1")
    exp.wait_state("done")
    exp.write("IDEA.md", "second idea")
    wait_for(lambda: "mlsm restart" in (exp.status().get("waiting_for") or ""), 10,
             "status to say how to start over")
    shown = Mlsm(["status", str(exp.path)], exp.path.parent, exp.env)
    assert shown.wait() == 0 and "mlsm restart" in shown.output()
    asked = Mlsm(["restart", str(exp.path)], exp.path.parent, exp.env)
    assert asked.wait() == 0 and "RESTART written" in asked.output()
    wait_for(lambda: exp.agent_calls().count("plan 0") == 2, 30, "a second plan")
    exp.wait_state("done")
    assert not (exp.path / "RESTART").exists()
    daemon.signal(signal.SIGTERM)
    daemon.wait()
