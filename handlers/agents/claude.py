"""The `claude` agent: Claude Code in print mode, least-privilege tools, its result read back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlsm.handlers import prompting
from mlsm.handlers.agents.base import (
    DECISION_SCHEMA,
    AgentOutcome,
    AgentStep,
    Role,
    check_decision,
    check_product,
)
from mlsm.handlers.agents.command import step_env, tail
from mlsm.machine.core import store
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import AgentUnavailableError

CLI_RETRIES = 2
INSTALL_HINT = (
    "install it with `npm install -g @anthropic-ai/claude-code` (or point --claude-bin at it), "
    "or run with --agent builtin"
)
# Used only when the installed CLI lists them in --help: older versions reject unknown flags.
OPTIONAL_FLAGS = frozenset({"--no-session-persistence", "--max-budget-usd", "--tools",
                            "--json-schema", "--session-id", "--disallowedTools"})
# Tools the CLI offers at all (--tools); anything else (web, sub-agents, cron) is not even shown.
ROLE_TOOLS: dict[Role, tuple[str, ...]] = {
    "plan": ("Read", "Write", "Edit", "Glob", "Grep"),
    "code": ("Read", "Write", "Edit", "Glob", "Grep", "Bash"),
    "analyze": ("Read", "Write", "Edit", "Glob", "Grep"),
    "report": ("Read", "Write", "Edit", "Glob", "Grep"),
}
# Pre-approved uses (--allowedTools). Relative rules are anchored at the experiment directory,
# the CLI's cwd; a bare `Write` would approve writing anywhere on the machine.
FILE_RULES = ("Read(./**)", "Edit(./**)", "Write(./**)")
# mlsm's own files, and REPORT.md outside the report step: its appearance ends the run.
PROTECTED = ("./status.json", "./.mlsm/**", "./STOP", "./RETRY", "./RESTART", "./results.tsv",
             "./logs/events.jsonl", "./logs/runner.log")
SYNTAX_CHECK = ("Bash(python -m py_compile:*)", "Bash(python3 -m py_compile:*)")
PIP_RULES = ("Bash(pip install:*)", "Bash(pip3 install:*)", "Bash(python -m pip install:*)")
UV_RULES = ("Bash(uv pip install:*)",)
# A single argv string longer than 128 KiB fails exec (E2BIG); past this, point at the file.
MAX_PROMPT_ARG = 100_000
MIN_BUDGET_USD = 0.01
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
RETRYABLE_KINDS = frozenset({"rate_limit", "server_error", "overloaded", "overloaded_error",
                             "api_error", "timeout", "connection_error"})
PERMANENT_KINDS = frozenset({"authentication_failed", "authentication_error", "billing_error",
                             "invalid_request", "invalid_request_error", "permission_error",
                             "not_found_error"})
PERMANENT_WORDS = ("invalid api key", "authentication", "credit balance", "prompt is too long",
                   "unknown option", "not logged in", "please run /login")

_flags_lock = threading.Lock()
_flags_cache: dict[tuple[str, int], frozenset[str]] = {}


def find_binary(config: Config) -> str | None:
    """The absolute path of the configured Claude Code executable, or None."""
    return shutil.which(config.claude_bin)


def cli_flags(binary: str) -> frozenset[str]:
    """The long options this CLI lists in `--help`, cached per executable version."""
    try:
        stamp = os.stat(binary).st_mtime_ns
    except OSError:
        stamp = 0
    key = (binary, stamp)
    with _flags_lock:
        if key in _flags_cache:
            return _flags_cache[key]
    try:
        done = subprocess.run([binary, "--help"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=30, check=False)
        found = frozenset(re.findall(r"--[A-Za-z][A-Za-z-]*", done.stdout))
    except (OSError, subprocess.SubprocessError):
        found = frozenset()
    # Help that cannot be read says nothing about the version: assume a current CLI.
    flags = found or OPTIONAL_FLAGS
    with _flags_lock:
        _flags_cache[key] = flags
    return flags


def allowed_tools(role: Role, config: Config) -> list[str]:
    """The least the role needs: files in the experiment directory, and a syntax check to code."""
    rules = list(FILE_RULES)
    if role == "code":
        rules += SYNTAX_CHECK
        rules += PIP_RULES if config.allow_pip else ()
        rules += UV_RULES if config.allow_uv else ()
    return rules


def denied_tools(role: Role) -> list[str]:
    """Files no agent may touch; deny rules win over the allow rules above."""
    paths = [*PROTECTED, *(() if role == "report" else ("./REPORT.md",)),
             *(() if role == "analyze" else ("./logs/**/decision.json",))]
    return [f"{tool}({path})" for path in paths for tool in ("Edit", "Write")]


def session_id(step: AgentStep) -> str:
    """A session id that names this attempt, so its lines can be told apart in the transcript."""
    key = f"mlsm:{step.transcript}:{step.role}:{step.iteration}:{step.attempt}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def prompt_argument(step: AgentStep) -> str:
    """The prompt as one argv string: inline when it fits, else a pointer to the prompt file."""
    prompt = step.prompt
    if len(prompt.encode("utf-8")) > MAX_PROMPT_ARG:
        prompt = (f"Your task for this step is in the file {step.prompt_file}. Read all of it "
                  f"with the Read tool, then do exactly what it says.")
    # A leading dash would be parsed as an option.
    return "\n" + prompt if prompt.startswith("-") else prompt


def budget_left(step: AgentStep) -> float | None:
    """The CLI's own spending cap for this step, or None for no cap."""
    limit = step.config.max_cost_usd
    # The daemon owns the budget; the report is the run's last step and must be written.
    if limit <= 0 or step.role == "report":
        return None
    return max(limit - step.spent_usd, MIN_BUDGET_USD)


class ClaudeAgent:
    """Runs Claude Code (`claude -p`) for one step, tools limited to what the role needs."""

    name = "claude"

    def preflight(self, config: Config) -> None:
        binary = find_binary(config)
        if binary is None:
            raise AgentUnavailableError(
                f"Claude Code CLI {config.claude_bin!r} not found: {INSTALL_HINT}"
            )
        cli_flags(binary)  # read --help now, not in the engine thread at the first step

    def argv(self, step: AgentStep) -> list[str]:
        config = step.config
        binary = find_binary(config) or config.claude_bin
        flags = cli_flags(binary)
        argv = [binary, "-p", prompt_argument(step), "--output-format", "stream-json",
                "--verbose", "--max-turns", str(config.max_turns),
                "--append-system-prompt", prompting.instructions()]
        argv += _optional_args(step, flags)
        if config.model:
            argv += ["--model", config.model]
        argv += _permission_args(step, flags)
        return argv

    def env(self, step: AgentStep, base: dict[str, str]) -> dict[str, str]:
        env = step_env(step, base)
        # An unattended run must not swap its own executable halfway through.
        env.setdefault("DISABLE_AUTOUPDATER", "1")
        # The CLI's own 10 retries hide an outage for minutes; mlsm retries the step itself,
        # with its back-off in runner.log and status.json (a person may still override).
        env.setdefault("CLAUDE_CODE_MAX_RETRIES", str(CLI_RETRIES))
        return env

    def access(self, step: AgentStep) -> str:
        if step.config.dangerously_skip_permissions:
            return "every tool, unrestricted (--dangerously-skip-permissions)"
        return (f"tools {', '.join(ROLE_TOOLS[step.role])}; writes inside the experiment only, "
                f"never {', '.join(p.removeprefix('./') for p in denied_tools(step.role)[::2])}")

    def collect(self, step: AgentStep, returncode: int) -> AgentOutcome:
        binary = find_binary(step.config) or step.config.claude_bin
        strict = "--session-id" in cli_flags(binary)
        events = attempt_events(read_events(step.transcript), session_id(step), strict)
        result = last_of(events, "result")
        if result is None:
            return no_result(step, returncode)
        return outcome_from_result(step, result, events)


def _optional_args(step: AgentStep, flags: frozenset[str]) -> list[str]:
    args: list[str] = []
    if "--session-id" in flags:
        args += ["--session-id", session_id(step)]
    if "--no-session-persistence" in flags:
        args.append("--no-session-persistence")
    budget = budget_left(step)
    if budget is not None and "--max-budget-usd" in flags:
        args += ["--max-budget-usd", f"{budget:.4f}"]
    if step.role == "analyze" and "--json-schema" in flags:
        args += ["--json-schema", json.dumps(DECISION_SCHEMA)]
    return args


def _permission_args(step: AgentStep, flags: frozenset[str]) -> list[str]:
    if step.config.dangerously_skip_permissions:
        return ["--dangerously-skip-permissions"]
    rules = allowed_tools(step.role, step.config)
    if len(step.prompt.encode("utf-8")) > MAX_PROMPT_ARG:
        rules.append(f"Read(/{step.prompt_file})")  # `//abs/path`: an absolute-path rule
    # `--opt=value` keeps these variadic options from swallowing the arguments after them.
    args = [f"--allowedTools={','.join(rules)}"]
    if "--disallowedTools" in flags:
        args.append(f"--disallowedTools={','.join(denied_tools(step.role))}")
    if "--tools" in flags:
        args.insert(0, f"--tools={','.join(ROLE_TOOLS[step.role])}")
    return args


def read_events(transcript: Path) -> list[dict[str, Any]]:
    """Every JSON object line of the transcript; other lines (stderr, noise) are skipped."""
    return store.read_jsonl(transcript)


def attempt_events(events: list[dict[str, Any]], sid: str, strict: bool) -> list[dict[str, Any]]:
    """The events of this attempt: the transcript is appended to across retries."""
    if strict:
        return [e for e in events if e.get("session_id") == sid]
    starts = [i for i, e in enumerate(events) if e.get("type") == "system"
              and e.get("subtype") == "init"]
    return events[starts[-1]:] if starts else events


def last_of(events: Iterable[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The last event of type `kind`."""
    found = None
    for event in events:
        if event.get("type") == kind:
            found = event
    return found


def no_result(step: AgentStep, returncode: int) -> AgentOutcome:
    """The CLI ended without its final `result` line: killed, crashed, or refused its flags."""
    last = tail(step.transcript)
    if returncode < 0:
        return AgentOutcome(ok=False, reason=f"the {step.role} agent was killed by signal "
                            f"{-returncode} before it finished")
    what = f"the {step.role} agent exited with code {returncode} without a result"
    if any(word in last.lower() for word in ("unknown option", "error: option")):
        return AgentOutcome(ok=False, retryable=False, reason=(
            f"{what}; the Claude Code CLI refused its options (update it: {INSTALL_HINT}): "
            f"{last}"))
    return AgentOutcome(ok=False, reason=what + (f"; last output: {last}" if last else ""))


def result_fields(result: dict[str, Any]) -> dict[str, Any]:
    """Turns, cost and session of a result line, read defensively across CLI versions."""
    turns = result.get("num_turns")
    return {
        "turns": turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
        "cost_usd": result_cost(result),
        "session_id": result.get("session_id") if isinstance(result.get("session_id"), str)
        else None,
    }


def result_cost(result: dict[str, Any]) -> float:
    """The step's cost in USD: `total_cost_usd`, older names, or the per-model sum."""
    for key in ("total_cost_usd", "cost_usd", "total_cost"):
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    models = result.get("modelUsage")
    if not isinstance(models, dict):
        return 0.0
    costs = [m.get("costUSD") for m in models.values() if isinstance(m, dict)]
    return float(sum(c for c in costs if isinstance(c, int | float) and not isinstance(c, bool)))


def result_message(result: dict[str, Any]) -> str:
    """The CLI's own words for how the step ended, on one line."""
    errors = result.get("errors")
    parts = [e for e in errors if isinstance(e, str)] if isinstance(errors, list) else []
    text = result.get("result")
    if isinstance(text, str) and text.strip():
        parts.insert(0, text)
    message = " ".join(" ".join(parts).split()) or str(result.get("subtype") or "no message")
    return message if len(message) <= 500 else message[:497] + "..."


def outcome_from_result(step: AgentStep, result: dict[str, Any],
                        events: list[dict[str, Any]]) -> AgentOutcome:
    """Turn the final `result` line (and the product on disk) into the step's outcome."""
    fields = result_fields(result)
    subtype = str(result.get("subtype") or "")
    failed = result.get("is_error") is True or subtype.startswith("error")
    if failed and subtype not in ("error_max_turns", "error_max_budget_usd"):
        return AgentOutcome(ok=False, **fields, **api_failure(step, result, events))
    problem = finish_product(step, structured_answer(result))
    if problem is None:
        return AgentOutcome(ok=True, **fields)
    if failed:
        return AgentOutcome(ok=False, retryable=False, **fields,
                            reason=limit_reason(step, subtype, result))
    return AgentOutcome(ok=False, **fields, reason=problem + denial_note(result))


def api_failure(step: AgentStep, result: dict[str, Any],
                events: list[dict[str, Any]]) -> dict[str, Any]:
    """Reason and retryability of an error result (API errors say `subtype: success`)."""
    message = result_message(result)
    status = result.get("api_error_status")
    if not isinstance(status, int) or isinstance(status, bool):
        found = re.search(r"\b(?:API Error|status)[: (]*([1-5]\d\d)\b", message)
        status = int(found.group(1)) if found else None
    assistant = last_of(events, "assistant") or {}
    kind = assistant.get("error") if isinstance(assistant.get("error"), str) else None
    code = f" (HTTP {status})" if status else ""
    return {"reason": f"the {step.role} agent stopped on an API error{code}: {message}",
            "retryable": is_retryable(status, kind, message)}


def is_retryable(status: int | None, kind: str | None, message: str) -> bool:
    """Overload, rate limits, 5xx and lost connections pass; auth and bad requests do not."""
    if status is not None:
        return status in RETRYABLE_STATUS or status >= 500
    if kind in RETRYABLE_KINDS:
        return True
    if kind in PERMANENT_KINDS:
        return False
    return not any(word in message.lower() for word in PERMANENT_WORDS)


def limit_reason(step: AgentStep, subtype: str, result: dict[str, Any]) -> str:
    """Why a step that hit the turn or budget limit failed, and what the person can change."""
    message = result_message(result)
    if subtype == "error_max_turns":
        return (f"the {step.role} agent used all {step.config.max_turns} turns without finishing "
                f"({message}): raise --max-turns or make the step smaller")
    return (f"the {step.role} agent reached its spending limit ({message}): raise "
            f"--max-cost-usd to let it go on")


def denial_note(result: dict[str, Any]) -> str:
    """`; refused tool calls: ...` when the CLI's permission rules blocked something."""
    denials = result.get("permission_denials")
    if not isinstance(denials, list) or not denials:
        return ""
    calls = [describe_call(d) for d in denials[:5] if isinstance(d, dict)]
    return "; refused tool calls: " + ", ".join(calls)


def describe_call(denial: dict[str, Any]) -> str:
    """`Bash(rm -rf x)` for a denied tool call."""
    tool_input = denial.get("tool_input")
    detail = ""
    if isinstance(tool_input, dict):
        detail = str(tool_input.get("command") or tool_input.get("file_path") or "")
    return f"{denial.get('tool_name', '?')}({detail[:80]})"


def structured_answer(result: dict[str, Any]) -> dict[str, Any] | None:
    """The structured output of the result line, or a JSON object the final text holds."""
    value = result.get("structured_output")
    if isinstance(value, dict):
        return value
    text = result.get("result")
    return parse_json_object(text) if isinstance(text, str) else None


def parse_json_object(text: str) -> dict[str, Any] | None:
    """A JSON object in `text`, bare or in a ``` fence; None when there is none."""
    stripped = text.strip()
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", stripped, re.DOTALL)
    candidate = fenced.group(1) if fenced else stripped
    try:
        obj = json.loads(candidate)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def finish_product(step: AgentStep, answer: dict[str, Any] | None) -> str | None:
    """Write the decision of an analyze step from its structured answer; check the product."""
    if step.role == "analyze" and answer is not None and "decision" in answer:
        decision = {k: answer[k] for k in DECISION_SCHEMA["properties"]
                    if answer.get(k) is not None}
        text = json.dumps(decision, indent=2) + "\n"
        problem = check_decision(text)
        if problem is not None:
            return f"the analyze agent's structured answer is not a valid decision: {problem}"
        write_atomic(step.product, text)
        return None
    problem = check_product(step.role, step.product)
    if problem is not None and step.role == "analyze":
        return f"the analyze agent gave no decision (no structured answer, and {problem})"
    return problem


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_atomic(path, text.encode("utf-8"))
