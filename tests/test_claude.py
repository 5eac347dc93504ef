"""The `claude` backend, driven against the real Claude Code CLI and a fake Messages API."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mlsm.handlers.agents.base import AgentOutcome, AgentStep, Role, check_product, read_decision
from mlsm.handlers.agents.claude import ClaudeAgent, session_id
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import AgentUnavailableError

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    """Import a helper beside this file (tests run with --import-mode=importlib)."""
    module_name = f"mlsm_tests_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(
        f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


fa = _load("fake_anthropic")


def find_claude() -> str | None:
    """The CLI under test: MLSM_TEST_CLAUDE_BIN, the repo's .tools install, or PATH."""
    candidates = [os.environ.get("MLSM_TEST_CLAUDE_BIN"),
                  str(REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"),
                  shutil.which("claude")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def claude_bin() -> str:
    found = find_claude()
    if found is None:
        message = ("Claude Code CLI not found (set MLSM_TEST_CLAUDE_BIN or run "
                   "`npm install --prefix .tools/claude @anthropic-ai/claude-code`)")
        if os.environ.get("MLSM_REQUIRE_CLAUDE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def claude_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("claude-home")


@pytest.fixture
def fake() -> Iterator[Any]:
    server = fa.FakeAnthropic().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cli_env(fake: Any, claude_home: Path) -> dict[str, str]:
    """The environment that points the real CLI at the fake API and nowhere else."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CLAUDE", "MLSM_"))}
    env.update(
        ANTHROPIC_BASE_URL=fake.url,
        ANTHROPIC_API_KEY="sk-ant-fake",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_MAX_RETRIES="1",
        HOME=str(claude_home),
    )
    return env


def render(role: Role, exp_dir: Path, run_dir: Path, product: Path, iteration: int = 1) -> str:
    """A role's prompt, rendered from the package template the way the daemon does."""
    template = resources.files("mlsm.handlers").joinpath("prompts", f"{role}.md")
    return string.Template(template.read_text(encoding="utf-8")).safe_substitute(
        exp_dir=exp_dir, run_dir=run_dir, iteration=iteration, max_iterations=3,
        product=product, idea="Halve the loss of a tiny model.", history="(none yet)",
        train_cmd=f"{sys.executable} train.py")


def make_step(tmp_path: Path, role: Role, config: Config | None = None, attempt: int = 1,
              iteration: int = 1) -> AgentStep:
    exp_dir = tmp_path / "exp"
    run_dir = exp_dir / "logs" / f"iter_{iteration:03d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "IDEA.md").write_text("Halve the loss of a tiny model.\n")
    config = config or Config(agent="claude")
    probe = AgentStep(role, exp_dir, run_dir, iteration, attempt, "", run_dir / "p.md",
                      run_dir / f"agent-{role}.log", config)
    prompt = render(role, exp_dir, run_dir, probe.product, iteration)
    prompt_file = run_dir / f"prompt-{role}.md"
    prompt_file.write_text(prompt)
    return AgentStep(role, exp_dir, run_dir, iteration, attempt, prompt, prompt_file,
                     probe.transcript, config)


def run_step(step: AgentStep, env: dict[str, str]) -> AgentOutcome:
    """Spawn the backend's argv the way the daemon does, then collect."""
    backend = ClaudeAgent()
    with step.transcript.open("ab") as out:
        done = subprocess.run(backend.argv(step), cwd=step.exp_dir, stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT,
                              env=backend.env(step, env), timeout=90, start_new_session=True,
                              check=False)
    return backend.collect(step, done.returncode)


def result_line(step: AgentStep) -> dict[str, Any]:
    lines = [json.loads(line) for line in step.transcript.read_text().splitlines()
             if line.startswith("{")]
    results = [e for e in lines if e.get("type") == "result"
               and e.get("session_id") == session_id(step)]
    assert results, step.transcript.read_text()[-2000:]
    found: dict[str, Any] = results[-1]
    return found


def config(claude_bin: str, **changes: Any) -> Config:
    return Config(agent="claude", claude_bin=claude_bin, **changes)


# --- without the CLI -------------------------------------------------------------------


def test_preflight_names_the_install_command_and_the_builtin_agent(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-claude")
    with pytest.raises(AgentUnavailableError) as err:
        ClaudeAgent().preflight(Config(claude_bin=missing))
    message = str(err.value)
    assert missing in message
    assert "npm install -g @anthropic-ai/claude-code" in message
    assert "--agent builtin" in message
    assert "\n" not in message


def _flag_value(argv: list[str], prefix: str) -> str:
    return next(a for a in argv if a.startswith(prefix))[len(prefix):]


def test_argv_grants_each_role_the_least_it_needs(tmp_path: Path) -> None:
    agent = ClaudeAgent()
    plan = agent.argv(make_step(tmp_path, "plan"))
    code = agent.argv(make_step(tmp_path, "code"))
    analyze = agent.argv(make_step(tmp_path, "analyze"))
    for argv in (plan, code, analyze):
        assert argv[1:3] == ["-p", argv[2]] and argv[2].startswith("# mlsm step")
        assert "--dangerously-skip-permissions" not in argv
        assert argv[argv.index("--output-format") + 1] == "stream-json"
        assert "--verbose" in argv and argv[argv.index("--max-turns") + 1] == "40"
        assert "NOTES.md" in argv[argv.index("--append-system-prompt") + 1]
    plan_rules = _flag_value(plan, "--allowedTools=").split(",")
    assert plan_rules == ["Read(./**)", "Edit(./**)", "Write(./**)"]
    assert "Bash(python -m py_compile:*)" in _flag_value(code, "--allowedTools=")
    assert "Bash" not in _flag_value(plan, "--tools=") and "Bash" in _flag_value(code, "--tools=")
    assert "pip" not in _flag_value(code, "--allowedTools=")
    assert "--json-schema" in analyze and "--json-schema" not in plan


def test_argv_adds_installers_model_and_skip_permissions_only_when_asked(tmp_path: Path) -> None:
    agent = ClaudeAgent()
    pip = agent.argv(make_step(tmp_path, "code", Config(allow_pip=True, model="opus")))
    assert "Bash(pip install:*)" in _flag_value(pip, "--allowedTools=")
    assert "uv pip" not in _flag_value(pip, "--allowedTools=")
    assert pip[pip.index("--model") + 1] == "opus"
    uv = agent.argv(make_step(tmp_path, "code", Config(allow_uv=True)))
    assert "Bash(uv pip install:*)" in _flag_value(uv, "--allowedTools=")
    wide = agent.argv(make_step(tmp_path, "plan", Config(dangerously_skip_permissions=True)))
    assert "--dangerously-skip-permissions" in wide
    assert not any(a.startswith(("--allowedTools", "--tools")) for a in wide)


def test_argv_caps_spending_at_what_is_left_except_for_the_report(tmp_path: Path) -> None:
    agent = ClaudeAgent()
    step = dataclasses.replace(make_step(tmp_path, "code", Config(max_cost_usd=2.0)),
                               spent_usd=0.5)  # the daemon's ledger, handed to the step
    argv = agent.argv(step)
    assert argv[argv.index("--max-budget-usd") + 1] == "1.5000"
    assert "--max-budget-usd" not in agent.argv(make_step(tmp_path, "code"))
    report = make_step(tmp_path, "report", Config(max_cost_usd=2.0))
    assert "--max-budget-usd" not in agent.argv(report)


def test_collect_without_a_result_line_reports_the_exit(tmp_path: Path) -> None:
    step = make_step(tmp_path, "plan")
    step.transcript.write_text("Segmentation fault\n")
    outcome = ClaudeAgent().collect(step, 139)
    assert not outcome.ok and outcome.retryable
    assert "code 139" in (outcome.reason or "") and "Segmentation fault" in (outcome.reason or "")
    assert not ClaudeAgent().collect(step, -9).ok


def _write_result(step: AgentStep, **result: Any) -> None:
    sid = session_id(step)
    lines = [{"type": "system", "subtype": "init", "session_id": sid},
             {"type": "result", "session_id": sid, **result}]
    step.transcript.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_collect_reads_result_fields_of_other_cli_versions(tmp_path: Path) -> None:
    step = make_step(tmp_path, "plan")
    _write_result(step, subtype="success", is_error=True, cost_usd=0.5, num_turns=1,
                  result='API Error: 529 {"type":"error","error":{"type":"overloaded_error"}}')
    outcome = ClaudeAgent().collect(step, 1)
    assert not outcome.ok and outcome.retryable
    assert "HTTP 529" in (outcome.reason or "") and outcome.cost_usd == 0.5
    assert outcome.turns == 1 and outcome.session_id == session_id(step)


def test_analyze_without_a_structured_answer_or_a_file_fails(tmp_path: Path) -> None:
    step = make_step(tmp_path, "analyze")
    _write_result(step, subtype="success", is_error=False, result="It went well.",
                  total_cost_usd=0.01, num_turns=2)
    outcome = ClaudeAgent().collect(step, 0)
    assert not outcome.ok and outcome.retryable
    assert "gave no decision" in (outcome.reason or "")
    _write_result(step, subtype="success", is_error=False, num_turns=2,
                  structured_output={"decision": "stop", "reason": "x"})
    outcome = ClaudeAgent().collect(step, 0)
    assert not outcome.ok and "'continue' or 'finish'" in (outcome.reason or "")
    assert not step.product.exists()


# --- against the real CLI ----------------------------------------------------------------

@pytest.mark.claude
def test_plan_writes_plan_md_with_the_write_tool(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = fa.research()
    step = make_step(tmp_path, "plan", config(claude_bin))
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    assert check_product("plan", step.product) is None
    assert "Halve the loss" in step.product.read_text()
    assert outcome.cost_usd > 0 and outcome.turns == 2
    assert outcome.session_id == session_id(step)
    request = fake.main_requests[0]
    assert "research memory" in json.dumps(request["system"])
    assert {t["name"] for t in request["tools"]} <= {"Read", "Write", "Edit", "Glob", "Grep"}


@pytest.mark.claude
def test_code_writes_train_py_and_may_syntax_check_it(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = fa.research()
    step = make_step(tmp_path, "code", config(claude_bin))
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    compile(step.product.read_text(), "train.py", "exec")
    assert result_line(step)["permission_denials"] == []
    # The check really ran: it left its byte-code beside train.py.
    assert list((step.exp_dir / "__pycache__").glob("train.*.pyc"))


@pytest.mark.claude
def test_analyze_decision_comes_from_structured_output(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = fa.research(finish_at=1)
    step = make_step(tmp_path, "analyze", config(claude_bin))
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    assert check_product("analyze", step.product) is None
    assert read_decision(step.product) == {
        "decision": "finish", "reason": "iteration 1 ran", "metric": 0.03125}
    assert (step.run_dir / "analysis.md").read_text().startswith("Iteration 1")
    assert "StructuredOutput" in {t["name"] for t in fake.main_requests[0]["tools"]}


@pytest.mark.claude
def test_analyze_accepts_a_decision_file_when_the_model_skips_structured_output(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    step = make_step(tmp_path, "analyze", config(claude_bin))
    decision = '{"decision": "continue", "reason": "try a wider model"}'
    # The CLI asks once more for StructuredOutput; the fake keeps declining.
    fake.script = fa.turns(fa.call("Write", file_path=str(step.product), content=decision),
                           fa.say("Wrote decision.json."))
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    assert read_decision(step.product)["reason"] == "try a wider model"


@pytest.mark.claude
def test_report_writes_report_md(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = fa.research()
    step = make_step(tmp_path, "report", config(claude_bin))
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    text = step.product.read_text()
    assert all(f"## {s}" in text for s in ("Summary", "Results", "Recommendations"))


@pytest.mark.claude
def test_tools_outside_the_allowed_list_are_refused(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    step = make_step(tmp_path, "code", config(claude_bin))
    keep = step.exp_dir / "keep.txt"
    keep.write_text("precious\n")
    outside = tmp_path / "outside.txt"
    fake.script = fa.turns(
        fa.call("Bash", command=f"rm -rf {keep}", description="clean up"),
        fa.call("Bash", command=f"curl -s {fake.url}/leak", description="phone home"),
        fa.call("Write", file_path=str(outside), content="escaped\n"),
        fa.say("I could not write train.py."),
    )
    outcome = run_step(step, cli_env)
    assert keep.read_text() == "precious\n"
    assert not outside.exists()
    assert "/leak" not in fake.paths
    denied = [d["tool_name"] for d in result_line(step)["permission_denials"]]
    assert denied == ["Bash", "Bash", "Write"]
    assert not outcome.ok and outcome.retryable
    reason = outcome.reason or ""
    assert "did not write train.py" in reason and "refused tool calls: Bash(rm -rf" in reason


@pytest.mark.claude
def test_file_tools_inside_the_experiment_directory_are_pre_approved(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    step = make_step(tmp_path, "plan", config(claude_bin))
    idea, notes = step.exp_dir / "IDEA.md", step.exp_dir / "NOTES.md"
    fake.script = fa.turns(
        fa.call("Read", file_path=str(idea)),
        fa.call("Glob", pattern="**/*.md", path=str(step.exp_dir)),
        fa.call("Grep", pattern="loss", path=str(step.exp_dir)),
        fa.call("Write", file_path=str(notes), content="# Notes\n"),
        fa.call("Edit", file_path=str(notes), old_string="# Notes", new_string="# Notes (1)"),
        fa.call("Write", file_path=str(step.product), content="# Plan\n"),
        fa.say("Planned."),
    )
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    assert result_line(step)["permission_denials"] == []
    assert notes.read_text() == "# Notes (1)\n"


@pytest.mark.claude
def test_mlsm_files_and_an_early_report_are_refused(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    step = make_step(tmp_path, "plan", config(claude_bin))
    (step.exp_dir / "status.json").write_text('{"state": "planning"}\n')
    fake.script = fa.turns(
        fa.call("Write", file_path=str(step.exp_dir / "REPORT.md"), content="# Done\n"),
        fa.call("Write", file_path=str(step.exp_dir / "status.json"), content="{}\n"),
        fa.call("Write", file_path=str(step.exp_dir / ".mlsm" / "lock"), content="x\n"),
        fa.call("Write", file_path=str(step.exp_dir / "STOP"), content=""),
        fa.call("Write", file_path=str(step.product), content="# Plan\n"),
        fa.say("Planned."),
    )
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    assert not (step.exp_dir / "REPORT.md").exists() and not (step.exp_dir / "STOP").exists()
    assert not (step.exp_dir / ".mlsm").exists()
    assert (step.exp_dir / "status.json").read_text() == '{"state": "planning"}\n'
    # Deny rules answer with a tool error rather than a listed permission denial.
    refusals = [r for r in fa.tool_results(fake.main_requests[-1]) if "denied" in r]
    assert len(refusals) == 4, refusals


@pytest.mark.claude
def test_a_prompt_too_long_for_argv_is_read_from_its_file(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    small = make_step(tmp_path, "plan", config(claude_bin))
    outside = tmp_path / "prompt_plan.md"  # outside the experiment: needs its own Read rule
    outside.write_text(small.prompt + "\n" + "x" * 120_000 + "\n")
    step = AgentStep("plan", small.exp_dir, small.run_dir, 1, 1, outside.read_text(), outside,
                     small.transcript, small.config)
    fake.script = fa.turns(
        fa.call("Read", file_path=str(outside), limit=5),
        fa.call("Write", file_path=str(step.product), content="# Plan\n"),
        fa.say("Planned."),
    )
    outcome = run_step(step, cli_env)
    assert outcome.ok, outcome.reason
    assert result_line(step)["permission_denials"] == []
    assert str(outside) in fa.first_user_text(fake.main_requests[0])


@pytest.mark.claude
def test_api_error_fails_the_step_with_the_clis_message(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = lambda request: fa.ApiError(400, "invalid_request_error",
                                              "messages: text content blocks must be non-empty")
    step = make_step(tmp_path, "plan", config(claude_bin))
    outcome = run_step(step, cli_env)
    assert not outcome.ok and not outcome.retryable
    assert "HTTP 400" in (outcome.reason or "")
    assert "text content blocks must be non-empty" in (outcome.reason or "")


@pytest.mark.claude
@pytest.mark.parametrize(("status", "kind", "message", "retryable"), [
    (529, "overloaded_error", "Overloaded", True),
    (500, "api_error", "Internal server error", True),
    (401, "authentication_error", "invalid x-api-key", False),
])
def test_api_errors_are_retryable_only_when_transient(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str],
        status: int, kind: str, message: str, retryable: bool) -> None:
    fake.script = lambda request: fa.ApiError(status, kind, message)
    step = make_step(tmp_path, "plan", config(claude_bin))
    outcome = run_step(step, cli_env)
    assert not outcome.ok
    assert outcome.retryable is retryable, outcome.reason
    assert f"HTTP {status}" in (outcome.reason or "")


@pytest.mark.claude
def test_exceeding_max_turns_fails_with_a_clear_reason(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    step = make_step(tmp_path, "plan", config(claude_bin, max_turns=2))
    fake.script = lambda request: fa.call("Read", file_path=str(step.exp_dir / "IDEA.md"))
    outcome = run_step(step, cli_env)
    assert not outcome.ok and not outcome.retryable
    assert "all 2 turns" in (outcome.reason or "") and "--max-turns" in (outcome.reason or "")
    assert outcome.cost_usd > 0


@pytest.mark.claude
def test_the_clis_own_budget_cap_stops_a_runaway_step(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    step = make_step(tmp_path, "code", config(claude_bin, max_cost_usd=0.015))
    fake.script = lambda request: fa.call("Read", file_path=str(step.exp_dir / "IDEA.md"))
    outcome = run_step(step, cli_env)
    assert not outcome.ok and not outcome.retryable
    assert "spending limit" in (outcome.reason or "")
    assert 0.015 <= outcome.cost_usd < 0.1


@pytest.mark.claude
def test_each_attempt_is_judged_by_its_own_lines_of_the_shared_transcript(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = lambda request: fa.ApiError(529, "overloaded_error", "Overloaded")
    first = make_step(tmp_path, "plan", config(claude_bin))
    assert not run_step(first, cli_env).ok
    fake.script = fa.research()
    second = make_step(tmp_path, "plan", config(claude_bin), attempt=2)
    assert second.transcript == first.transcript
    assert run_step(second, cli_env).ok


# --- end to end through the daemon's CLI ----------------------------------------------


def _daemon_cli_missing() -> bool:
    return importlib.util.find_spec("mlsm.machine.cli") is None


def new_experiment(tmp_path: Path) -> Path:
    """An experiment directory holding only IDEA.md."""
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    (exp_dir / "IDEA.md").write_text("Halve the loss of a tiny model.\n")
    return exp_dir


def run_mlsm(exp_dir: Path, claude_bin: str, env: dict[str, str], *flags: str) -> int:
    argv = [sys.executable, "-m", "mlsm.machine.cli", "run", str(exp_dir), "--agent", "claude",
            "--claude-bin", claude_bin, "--grace", "2", *flags]
    with (exp_dir.parent / "mlsm-run.log").open("ab") as out:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env=env, timeout=240, check=False)
    return done.returncode


def roles_requested(fake: Any) -> list[str]:
    """The role of each agent step, in order (one entry per first request of a step)."""
    firsts = [r for r in fake.main_requests
              if not any(m.get("role") == "assistant" for m in r.get("messages", []))]
    return [fa.prompt_field(r, "role") or "?" for r in firsts]


@pytest.mark.claude
@pytest.mark.skipif(_daemon_cli_missing(), reason="mlsm.machine.cli does not exist yet")
def test_mlsm_run_end_to_end_with_the_real_cli(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = fa.research()
    exp_dir = new_experiment(tmp_path)
    rc = run_mlsm(exp_dir, claude_bin, cli_env, "--max-iterations", "2")
    log = (tmp_path / "mlsm-run.log").read_text(errors="replace")[-3000:]
    assert rc == 0, log
    assert check_product("plan", exp_dir / "PLAN.md") is None
    assert "Halve the loss" in (exp_dir / "PLAN.md").read_text()
    assert "RESULT val_loss" in (exp_dir / "train.py").read_text()
    decisions = sorted(exp_dir.glob("logs/iter_*/decision.json"))
    assert decisions, log
    assert read_decision(decisions[0])["reason"].startswith("iteration ")
    assert "## Summary" in (exp_dir / "REPORT.md").read_text()
    assert roles_requested(fake) == ["plan", "code", "analyze", "code", "analyze", "report"]
    status = json.loads((exp_dir / "status.json").read_text())
    assert status["state"].upper() == "DONE" and status["cost_usd"] > 0


@pytest.mark.claude
@pytest.mark.skipif(_daemon_cli_missing(), reason="mlsm.machine.cli does not exist yet")
def test_mlsm_run_goes_to_reporting_when_the_cost_budget_is_spent(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = fa.research()
    exp_dir = new_experiment(tmp_path)
    # Each fake request costs about $0.01, so the plan step alone spends the budget.
    rc = run_mlsm(exp_dir, claude_bin, cli_env, "--max-iterations", "5",
                  "--max-cost-usd", "0.015")
    log = (tmp_path / "mlsm-run.log").read_text(errors="replace")[-3000:]
    assert rc == 7, log  # DONE (a report), but the budget ran out before any training
    roles = roles_requested(fake)
    assert roles[0] == "plan" and roles[-1] == "report", roles
    assert roles.count("code") < 5
    assert "## Summary" in (exp_dir / "REPORT.md").read_text()
    status = json.loads((exp_dir / "status.json").read_text())
    assert status["state"].upper() == "DONE" and status["cost_usd"] >= 0.015


def _overloaded_first(n: int, inner: Any) -> Any:
    """A script that answers the first `n` plan requests with 529 overloaded, then `inner`."""
    seen = {"plan": 0}

    def script(request: dict[str, Any]) -> Any:
        if fa.prompt_field(request, "role") == "plan" and seen["plan"] < n:
            seen["plan"] += 1
            return fa.ApiError(529, "overloaded_error", "Overloaded")
        return inner(request)
    return script


@pytest.mark.claude
def test_mlsm_run_backs_off_and_retries_an_overloaded_api(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = _overloaded_first(4, fa.research(finish_at=1))
    exp_dir = new_experiment(tmp_path)
    rc = run_mlsm(exp_dir, claude_bin, cli_env, "--max-iterations", "1",
                  "--agent-retries", "4", "--retry-backoff", "0.05")
    assert rc == 0, (tmp_path / "mlsm-run.log").read_text(errors="replace")[-3000:]
    journal = [json.loads(line) for line in
               (exp_dir / "logs" / "events.jsonl").read_text().splitlines()]
    failures = [e for e in journal if e["event"] == "agent_step_failed"]
    assert failures and all(e["role"] == "plan" for e in failures)
    assert "verloaded" in failures[0]["reason"]
    assert [e["retry_in_s"] for e in failures] == [0.05 * 2 ** i for i in range(len(failures))]


@pytest.mark.claude
def test_mlsm_run_fails_with_the_clis_message_when_overload_persists(
        tmp_path: Path, claude_bin: str, fake: Any, cli_env: dict[str, str]) -> None:
    fake.script = _overloaded_first(10**6, fa.research())
    exp_dir = new_experiment(tmp_path)
    rc = run_mlsm(exp_dir, claude_bin, cli_env, "--agent-retries", "1",
                  "--retry-backoff", "0.05")
    assert rc == 1
    status = json.loads((exp_dir / "status.json").read_text())
    assert status["state"] == "failed"
    assert "the plan step failed after 2 attempts" in status["error"]
    assert "verloaded" in status["error"]


@pytest.mark.skipif(_daemon_cli_missing(), reason="mlsm.machine.cli does not exist yet")
def test_an_unreachable_api_fails_fast_and_says_so(tmp_path: Path, claude_bin: str,
                                                   claude_home: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CLAUDE", "MLSM_"))}
    env.update(ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY="sk-ant-fake",
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", HOME=str(claude_home))
    exp_dir = new_experiment(tmp_path)
    started = time.monotonic()
    rc = run_mlsm(exp_dir, claude_bin, env, "--retry-backoff", "2")
    took = time.monotonic() - started
    status = json.loads((exp_dir / "status.json").read_text())
    assert rc == 1 and status["state"] == "failed", status
    assert took < 120, f"{took:.0f} s to FAILED"  # the documented bound with the defaults
    log = (exp_dir / "logs" / "runner.log").read_text()
    assert log.count("agent_step_failed") == 3 and "retry_in_s=2.0" in log
    assert "after 4 attempts" in status["error"]
