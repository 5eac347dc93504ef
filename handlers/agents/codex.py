"""The `codex` agent: `codex exec --json` in a workspace-write sandbox, its JSONL events read."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

from mlsm.handlers import prompting
from mlsm.handlers.agents.base import DECISION_SCHEMA, AgentOutcome, AgentStep
from mlsm.handlers.agents.claude import (
    MAX_PROMPT_ARG,
    finish_product,
    parse_json_object,
    read_events,
    write_atomic,
)
from mlsm.handlers.agents.command import step_env, tail
from mlsm.machine.core.config import Config
from mlsm.machine.core.errors import AgentUnavailableError

INSTALL_HINT = (
    "install it with `npm install -g @openai/codex` (or point --codex-bin at it), "
    "or run with --agent builtin"
)
# OpenAI's strict structured outputs require every property in `required`; an optional
# metric is therefore a nullable one, and null is dropped when decision.json is written.
STRICT_DECISION_SCHEMA: dict[str, Any] = {
    **DECISION_SCHEMA,
    "properties": {**DECISION_SCHEMA["properties"], "metric": {"type": ["number", "null"]}},
    "required": list(DECISION_SCHEMA["properties"]),
}
ACTION_ITEMS = frozenset({"agent_message", "command_execution", "file_change", "mcp_tool_call",
                          "web_search"})
RETRY_NOTICE = re.compile(r"^\s*(reconnecting|retrying)\b", re.IGNORECASE)
# An HTTP status as codex prints it: `429 Too Many Requests`, `401 Unauthorized`.
STATUS = re.compile(r"\b([45]\d\d) [A-Z][A-Za-z]+")
RETRYABLE_STATUS = frozenset({408, 409, 429})
PERMANENT_WORDS = ("usage limit", "quota", "unauthorized", "forbidden", "invalid_api_key",
                   "incorrect api key", "not logged in", "codex login", "invalid_request",
                   "invalid_json_schema", "model_not_found", "does not exist",
                   "context window", "unexpected argument")


def find_binary(config: Config) -> str | None:
    """The absolute path of the configured Codex executable, or None."""
    return shutil.which(config.codex_bin)


def schema_path(step: AgentStep) -> Path:
    """Where the decision's output schema is written for `--output-schema`."""
    return step.run_dir / "decision.schema.json"


def last_message_path(step: AgentStep) -> Path:
    """Where `--output-last-message` leaves this attempt's final answer."""
    return step.transcript.with_name(step.transcript.stem + ".last-message.txt")


def prompt_text(step: AgentStep) -> str:
    """Instructions and task in one prompt: `codex exec` has no system-prompt option."""
    task = step.prompt
    if len(task.encode("utf-8")) > MAX_PROMPT_ARG:
        task = (f"Your task for this step is in the file {step.prompt_file}. Read all of it, "
                f"then do exactly what it says.")
    return f"{prompting.instructions()}\n\n---\n\n{task}"


def sandbox_args(step: AgentStep) -> list[str]:
    """The sandbox: writes only in the workspace; network only to install packages."""
    config = step.config
    if config.dangerously_skip_permissions:
        return ["--dangerously-bypass-approvals-and-sandbox"]
    args = ["--sandbox", "workspace-write"]
    if step.role == "code" and (config.allow_pip or config.allow_uv):
        args += ["-c", "sandbox_workspace_write.network_access=true"]
    return args


class CodexAgent:
    """Runs `codex exec` for one step; the decision comes back through an output schema."""

    name = "codex"

    def access(self, step: AgentStep) -> str:
        return "codex sandbox workspace-write: writes in the experiment directory and /tmp"

    def preflight(self, config: Config) -> None:
        if find_binary(config) is None:
            raise AgentUnavailableError(f"Codex CLI {config.codex_bin!r} not found: {INSTALL_HINT}")

    def argv(self, step: AgentStep) -> list[str]:
        binary = find_binary(step.config) or step.config.codex_bin
        argv = [binary, "exec", "--json", "--skip-git-repo-check", *sandbox_args(step),
                "--output-last-message", str(last_message_path(step))]
        if step.config.model:
            argv += ["--model", step.config.model]
        if step.role == "analyze":
            write_atomic(schema_path(step), json.dumps(STRICT_DECISION_SCHEMA, indent=2) + "\n")
            argv += ["--output-schema", str(schema_path(step))]
        # `--` so that a prompt starting with a dash is not read as an option.
        return [*argv, "--", prompt_text(step)]

    def env(self, step: AgentStep, base: dict[str, str]) -> dict[str, str]:
        return step_env(step, base)

    def collect(self, step: AgentStep, returncode: int) -> AgentOutcome:
        events = attempt_events(read_events(step.transcript))
        base = AgentOutcome(ok=False, turns=count_actions(events), session_id=thread_id(events))
        failure = failure_message(events)
        completed = any(e.get("type") == "turn.completed" for e in events)
        if returncode != 0 or failure is not None or not completed:
            return dataclasses.replace(base, **failed(step, returncode, failure))
        problem = finish_product(step, final_answer(step, events))
        if problem is not None:
            return dataclasses.replace(base, reason=problem + declined_note(events))
        return dataclasses.replace(base, ok=True)


def attempt_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events from the last `thread.started` on: one attempt's run."""
    starts = [i for i, e in enumerate(events) if e.get("type") == "thread.started"]
    return events[starts[-1]:] if starts else events


def thread_id(events: list[dict[str, Any]]) -> str | None:
    """The thread (session) id of the run."""
    for event in events:
        if event.get("type") == "thread.started" and isinstance(event.get("thread_id"), str):
            found: str = event["thread_id"]
            return found
    return None


def completed_items(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `item` of every `item.completed` event."""
    return [e["item"] for e in events
            if e.get("type") == "item.completed" and isinstance(e.get("item"), dict)]


def count_actions(events: list[dict[str, Any]]) -> int | None:
    """Messages, commands, edits and tool calls: the closest thing codex has to turns."""
    items = completed_items(events)
    return sum(1 for item in items if item.get("type") in ACTION_ITEMS) if events else None


def failure_message(events: list[dict[str, Any]]) -> str | None:
    """The turn's failure, else the last fatal `error` event (retry notices skipped)."""
    for event in reversed(events):
        if event.get("type") == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            return str(message or "the turn failed")
    for event in reversed(events):
        message = event.get("message")
        is_error = event.get("type") == "error" and isinstance(message, str)
        if is_error and not RETRY_NOTICE.match(str(message)):
            return str(message)
    return None


def failed(step: AgentStep, returncode: int, failure: str | None) -> dict[str, Any]:
    """Reason and retryability of a run that did not complete its turn."""
    if failure is not None:
        message = " ".join(failure.split())[:500]
        return {"reason": f"the {step.role} agent failed: {message}",
                "retryable": is_retryable(message)}
    if returncode < 0:
        return {"reason": f"the {step.role} agent was killed by signal {-returncode} before it "
                          f"finished", "retryable": True}
    last = tail(step.transcript)
    what = (f"exited with code {returncode}" if returncode else "exited without finishing its turn")
    return {"reason": f"the {step.role} agent {what}" + (f"; last output: {last}" if last else ""),
            "retryable": not any(word in last.lower() for word in PERMANENT_WORDS)}


def is_retryable(message: str) -> bool:
    """Rate limits, 5xx and dropped streams pass; auth, quota and bad requests do not."""
    text = message.lower()
    if "usage limit" in text or "quota" in text:
        return False
    found = STATUS.search(message)
    if found:
        status = int(found.group(1))
        return status in RETRYABLE_STATUS or status >= 500
    return not any(word in text for word in PERMANENT_WORDS)


def final_answer(step: AgentStep, events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The structured answer: `--output-last-message`, else the last agent message."""
    texts: list[str] = []
    with contextlib.suppress(OSError):
        texts.append(last_message_path(step).read_text(encoding="utf-8"))
    messages = [i.get("text") for i in completed_items(events)
                if i.get("type") == "agent_message"]
    texts += [m for m in reversed(messages) if isinstance(m, str)]
    for text in texts:
        answer = parse_json_object(text)
        if answer is not None:
            return answer
    return None


def declined_note(events: list[dict[str, Any]]) -> str:
    """`; refused commands: ...` when the sandbox or policy declined something."""
    declined = [str(i.get("command", "?"))[:80] for i in completed_items(events)
                if i.get("type") == "command_execution" and i.get("status") == "declined"]
    return "; refused commands: " + ", ".join(declined[:5]) if declined else ""
