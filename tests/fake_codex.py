"""A fake `codex` executable: checks `codex exec` arguments and replays recorded JSONL events.

The scenario (FAKE_CODEX_SCENARIO, a JSON file) holds `events` to print one per line,
`last_message` for `--output-last-message`, and `exit_code`. Two pseudo-events act instead of
printing: `{"type": "_write", "path": ..., "content": ...}` writes a file (what the real agent's
edits would do) and `{"type": "_sleep", "seconds": ...}` waits. FAKE_CODEX_RECORD names a file
that receives the arguments, cwd and MLSM_* environment of the call.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

VALUE_FLAGS = {"--output-last-message", "--output-schema", "--sandbox", "--model", "-m", "-c",
               "--cd", "-C"}
BOOL_FLAGS = {"--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
              "--full-auto"}


def parse(args: list[str]) -> tuple[dict[str, list[str]], str]:
    """Options and the prompt of `codex exec ...`, as clap would split them."""
    if not args or args[0] != "exec":
        sys.exit(f"error: the fake codex only knows `exec`, got {args[:1]}")
    options: dict[str, list[str]] = {}
    rest = args[1:]
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if arg in BOOL_FLAGS:
            options.setdefault(arg, []).append("")
        elif arg in VALUE_FLAGS and rest:
            options.setdefault(arg, []).append(rest.pop(0))
        elif arg.startswith("-"):
            print(f"error: unexpected argument '{arg}' found", file=sys.stderr)
            sys.exit(2)
        else:
            rest.insert(0, arg)
            break
    if len(rest) != 1:
        print(f"error: expected one prompt argument, got {len(rest)}", file=sys.stderr)
        sys.exit(2)
    return options, rest[0]


def schema_problem(path: str) -> str | None:
    """What OpenAI's strict structured outputs would reject in the schema file."""
    schema: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in schema.get("properties", {}) if k not in schema.get("required", [])]
    if missing:
        return ("Invalid schema for response_format 'codex_output_schema': In context=(), "
                "'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'.")
    if schema.get("additionalProperties") is not False:
        return ("Invalid schema for response_format 'codex_output_schema': In context=(), "
                "'additionalProperties' is required to be supplied and to be false.")
    return None


def emit(event: dict[str, Any]) -> None:
    if event["type"] == "_write":
        target = Path(event["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(event["content"], encoding="utf-8")
    elif event["type"] == "_sleep":
        time.sleep(float(event["seconds"]))
    else:
        print(json.dumps(event, separators=(",", ":")), flush=True)


def main() -> int:
    options, prompt = parse(sys.argv[1:])
    record = os.environ.get("FAKE_CODEX_RECORD")
    if record:
        Path(record).write_text(json.dumps({
            "argv": sys.argv[1:], "cwd": os.getcwd(), "prompt": prompt,
            "env": {k: v for k, v in os.environ.items() if k.startswith("MLSM_")},
        }), encoding="utf-8")
    if "--json" not in options:
        print("error: the fake codex only speaks --json", file=sys.stderr)
        return 2
    scenario = json.loads(Path(os.environ["FAKE_CODEX_SCENARIO"]).read_text(encoding="utf-8"))
    if "--output-schema" in options:
        problem = schema_problem(options["--output-schema"][-1])
        if problem:
            scenario = {"events": [
                {"type": "thread.started", "thread_id": "0199a213-0000-7000-8000-5c4e4a000000"},
                {"type": "turn.started"},
                {"type": "error", "message": problem},
                {"type": "turn.failed", "error": {"message": problem}}], "exit_code": 1}
    for event in scenario["events"]:
        emit(event)
    last = scenario.get("last_message")
    if last is not None and "--output-last-message" in options:
        Path(options["--output-last-message"][-1]).write_text(last, encoding="utf-8")
    code: int = scenario.get("exit_code", 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
