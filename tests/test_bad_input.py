"""Bad input gets one clear line and loses nothing: IDEA.md, status.json, config, agents."""

from __future__ import annotations

import json
import os
import signal

import pytest
from helpers import Experiment, wait_for


def _start_watch_and_wait_problem(exp: Experiment, needle: str) -> None:
    daemon = exp.mlsm("watch")
    wait_for(lambda: needle in exp.runner_log(), what=f"{needle!r} in runner.log")
    assert exp.state() in (None, "idle")
    assert exp.agent_calls() == []
    # Fixing the file starts the run: nothing was lost, nothing needs a restart.
    idea = exp.path / "IDEA.md"
    if idea.is_dir():
        idea.rmdir()
    elif idea.is_symlink() or idea.exists():
        idea.unlink()
    exp.write("IDEA.md", "a real idea\n")
    exp.wait_state("planning", "coding", "training", "analyzing", "reporting", "done")
    daemon.signal(signal.SIGTERM)
    daemon.wait()


@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_empty_idea_does_not_start(exp: Experiment, content: str) -> None:
    exp.write("IDEA.md", content)
    _start_watch_and_wait_problem(exp, "IDEA.md is empty")


def test_idea_that_is_a_directory(exp: Experiment) -> None:
    (exp.path / "IDEA.md").mkdir()
    _start_watch_and_wait_problem(exp, "IDEA.md is a directory")


def test_idea_not_utf8(exp: Experiment) -> None:
    (exp.path / "IDEA.md").write_bytes(b"caf\xe9 \xff\xfe idea")
    _start_watch_and_wait_problem(exp, "IDEA.md is not UTF-8 text")


def test_idea_unreadable_broken_link(exp: Experiment) -> None:
    os.symlink(exp.path / "nowhere.md", exp.path / "IDEA.md")
    _start_watch_and_wait_problem(exp, "IDEA.md is a broken link")


@pytest.mark.parametrize("content", [b"{not json", b'{"schema": 1, "state": "trai',
                                     b"\xff\xfe", b'{"schema": 1, "state": "flying", '
                                                  b'"iteration": 1}'])
def test_corrupt_status_is_refused_not_reset(exp: Experiment, content: bytes) -> None:
    exp.write("IDEA.md", "x")
    (exp.path / "status.json").write_bytes(content)
    run = exp.mlsm("run")
    assert run.wait() == 3
    out = run.output()
    assert "status.json is corrupt" in out and "move it aside" in out
    assert len(out.strip().splitlines()) == 1
    assert (exp.path / "status.json").read_bytes() == content


def test_invalid_decision_fails_with_a_sentence(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--agent-retries", "1", FAKE_DECISION="maybe")
    assert run.wait() == 1
    status = exp.status()
    assert status["state"] == "failed"
    assert "the analyze step failed after 2 attempts" in status["error"]
    assert "'decision' must be 'continue' or 'finish', got 'maybe'" in status["error"]


def test_agent_command_that_does_not_exist(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--agent", "command", "--agent-cmd", "no-such-agent-xyz --flag",
                   agent=False)
    assert run.wait() == 3
    assert "agent command 'no-such-agent-xyz' not found" in run.output()


def test_agent_nonzero_exit_is_retried_then_failed(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--agent-retries", "2", FAKE_FAIL_ROLE="plan")
    assert run.wait() == 1
    status = exp.status()
    assert "the plan step failed after 3 attempts" in status["error"]
    assert "exited with code 3" in status["error"] and "deliberate failure" in status["error"]
    transcripts = sorted(p.name for p in (exp.path / "logs" / "plan").glob("agent_plan*.log"))
    assert transcripts == ["agent_plan.2.log", "agent_plan.3.log", "agent_plan.log"]
    retries = [e for e in exp.events() if e["event"] == "agent_step_failed"]
    assert [e["attempt"] for e in retries] == [1, 2]


def test_agent_that_never_writes_its_product(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", "--agent-retries", "0", FAKE_NO_PRODUCT_ROLE="plan")
    assert run.wait() == 1
    assert "the plan agent did not write PLAN.md" in exp.status()["error"]


def test_agent_timeout_kills_and_fails(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("hang_plan", "")
    run = exp.mlsm("run", "--agent-retries", "0", "--agent-timeout", "0.5")
    assert run.wait() == 1
    assert "ran longer than --agent-timeout 0.5s" in exp.status()["error"]


def test_unknown_toml_key_names_it(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("mlsm.toml", 'max-iteratons = 3\n')
    run = exp.mlsm("run")
    assert run.wait() == 3
    assert "unknown key 'max-iteratons'" in run.output()


@pytest.mark.parametrize("toml,needle", [
    ("max-iterations = 0\n", "'max_iterations' must be >= 1, got 0"),
    ('agent-timeout = "soon"\n', "bad value 'soon' for 'agent_timeout'"),
    ("max-iterations = [\n", "is not valid TOML"),
])
def test_bad_toml_values(exp: Experiment, toml: str, needle: str) -> None:
    exp.write("IDEA.md", "x")
    exp.write("mlsm.toml", toml)
    run = exp.mlsm("run")
    assert run.wait() == 3
    assert needle in run.output()


def test_bad_env_value_names_variable(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    run = exp.mlsm("run", MLSM_MAX_HOURS="lots")
    assert run.wait() == 3
    assert "environment MLSM_MAX_HOURS: bad value 'lots'" in run.output()


def test_not_a_directory(exp: Experiment) -> None:
    target = exp.write("file.txt", "x")
    from helpers import Mlsm

    run = Mlsm(["run", str(target)], exp.path, exp.env)
    assert run.wait() != 0
    assert "file.txt" in run.output()


def test_status_json_survives_as_seed_format(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    (exp.path / "status.json").write_text(json.dumps(
        {"iteration": 0, "timestamp": "2024-01-01T00:00:00", "complete": False}))
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    assert exp.status()["schema"] == 2


def test_agent_with_a_silent_transcript_counts_as_hung(exp: Experiment) -> None:
    exp.write("IDEA.md", "x")
    exp.write("hang_plan", "")
    run = exp.mlsm("run", "--agent-retries", "0", "--agent-idle-timeout", "0.5")
    assert run.wait() == 1
    error = exp.status()["error"]
    assert "wrote nothing for" in error and "--agent-idle-timeout 0.5s" in error


def test_retry_sends_a_failed_run_back_to_its_step(exp: Experiment) -> None:
    from helpers import Mlsm

    exp.write("IDEA.md", "x")
    assert exp.mlsm("run", "--agent-retries", "0", FAKE_FAIL_ROLE="analyze").wait() == 1
    assert exp.status()["failed_state"] == "analyzing"
    not_failed = Mlsm(["retry", str(exp.path)], exp.path.parent, exp.env)
    assert not_failed.wait() == 0, not_failed.output()
    assert "back to ANALYZING" in not_failed.output()
    assert exp.mlsm("run", "--max-iterations", "1").wait() == 0
    status = exp.status()
    assert status["state"] == "done" and len(status["history"]) == 1  # nothing re-trained
    again = Mlsm(["retry", str(exp.path)], exp.path.parent, exp.env)
    assert again.wait() == 3 and "is not FAILED (done)" in again.output()
