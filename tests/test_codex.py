"""The `codex` backend, driven through a fake `codex` executable that replays recorded JSONL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlsm.handlers.agents.base import AgentOutcome, AgentStep, Role, check_product, read_decision
from mlsm.handlers.agents.codex import CodexAgent, last_message_path, schema_path
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import AgentUnavailableError

FAKE_CODEX = Path(__file__).with_name("fake_codex.py")
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"
USAGE = {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122}
Event = dict[str, Any]


# --- recorded event shapes (codex exec --json, codex-rs/exec/src/exec_events.rs) ----------


def reasoning(n: int, text: str) -> Event:
    return {"type": "item.completed", "item": {"id": f"item_{n}", "type": "reasoning",
                                               "text": text}}


def command(n: int, cmd: str, output: str = "", exit_code: int | None = 0,
            status: str = "completed") -> list[Event]:
    item = {"id": f"item_{n}", "type": "command_execution", "command": cmd}
    return [
        {"type": "item.started", "item": {**item, "aggregated_output": "", "exit_code": None,
                                          "status": "in_progress"}},
        {"type": "item.completed", "item": {**item, "aggregated_output": output,
                                            "exit_code": exit_code, "status": status}},
    ]


def file_change(n: int, path: Path, content: str, kind: str = "add") -> list[Event]:
    return [
        {"type": "_write", "path": str(path), "content": content},
        {"type": "item.completed", "item": {"id": f"item_{n}", "type": "file_change",
                                            "changes": [{"path": str(path), "kind": kind}],
                                            "status": "completed"}},
    ]


def message(n: int, text: str) -> Event:
    return {"type": "item.completed", "item": {"id": f"item_{n}", "type": "agent_message",
                                               "text": text}}


def turn(*items: Event | list[Event]) -> list[Event]:
    """A whole successful run: thread, turn, the items, and the usage at the end."""
    flat: list[Event] = []
    for item in items:
        flat += item if isinstance(item, list) else [item]
    return [{"type": "thread.started", "thread_id": THREAD}, {"type": "turn.started"}, *flat,
            {"type": "turn.completed", "usage": USAGE}]


def failing_turn(message_text: str, notices: int = 0) -> list[Event]:
    """A run whose turn fails after `notices` reconnect notices, as codex reports it."""
    retries = [{"type": "error", "message": f"Reconnecting... {i}/5 (stream disconnected "
                                            f"before completion: {message_text})"}
               for i in range(1, notices + 1)]
    return [{"type": "thread.started", "thread_id": THREAD}, {"type": "turn.started"}, *retries,
            {"type": "error", "message": message_text},
            {"type": "turn.failed", "error": {"message": message_text}}]


# --- running the fake ---------------------------------------------------------------------


@pytest.fixture
def codex_bin(tmp_path: Path) -> str:
    """A `codex` executable that runs the fake with this Python."""
    path = tmp_path / "bin" / "codex"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CODEX}" "$@"\n')
    path.chmod(0o755)
    return str(path)


def make_step(tmp_path: Path, role: Role, config: Config, attempt: int = 1) -> AgentStep:
    exp_dir = tmp_path / "exp"
    run_dir = exp_dir / "logs" / ("plan" if role == "plan" else "iter_001")
    run_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "IDEA.md").write_text("Halve the loss of a tiny model.\n")
    prompt = f"# mlsm step: {role}\n\nrole: {role}\nDo the {role} step.\n"
    prompt_file = run_dir / f"prompt_{role}.md"
    prompt_file.write_text(prompt)
    return AgentStep(role, exp_dir, run_dir, 1, attempt, prompt, prompt_file,
                     run_dir / f"agent_{role}.log", config)


def run_step(step: AgentStep, tmp_path: Path, events: list[Event], exit_code: int = 0,
             last_message: str | None = None) -> AgentOutcome:
    """Spawn the backend's argv as the daemon does (cwd, stdin closed, transcript), collect."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"events": events, "exit_code": exit_code,
                                    "last_message": last_message}))
    backend = CodexAgent()
    env = backend.env(step, {**os.environ, "FAKE_CODEX_SCENARIO": str(scenario),
                             "FAKE_CODEX_RECORD": str(tmp_path / "call.json")})
    with step.transcript.open("ab") as out:
        done = subprocess.run(backend.argv(step), cwd=step.exp_dir, stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, env=env, timeout=30,
                              start_new_session=True, check=False)
    return backend.collect(step, done.returncode)


def call(tmp_path: Path) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads((tmp_path / "call.json").read_text())
    return recorded


# --- command line -------------------------------------------------------------------------


def test_preflight_names_the_install_command_and_the_builtin_agent(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-codex")
    with pytest.raises(AgentUnavailableError) as err:
        CodexAgent().preflight(Config(agent="codex", codex_bin=missing))
    message = str(err.value)
    assert missing in message and "npm install -g @openai/codex" in message
    assert "--agent builtin" in message and "\n" not in message


def test_argv_is_exec_json_in_a_workspace_write_sandbox(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "plan", Config(agent="codex", codex_bin=codex_bin))
    argv = CodexAgent().argv(step)
    assert argv[0] == codex_bin and argv[1:3] == ["exec", "--json"]
    assert argv[argv.index("--sandbox") + 1] == "workspace-write"
    assert "--skip-git-repo-check" in argv
    assert "--dangerously-bypass-approvals-and-sandbox" not in argv
    assert "--output-schema" not in argv and "-c" not in argv
    assert argv[-2] == "--" and argv[-1].endswith(step.prompt)
    assert "NOTES.md" in argv[-1]  # the standing instructions travel with the prompt


def test_argv_opens_the_network_only_to_install_packages(tmp_path: Path, codex_bin: str) -> None:
    agent = CodexAgent()
    pip = Config(agent="codex", codex_bin=codex_bin, allow_pip=True, model="gpt-5-codex")
    code = agent.argv(make_step(tmp_path, "code", pip))
    assert code[code.index("-c") + 1] == "sandbox_workspace_write.network_access=true"
    assert code[code.index("--model") + 1] == "gpt-5-codex"
    assert "-c" not in agent.argv(make_step(tmp_path, "plan", pip))
    wide = Config(agent="codex", codex_bin=codex_bin, dangerously_skip_permissions=True)
    argv = agent.argv(make_step(tmp_path, "code", wide))
    assert "--dangerously-bypass-approvals-and-sandbox" in argv and "--sandbox" not in argv


def test_analyze_writes_a_strict_output_schema_to_the_run_dir(
        tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "analyze", Config(agent="codex", codex_bin=codex_bin))
    argv = CodexAgent().argv(step)
    assert argv[argv.index("--output-schema") + 1] == str(schema_path(step))
    assert schema_path(step).parent == step.run_dir
    schema = json.loads(schema_path(step).read_text())
    assert sorted(schema["required"]) == sorted(schema["properties"])
    assert schema["additionalProperties"] is False
    assert argv[argv.index("--output-last-message") + 1] == str(last_message_path(step))


# --- each role's product --------------------------------------------------------------------


def test_plan_writes_plan_md(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "plan", Config(agent="codex", codex_bin=codex_bin))
    outcome = run_step(step, tmp_path, turn(
        reasoning(0, "**Reading the idea**"),
        command(1, "bash -lc 'cat IDEA.md'", "Halve the loss of a tiny model.\n"),
        file_change(2, step.product, "# Plan\n\n## Goal\nHalve the loss.\n"),
        message(3, "Wrote PLAN.md with the goal, data, model and metric.")))
    assert outcome.ok, outcome.reason
    assert check_product("plan", step.product) is None
    assert outcome.session_id == THREAD and outcome.turns == 3 and outcome.cost_usd == 0.0
    recorded = call(tmp_path)
    assert recorded["cwd"] == str(step.exp_dir)
    assert recorded["env"]["MLSM_PRODUCT"] == str(step.product)
    assert recorded["env"]["MLSM_ROLE"] == "plan"


def test_code_writes_train_py(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "code", Config(agent="codex", codex_bin=codex_bin))
    outcome = run_step(step, tmp_path, turn(
        file_change(0, step.product, "print('RESULT val_loss=0.5')\n"),
        command(1, "bash -lc 'python -m py_compile train.py'"),
        message(2, "train.py is ready.")))
    assert outcome.ok, outcome.reason
    compile(step.product.read_text(), "train.py", "exec")


def test_analyze_decision_comes_from_the_schema_bound_last_message(
        tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "analyze", Config(agent="codex", codex_bin=codex_bin))
    answer = '{"decision":"continue","reason":"the loss still falls","metric":null}'
    outcome = run_step(step, tmp_path, turn(
        command(0, "bash -lc 'cat logs/iter_001/result.json'", '{"val_loss": 0.5}'),
        file_change(1, step.run_dir / "analysis.md", "Loss 0.5, still falling.\n"),
        message(2, answer)), last_message=answer)
    assert outcome.ok, outcome.reason
    assert check_product("analyze", step.product) is None
    assert read_decision(step.product) == {"decision": "continue",
                                           "reason": "the loss still falls"}


def test_analyze_falls_back_to_the_final_agent_message(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "analyze", Config(agent="codex", codex_bin=codex_bin))
    fenced = ('Decision:\n```json\n{"decision": "finish", "reason": "goal met", '
              '"metric": 0.031}\n```')
    outcome = run_step(step, tmp_path, turn(message(0, fenced)))
    assert outcome.ok, outcome.reason
    assert read_decision(step.product)["metric"] == 0.031


def test_analyze_without_any_decision_fails(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "analyze", Config(agent="codex", codex_bin=codex_bin))
    outcome = run_step(step, tmp_path, turn(message(0, "I think it went well.")),
                       last_message="I think it went well.")
    assert not outcome.ok and "gave no decision" in (outcome.reason or "")


def test_report_writes_report_md(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "report", Config(agent="codex", codex_bin=codex_bin))
    report = "".join(f"## {s}\n\nText.\n\n" for s in (
        "Summary", "Approach", "Results", "Challenges", "Recommendations"))
    outcome = run_step(step, tmp_path, turn(file_change(0, step.product, report),
                                            message(1, "Report written.")))
    assert outcome.ok, outcome.reason
    assert "## Recommendations" in step.product.read_text()


# --- refusals and failures ---------------------------------------------------------------


def test_a_declined_command_is_named_when_the_product_is_missing(
        tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "code", Config(agent="codex", codex_bin=codex_bin))
    outcome = run_step(step, tmp_path, turn(
        command(0, "bash -lc 'rm -rf /home/user/data'", "", None, status="declined"),
        command(1, "bash -lc 'curl https://example.com/x.py -o train.py'",
                "curl: (6) Could not resolve host: example.com\n", 6, status="failed"),
        message(2, "The sandbox refused; I could not write train.py.")))
    assert not outcome.ok and outcome.retryable
    reason = outcome.reason or ""
    assert "did not write train.py" in reason and "rm -rf /home/user/data" in reason


def test_a_bad_request_is_not_retried(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "plan", Config(agent="codex", codex_bin=codex_bin))
    text = ('unexpected status 400 Bad Request: {"error":{"message":"Invalid \'input[3].content\''
            ': string too long","type":"invalid_request_error"}}')
    outcome = run_step(step, tmp_path, failing_turn(text), exit_code=1)
    assert not outcome.ok and not outcome.retryable
    assert "string too long" in (outcome.reason or "")
    assert outcome.session_id == THREAD


@pytest.mark.parametrize(("text", "retryable"), [
    ("exceeded retry limit, last status: 429 Too Many Requests, request id: 9c84b52ce87fbe62-SJC",
     True),
    ("exceeded retry limit, last status: 500 Internal Server Error, request id: 4d2f-AMS", True),
    ("stream disconnected before completion: error sending request for url "
     "(https://api.openai.com/v1/responses)", True),
    ("exceeded retry limit, last status: 401 Unauthorized, request id: 99cd1a-AMS", False),
    ("You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing) or try "
     "again in 3 hours 12 minutes.", False),
])
def test_failed_turns_are_retryable_only_when_transient(
        tmp_path: Path, codex_bin: str, text: str, retryable: bool) -> None:
    step = make_step(tmp_path, "code", Config(agent="codex", codex_bin=codex_bin))
    outcome = run_step(step, tmp_path, failing_turn(text, notices=2), exit_code=1)
    assert not outcome.ok
    assert outcome.retryable is retryable, outcome.reason
    assert text[:40] in (outcome.reason or "")
    assert "Reconnecting" not in (outcome.reason or "")


def test_a_run_that_ends_without_completing_its_turn_fails(
        tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "plan", Config(agent="codex", codex_bin=codex_bin))
    events = turn(file_change(0, step.product, "# Plan\n"))[:-1]
    outcome = run_step(step, tmp_path, events, exit_code=0)
    assert not outcome.ok and outcome.retryable
    assert "without finishing its turn" in (outcome.reason or "")


def test_a_killed_agent_is_retryable(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "code", Config(agent="codex", codex_bin=codex_bin))
    step.transcript.write_text(json.dumps({"type": "thread.started", "thread_id": THREAD})
                               + "\n" + json.dumps({"type": "turn.started"}) + "\n")
    outcome = CodexAgent().collect(step, -9)
    assert not outcome.ok and outcome.retryable and "signal 9" in (outcome.reason or "")


def test_options_the_cli_refuses_fail_without_retry(tmp_path: Path, codex_bin: str) -> None:
    step = make_step(tmp_path, "plan", Config(agent="codex", codex_bin=codex_bin))
    step.transcript.write_text("error: unexpected argument '--output-schema' found\n")
    outcome = CodexAgent().collect(step, 2)
    assert not outcome.ok and not outcome.retryable
    assert "unexpected argument" in (outcome.reason or "")


def test_each_attempt_is_judged_by_its_own_events(tmp_path: Path, codex_bin: str) -> None:
    config = Config(agent="codex", codex_bin=codex_bin)
    first = make_step(tmp_path, "plan", config)
    assert not run_step(first, tmp_path, failing_turn("exceeded retry limit, last status: "
                                                      "503 Service Unavailable"), 1).ok
    second = make_step(tmp_path, "plan", config, attempt=2)
    outcome = run_step(second, tmp_path, turn(file_change(0, second.product, "# Plan\n"),
                                              message(1, "Done.")))
    assert outcome.ok, outcome.reason
